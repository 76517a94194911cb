"""CFLOW-AD: localises the toy defects, scores stand alone, schedule and encoding, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_category
from leaderboard.metrics import aupro, image_auroc
from methods.base import RunConfig
from methods.cflow.detector import CFlowOptions, learning_rate
from methods.cflow.model import positional_encoding_2d
from methods.registry import build_detector, load_detector

TINY = {"backbone": "resnet18", "layers": "layer2,layer3", "coupling_blocks": "2", "condition_dims": "32",
        "fiber_batch": "64"}


def _run(epochs: int = 2) -> RunConfig:
    return RunConfig(epochs=epochs, batch_size=4, image_size=64, pretrained=False, progress=False)


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    category = read_category(toy_dataset, "disc")
    detector = build_detector("cflow", TINY, _run())
    checkpoint = tmp_path_factory.mktemp("cflow") / "disc.pt"
    detector.fit([s.path for s in category.train], checkpoint=checkpoint)
    return category, detector, checkpoint, detector.predict([s.path for s in category.test])


def test_detects_and_localises_toy_defects(trained):
    category, detector, _, results = trained
    assert all(np.isfinite(h["loss"]) for h in detector.history) and len(detector.history) == 2
    assert torch.isfinite(detector.model.logp_max).all()
    assert all(r.map.shape == (64, 64) and r.map.dtype == np.float32 and np.isfinite(r.map).all() for r in results)
    assert all(r.score == pytest.approx(float(r.map.max())) for r in results)
    labels = [s.label for s in category.test]
    assert image_auroc(labels, [r.score for r in results]) >= 0.8
    masks = [np.zeros((64, 64), bool) if s.mask_path is None else np.asarray(Image.open(s.mask_path)) > 0
             for s in category.test]
    maps = [r.map for r in results]
    assert aupro(masks, maps) > aupro(masks, [np.zeros_like(m) for m in maps]) + 0.3
    # normal test images stay near the training likelihoods: map values mostly in [0, stages]
    normal_maps = np.stack([r.map for r, y in zip(results, labels) if y == 0])
    assert np.median(normal_maps) >= 0 and normal_maps.max() <= 2


def test_scores_do_not_depend_on_the_other_test_images(trained):
    category, detector, _, results = trained
    alone = detector.predict([category.test[-1].path])[0]
    assert alone.score == pytest.approx(results[-1].score, rel=1e-5)
    assert np.allclose(alone.map, results[-1].map, atol=1e-5)


def test_checkpoint_round_trip_gives_identical_scores(trained):
    category, detector, checkpoint, results = trained
    loaded = load_detector(checkpoint)
    again = loaded.predict([s.path for s in category.test])
    assert [r.score for r in again] == [r.score for r in results]
    assert torch.equal(loaded.model.logp_max, detector.model.logp_max)
    assert loaded.trainable_parameters() == sum(p.numel() for p in detector.model.decoders.parameters()
                                                if p.requires_grad)
    assert any("WRN-50-2" in note for note in loaded.notes)


def test_positional_encoding_separates_positions():
    pe = positional_encoding_2d(32, 6, 9)
    assert pe.shape == (32, 6, 9) and pe.abs().max() <= 1
    assert torch.equal(pe[:16, 0], pe[:16, 5])  # the first half encodes x only
    assert torch.equal(pe[16:, :, 0], pe[16:, :, 8])  # the second half encodes y only
    flat = pe.flatten(1).T
    assert torch.cdist(flat, flat).add(torch.eye(54) * 9).min() > 0.1  # every position distinct


def test_learning_rate_warms_up_then_decays():
    o = CFlowOptions()
    lrs = [learning_rate(o, e, 200) for e in range(200)]
    assert lrs[0] == pytest.approx(o.lr / 10)
    assert all(a < b for a, b in zip(lrs[:16], lrs[1:16]))  # warm-up over 2 meta-epochs of 8 epochs
    after = lrs[16:]
    assert all(a >= b for a, b in zip(after, after[1:])) and after[-1] >= o.lr * 0.1 ** 3
    assert max(lrs) <= o.lr


def test_bad_options_are_one_line_errors():
    for bad in ({"condition_dims": "30"}, {"fiber_batch": "0"}, {"attention": "se"}, {"layers": "layer9"},
                {"backbone": "vgg99"}, {"lr_decay_rate": "2"}):
        with pytest.raises(InspladError):
            build_detector("cflow", {**TINY, **bad}, _run()).trainable_parameters()
