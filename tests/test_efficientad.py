"""EfficientAD-S: parameter counts, training on the toy set, teacher distillation, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_category
from leaderboard.metrics import aupro, image_auroc
from methods.base import RunConfig
from methods.efficientad.cli import distill_teacher
from methods.efficientad.model import quantile
from methods.registry import build_detector, load_detector

TINY = {"pdn_width": "64", "out_channels": "64"}


def _run(image_size: int = 64, seed: int = 0, epochs: int = 4, **kw) -> RunConfig:
    return RunConfig(epochs=epochs, batch_size=1, image_size=image_size, pretrained=False, progress=False, seed=seed, **kw)


@pytest.mark.parametrize("attention, expected", [("none", 5_363_712), ("se", 5_382_144), ("cbam", 5_396_553)])
def test_trainable_parameters_small_variant(attention, expected):
    """Student PDN-S (768 out) 4,267,392 + autoencoder 1,096,320; SE/CBAM after the 3 inner ReLUs."""
    detector = build_detector("efficientad", {"attention": attention}, _run(256))
    assert detector.trainable_parameters() == expected
    assert sum(p.numel() for p in detector.model.teacher.parameters()) == 2_694_144
    assert not any(p.requires_grad for p in detector.model.teacher.parameters())


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    category = read_category(toy_dataset, "disc")
    detector = build_detector("efficientad", {**TINY, "steps": "200"}, _run())
    detector.fit([s.path for s in category.train])
    checkpoint = tmp_path_factory.mktemp("efficientad") / "disc.pt"
    detector.save(checkpoint)
    return category, detector, checkpoint, detector.predict([s.path for s in category.test])


def test_trains_and_maps_light_up_on_defects(trained):
    category, detector, _, results = trained
    assert detector.step == 200 and [int(h["step"]) for h in detector.history] == [50, 100, 150, 200]
    losses = [h["loss"] for h in detector.history]
    assert losses[-1] < 0.8 * losses[0]
    masks, maps = [], []
    for sample, result in zip(category.test, results):
        assert result.map.shape == (64, 64) and result.score == pytest.approx(float(result.map.max()))
        masks.append(np.zeros((64, 64), bool) if sample.mask_path is None else np.asarray(Image.open(sample.mask_path)) > 0)
        maps.append(result.map)
    assert aupro(masks, maps) > aupro(masks, [np.zeros_like(m) for m in maps]) + 0.3
    assert image_auroc([s.label for s in category.test], [r.score for r in results]) > 0.9
    q = detector.model.quantiles
    assert q[0] < q[1] and q[2] < q[3]
    assert any("randomly initialised" in n for n in detector.notes)


def test_checkpoint_round_trip(trained):
    category, detector, checkpoint, results = trained
    loaded = load_detector(checkpoint)
    again = loaded.predict([s.path for s in category.test])
    assert [r.score for r in again] == [r.score for r in results]
    assert torch.equal(loaded.model.teacher_mean, detector.model.teacher_mean)
    assert loaded.variant()["teacher"] == "random"


def test_fixed_seed_is_reproducible_and_steps_zero_means_epochs(toy_dataset):
    category = read_category(toy_dataset, "ring")
    train, test = [s.path for s in category.train], [s.path for s in category.test[:3]]
    scores = []
    for seed in (1, 1, 2):
        detector = build_detector("efficientad", {**TINY, "steps": "0", "attention": "se"}, _run(seed=seed, epochs=1))
        detector.fit(train)
        assert detector.step == 10  # 12 images: int(0.9 * 12) = 10 train, 2 held out for the quantiles; batch 1
        scores.append([r.score for r in detector.predict(test)])
    assert scores[0] == scores[1] and scores[0] != scores[2]


def test_distilled_teacher_is_saved_and_used(toy_dataset, tmp_path):
    out = tmp_path / "teacher.pt"
    result = CliRunner().invoke(distill_teacher, [str(toy_dataset / "ring" / "train"), "--out", str(out), "--steps", "3",
                                                  "--image-size", "64", "--batch-size", "2", "--no-pretrained",
                                                  "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert payload["config"]["out_channels"] == 384 and payload["config"]["steps"] == 3
    category = read_category(toy_dataset, "disc")
    detector = build_detector("efficientad", {"steps": "2", "teacher": str(out), "attention": "cbam"}, _run(epochs=1))
    detector.fit([s.path for s in category.train[:4]])
    assert torch.equal(detector.model.teacher.conv4.weight, payload["state_dict"]["conv4.weight"])
    assert detector.variant()["teacher"].startswith("distilled")
    assert not any("randomly initialised" in n for n in detector.notes)
    assert len(detector.predict([category.test[0].path])) == 1


def test_missing_teacher_and_bad_teacher_are_clear_errors(toy_dataset, tmp_path):
    train = [s.path for s in read_category(toy_dataset, "disc").train]
    detector = build_detector("efficientad", TINY, RunConfig(epochs=1, batch_size=1, image_size=64, progress=False))
    with pytest.raises(InspladError, match="distill-teacher"):
        detector.fit(train)
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.zeros(1)}, bogus)
    detector = build_detector("efficientad", {**TINY, "teacher": str(bogus)}, _run())
    with pytest.raises(InspladError, match="bogus.pt"):
        detector.fit(train)
    with pytest.raises(InspladError, match="64"):
        build_detector("efficientad", TINY, _run(image_size=32))


def test_quantile_matches_torch():
    x = torch.rand(1000)
    for q in (0.0, 0.5, 0.9, 0.995, 0.999, 1.0):
        assert quantile(x, q).item() == pytest.approx(torch.quantile(x, q).item(), abs=1e-6)


@pytest.mark.parametrize("method, options", [
    ("simplenet", ["pretrain_embed_dim=64", "target_embed_dim=32", "dsc_hidden=16"]),
    ("efficientad", ["pdn_width=16", "out_channels=16", "steps=4"]),
])
def test_benchmark_command_end_to_end_passes_check(toy_dataset, tmp_path, method, options):
    from insplad_tools.cli import main
    from leaderboard.check import check_submission
    from leaderboard.results import load_results

    out = tmp_path / method
    args = ["benchmark", "--method", method, "--attention", "se", "--data", str(toy_dataset), "--category", "disc",
            "--epochs", "2", "--image-size", "64", "--batch-size", "4", "--device", "cpu", "--no-pretrained",
            "--out", str(out), "--quiet"]
    for pair in options:
        args += ["--option", pair]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = load_results(out / "results.json")
    row = doc["categories"][0]
    assert row["image_auroc"] is not None and row["aupro"] is not None and row["pixel_auroc"] is not None
    assert doc["variant"]["attention"] == "se" and doc["variant"]["backbone"] == "resnet18"
    assert any("randomly initialised" in note for note in doc["notes"])
    assert check_submission(out, toy_dataset, allow_partial=True) == []  # --category disc: a deliberate subset
    profile = CliRunner().invoke(main, ["profile", "--method", method, "--attention", "none", "--image-size", "64",
                                        "--device", "cpu", "--batch-sizes", "1", "--repeats", "1", "--json"])
    assert profile.exit_code == 0, profile.output
