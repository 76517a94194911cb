"""PatchCore: localises the toy defects, coreset properties, reproducibility, checkpoints, CLI benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from insplad_tools.cli import main
from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_category
from leaderboard.check import check_submission
from leaderboard.metrics import aupro, image_auroc
from leaderboard.results import load_results
from methods.base import RunConfig
from methods.patchcore.coreset import (
    coverage_radius,
    greedy_coreset,
    nearest_neighbours,
)
from methods.registry import build_detector, load_detector


RN18 = {"backbone": "resnet18"}  # fast; the default is the paper's WRN-50-2 (its own test below)


def _run(seed: int = 0) -> RunConfig:
    return RunConfig(epochs=1, batch_size=4, image_size=64, pretrained=False, progress=False, seed=seed)


def _masks(category):
    return [np.zeros((64, 64), bool) if s.mask_path is None else np.asarray(Image.open(s.mask_path)) > 0
            for s in category.test]


@pytest.fixture(scope="module")
def trained(toy_dataset, tmp_path_factory):
    category = read_category(toy_dataset, "disc")
    detector = build_detector("patchcore", RN18, _run())
    checkpoint = tmp_path_factory.mktemp("patchcore") / "disc.pt"
    detector.fit([s.path for s in category.train], checkpoint=checkpoint)
    return category, detector, checkpoint, detector.predict([s.path for s in category.test])


def test_detects_and_localises_toy_defects(trained):
    category, detector, _, results = trained
    assert detector.trainable_parameters() == 0
    n_features = 12 * 8 * 8  # 12 train images, 8x8 layer-2 grid at 64 px
    assert detector.history[0]["features"] == n_features
    assert detector.model.memory_bank.shape == (round(0.1 * n_features), 384)
    assert all(r.map.shape == (64, 64) and r.map.dtype == np.float32 for r in results)
    assert image_auroc([s.label for s in category.test], [r.score for r in results]) >= 0.9
    masks, maps = _masks(category), [r.map for r in results]
    assert aupro(masks, maps) > aupro(masks, [np.zeros_like(m) for m in maps]) + 0.4


def test_reweighting_only_shrinks_the_max_patch_score(trained):
    category, detector, _, results = trained
    detector.model.num_neighbors = 1
    try:
        plain = detector.predict([s.path for s in category.test])
    finally:
        detector.model.num_neighbors = 9
    for weighted, top in zip(results, plain):
        assert 0 < weighted.score < top.score
        assert np.array_equal(weighted.map, top.map)


def test_checkpoint_round_trip_gives_identical_scores(trained):
    category, _, checkpoint, results = trained
    loaded = load_detector(checkpoint)
    again = loaded.predict([s.path for s in category.test])
    assert [r.score for r in again] == [r.score for r in results]
    assert all(np.array_equal(a.map, b.map) for a, b in zip(again, results))
    assert loaded.notes and "randomly initialised" in loaded.notes[0]


def test_fixed_seed_is_reproducible(toy_dataset):
    category = read_category(toy_dataset, "ring")
    train, test = [s.path for s in category.train[:6]], [s.path for s in category.test[:4]]
    banks, scores = [], []
    for seed in (3, 3, 4):
        detector = build_detector("patchcore", RN18, _run(seed))
        detector.fit(train)
        banks.append(detector.model.memory_bank.clone())
        scores.append([r.score for r in detector.predict(test)])
    assert torch.equal(banks[0], banks[1]) and scores[0] == scores[1]
    assert not torch.equal(banks[0], banks[2])


@settings(max_examples=15, deadline=None)
@given(n=st.integers(20, 300), dim=st.integers(2, 40), ratio=st.floats(0.02, 0.5), seed=st.integers(0, 2**16))
def test_coreset_picks_distinct_rows_within_twice_any_subsets_radius(n, dim, ratio, seed):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, dim, generator=gen) * 5
    x = centres[torch.randint(8, (n,), generator=gen)] + 0.3 * torch.randn(n, dim, generator=gen)
    x[: n // 10] = x[0]  # duplicates must not be picked twice
    k = max(1, round(ratio * n))
    chosen = greedy_coreset(x, k, projection_dim=0, seed=seed)
    assert chosen.shape == (k,) and len(set(chosen.tolist())) == k
    # greedy k-center is a 2-approximation: within twice the radius of every k-subset, random ones included
    greedy = coverage_radius(x, chosen)
    randoms = [coverage_radius(x, torch.randperm(n, generator=gen)[:k]) for _ in range(5)]
    assert greedy <= 2 * min(randoms) + 1e-5


def test_coreset_covers_rare_clusters_that_random_picks_miss():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(16)[:8] * 20
    sizes = [900] + [10] * 7  # one common pattern, seven rare ones
    x = torch.cat([c + 0.5 * torch.randn(m, 16, generator=gen) for c, m in zip(centres, sizes)])
    greedy = coverage_radius(x, greedy_coreset(x, 40, projection_dim=8, seed=0))
    randoms = [coverage_radius(x, torch.randperm(len(x), generator=gen)[:40]) for _ in range(20)]
    assert greedy < 10 < min(randoms)


def test_projection_keeps_coverage_close_and_chunked_search_is_exact():
    gen = torch.Generator().manual_seed(0)
    # rare clusters in 384-d (as patch features: few rare patterns); selection on a 128-d projection
    sizes = [1700] + [5] * 6
    x = torch.cat([20 * torch.eye(384)[i] + 0.1 * torch.randn(m, 384, generator=gen) for i, m in enumerate(sizes)])
    projected = coverage_radius(x, greedy_coreset(x, 200, projection_dim=128, seed=1))
    exact = coverage_radius(x, greedy_coreset(x, 200, projection_dim=0, seed=1))
    random = min(coverage_radius(x, torch.randperm(len(x), generator=gen)[:200]) for _ in range(5))
    assert projected < 0.5 * random and projected < 1.5 * exact
    y = torch.randn(600, 384, generator=gen)
    d_small, i_small = nearest_neighbours(y[:300], y[300:], k=3, max_elements=1000)
    full = torch.cdist(y[:300], y[300:])
    ref_d, ref_i = torch.topk(full, 3, dim=1, largest=False)
    assert torch.equal(i_small, ref_i) and torch.allclose(d_small, ref_d)


def test_options_are_checked():
    from insplad_tools.errors import InspladError

    for bad in ({"coreset_ratio": "0"}, {"num_neighbors": "0"}, {"map_upsample": "cubic"}, {"attention": "x"}):
        with pytest.raises(InspladError):
            build_detector("patchcore", bad, _run())


def test_benchmark_and_profile_cli(toy_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["benchmark", "--method", "patchcore", "--option", "backbone=resnet18", "--data", str(toy_dataset), "--out",
            str(out), "--image-size", "64", "--batch-size", "4", "--device", "cpu", "--no-pretrained", "--quiet"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert check_submission(out, toy_dataset) == []
    doc = load_results(out / "results.json")
    assert doc["method"] == "patchcore" and doc["trainable_params"] == 0 and doc["training"]["epochs"] == 1
    assert doc["mean"]["image_auroc"] >= 0.9 and doc["mean"]["aupro"] > 0.5
    result = CliRunner().invoke(main, ["profile", "--method", "patchcore", "--option", "backbone=resnet18",
                                       "--image-size", "64", "--device", "cpu",
                                       "--batch-sizes", "1,2", "--repeats", "1", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    import json

    prof = json.loads(result.output)
    assert prof["trainable_params"] == 0 and prof["trainable_mb"] == 0
    # 200 assumed train images x 8x8 patches x 10% = 1280 bank rows of 384 floats, plus the ResNet-18 trunk
    assert prof["model_mb"] > 1280 * 384 * 4 / 2**20


def test_default_is_the_papers_wide_resnet50_2(toy_dataset):
    """Seed 000 ran PatchCore on its original backbone: WRN-50-2 layer2 + layer3, 512 + 1024 = 1536-d patches."""
    category = read_category(toy_dataset, "disc")
    detector = build_detector("patchcore", {}, RunConfig(epochs=1, batch_size=4, image_size=32, pretrained=False,
                                                         progress=False))
    detector.fit([s.path for s in category.train[:4]])
    assert detector.variant()["backbone"] == "wide_resnet50_2" and detector.variant()["embed_dim"] == 1536
    assert "backbone_label" not in detector.variant()
    assert detector.model.memory_bank.shape == (round(0.1 * 4 * 4 * 4), 1536)
    assert not any("paper" in note for note in detector.notes)
    result = detector.predict([category.test[0].path])[0]
    assert result.map.shape == (32, 32) and np.isfinite(result.score)
    other = build_detector("patchcore", RN18, _run())
    assert "not the paper's backbone" in other.variant()["backbone_label"]
    assert any("WRN-50-2" in note for note in other.notes)
    with pytest.raises(InspladError, match="backbone=resnet18"):
        build_detector("patchcore", {"attention": "se"}, _run())
