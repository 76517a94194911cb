"""RD++: trains and separates the toy defects, attention training and counts, losses, noise, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_category
from leaderboard.metrics import image_auroc
from methods.base import RunConfig
from methods.rdpp.model import noise_permutation, simplex_octaves, sinkhorn_divergence
from methods.registry import build_detector, load_detector


def _run(**kw) -> RunConfig:
    # 32 px (the bottleneck at 1x1) keeps the 16M-parameter student affordable in the suite
    return RunConfig(**{"epochs": 4, "batch_size": 4, "image_size": 32, "pretrained": False, "progress": False,
                        **kw})


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    category = read_category(toy_dataset, "disc")
    detector = build_detector("rdpp", {"accumulation_steps": "1"}, _run())
    checkpoint = tmp_path_factory.mktemp("rdpp") / "disc.pt"
    detector.fit([s.path for s in category.train], checkpoint=checkpoint)
    return category, detector, checkpoint, detector.predict([s.path for s in category.test])


def test_trains_and_separates_toy_defects(trained):
    category, detector, _, results = trained
    history = detector.history
    assert len(history) == 4 and all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["distill"] < history[0]["distill"]  # the student learns to mirror the teacher
    assert all(r.map.shape == (32, 32) and r.map.dtype == np.float32 and np.isfinite(r.map).all() for r in results)
    assert all(r.score == pytest.approx(float(r.map.max())) for r in results)
    assert image_auroc([s.label for s in category.test], [r.score for r in results]) >= 0.8


def test_checkpoint_round_trip_gives_identical_scores(trained):
    category, detector, checkpoint, results = trained
    loaded = load_detector(checkpoint)
    again = loaded.predict([s.path for s in category.test])
    assert [r.score for r in again] == [r.score for r in results]
    assert loaded.trainable_parameters() == detector.trainable_parameters()
    assert any("randomly initialised" in n for n in loaded.notes)


def test_attention_is_trained_and_counted_teacher_convs_stay_frozen(toy_dataset):
    counts = {a: build_detector("rdpp", {"attention": a}, _run()).trainable_parameters() for a in ("none", "se", "cbam")}
    assert counts["none"] < counts["se"] and counts["none"] < counts["cbam"]
    assert counts["se"] - counts["none"] == 21_504  # SE (r=16) in the 6 BasicBlocks of layers 1-3: 2·C²/16 each
    frozen = build_detector("rdpp", {"attention": "se", "train_attention": "false"}, _run())
    assert frozen.trainable_parameters() == counts["none"]
    plain_rd = build_detector("rdpp", {"projection": "false"}, _run())
    assert plain_rd.trainable_parameters() < counts["none"]

    category = read_category(toy_dataset, "ring")
    detector = build_detector("rdpp", {"attention": "se"}, _run(epochs=1))
    detector.setup([s.path for s in category.train[:4]])
    encoder = detector.model.encoder
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    detector.train_epoch(0)
    changed = {n for n, p in encoder.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".attention." in n for n in changed)


def test_sinkhorn_divergence_is_zero_for_the_same_cloud_and_a_transport_cost_otherwise():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=gen)
    assert abs(float(sinkhorn_divergence(x, x[torch.randperm(6, generator=gen)]))) < 1e-5
    shift = torch.tensor([0.6, -0.3, 0.0, 0.2, 0.1])
    # two clouds that differ by a translation: OT cost |v|^2/2 (blur small against the spread)
    value = float(sinkhorn_divergence(x, x + shift, blur=0.01))
    assert value == pytest.approx(0.5 * float(shift.square().sum()), rel=0.05)
    a, b = torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 2.0]])
    assert float(sinkhorn_divergence(a, b)) == pytest.approx(4.5, rel=1e-4)


def test_pseudo_anomaly_noise_is_seeded_bounded_and_local():
    perm = noise_permutation(3)
    a, b = simplex_octaves((3, 20, 24), perm), simplex_octaves((3, 20, 24), perm)
    assert torch.equal(a, b) and not torch.equal(a, simplex_octaves((3, 20, 24), noise_permutation(4)))
    assert a.abs().max() < 2.5 and a.std() > 0.05  # six octaves, persistence 0.6: amplitude sum 2.38
    detector = build_detector("rdpp", {}, _run(image_size=256))
    images = torch.rand(4, 3, 256, 256)
    diff = (detector.add_noise(images) - images).abs().amax(1)  # (B, H, W)
    for d in diff:
        rows, cols = torch.nonzero(d > 0, as_tuple=True)
        h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert 1 <= h < 32 and 1 <= w < 32  # one rectangle, h, w in [10, 32) at 256 px
        assert float(d.max()) <= 0.2 * 2.5


def test_options_are_checked():
    for bad, run in (({"backbone": "alexnet"}, _run()), ({}, _run(image_size=72)), ({}, _run(image_size=16)), ({"attention": "x"}, _run()),
                     ({"accumulation_steps": "0"}, _run())):
        with pytest.raises(InspladError):
            build_detector("rdpp", bad, run)
