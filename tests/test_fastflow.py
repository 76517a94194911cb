"""FastFlow: localises the toy defects, attention is trained and counted, checkpoints resume, CLI runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from insplad_tools.cli import main
from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_category
from leaderboard.metrics import aupro, image_auroc
from leaderboard.results import load_results
from methods.base import RunConfig
from methods.registry import build_detector, load_detector

TINY = {"flow_steps": "2", "layers": "layer2,layer3"}


def _run(epochs: int = 3, seed: int = 0) -> RunConfig:
    return RunConfig(epochs=epochs, batch_size=4, image_size=64, pretrained=False, progress=False, seed=seed)


def _masks(category):
    return [np.zeros((64, 64), bool) if s.mask_path is None else np.asarray(Image.open(s.mask_path)) > 0
            for s in category.test]


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    category = read_category(toy_dataset, "disc")
    detector = build_detector("fastflow", TINY, _run())
    checkpoint = tmp_path_factory.mktemp("fastflow") / "disc.pt"
    detector.fit([s.path for s in category.train], checkpoint=checkpoint)
    return category, detector, checkpoint, detector.predict([s.path for s in category.test])


def test_detects_and_localises_toy_defects(trained):
    category, detector, _, results = trained
    losses = [h["loss"] for h in detector.history]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(r.map.shape == (64, 64) and r.map.dtype == np.float32 and np.isfinite(r.map).all() for r in results)
    # FastFlow's map is -exp(-0.5 mean z^2) averaged over stages: in [-1, 0], score = its max
    assert all(-1 <= r.map.min() and r.map.max() <= 0 and r.score == pytest.approx(float(r.map.max())) for r in results)
    assert image_auroc([s.label for s in category.test], [r.score for r in results]) >= 0.8
    masks, maps = _masks(category), [r.map for r in results]
    assert aupro(masks, maps) > aupro(masks, [np.zeros_like(m) for m in maps]) + 0.3


def test_checkpoint_round_trip_gives_identical_scores(trained):
    category, _, checkpoint, results = trained
    loaded = load_detector(checkpoint)
    again = loaded.predict([s.path for s in category.test])
    assert [r.score for r in again] == [r.score for r in results]
    assert all(np.array_equal(a.map, b.map) for a, b in zip(again, results))
    assert "randomly initialised" in loaded.notes[0]


def test_attention_variants_count_more_parameters_and_only_attention_trains(toy_dataset):
    counts = {att: build_detector("fastflow", {"attention": att}, _run()).trainable_parameters()
              for att in ("none", "se", "cbam")}
    assert counts["none"] < counts["se"] < counts["cbam"]
    # SE r=16 without bias in the 6 blocks of layer1-3: 2 * C^2 / 16 each
    assert counts["se"] - counts["none"] == sum(2 * 2 * c * c // 16 for c in (64, 128, 256))
    frozen = build_detector("fastflow", {"attention": "se", "train_attention": "false"}, _run())
    assert frozen.trainable_parameters() == counts["none"]

    category = read_category(toy_dataset, "ring")
    detector = build_detector("fastflow", {"attention": "se", "layers": "layer2", "flow_steps": "1"}, _run(epochs=1))
    detector.setup([s.path for s in category.train[:4]])
    before = {k: v.clone() for k, v in detector.model.backbone.state_dict().items()}
    detector.train_epoch(0)
    after = detector.model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attention." in k for k in changed)  # convs and trunk BatchNorms stay frozen


def test_interrupted_training_resumes_to_the_same_model(toy_dataset, tmp_path):
    train = [s.path for s in read_category(toy_dataset, "ring").train[:6]]
    options = {"layers": "layer2,layer3", "flow_steps": "1"}
    straight = build_detector("fastflow", options, _run(epochs=2))
    straight.fit(train)
    checkpoint = tmp_path / "ring.pt"
    first = build_detector("fastflow", options, _run(epochs=2))
    first.run.epochs = 1  # stop after one epoch: an unfinished checkpoint for a two-epoch run
    first.fit(train, checkpoint=checkpoint)
    first.save(checkpoint, finished=False)
    resumed = build_detector("fastflow", options, _run(epochs=2))
    trained_epochs = []
    train_epoch = resumed.train_epoch
    resumed.train_epoch = lambda epoch: trained_epochs.append(epoch) or train_epoch(epoch)
    resumed.fit(train, checkpoint=checkpoint)
    assert trained_epochs == [1]  # epoch 0 came from the checkpoint
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-5)
    for key, value in straight.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-5), key


def test_bad_options_are_one_line_errors():
    for bad in ({"flow_steps": "0"}, {"attention": "x"}, {"clamp": "-1"}, {"layers": "layer9"},
                {"backbone": "vgg99"}, {"layers": "layer2,layer2"}):
        with pytest.raises(InspladError):
            build_detector("fastflow", bad, _run()).trainable_parameters()


def test_benchmark_cli_writes_a_valid_submission(toy_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["benchmark", "--method", "fastflow", "--attention", "cbam", "--data", str(toy_dataset), "--out", str(out),
            "--category", "disc", "--epochs", "1", "--image-size", "64", "--batch-size", "4", "--device", "cpu",
            "--no-pretrained", "--quiet", "--option", "flow_steps=1", "--option", "layers=layer2,layer3"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = load_results(out / "results.json")
    assert doc["method"] == "fastflow" and doc["training"]["epochs"] == 1
    assert doc["trainable_params"] > 0 and doc["variant"]["attention"] == "cbam"
