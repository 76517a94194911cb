"""Scoring predictions against the toy dataset's labels and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from insplad_tools import mvtec
from leaderboard.predictions import PredictionsError, read_category, write_category
from leaderboard.resize import resize_bilinear
from leaderboard.scoring import score_category, score_run


def mask_of(sample: mvtec.Sample) -> np.ndarray:
    if sample.mask_path is None:
        return np.zeros((64, 64), dtype=np.float32)
    return (np.asarray(Image.open(sample.mask_path)) > 0).astype(np.float32)


def write(folder: Path, category: mvtec.Category, items):
    write_category(folder / category.name, category.name, items)
    return read_category(folder / category.name)


@pytest.fixture(scope="module")
def disc(toy_dataset) -> mvtec.Category:
    return mvtec.read_category(toy_dataset, "disc")


def test_perfect_predictions_score_one(tmp_path, disc):
    preds = write(tmp_path, disc, [(s.rel, float(s.label), mask_of(s)) for s in disc.test])
    result = score_category(disc, preds)
    assert result == {"image_auroc": 1.0, "f1_max": 1.0, "pixel_auroc": 1.0, "aupro": 1.0,
                      "n_test_good": 6, "n_test_anomalous": 6, "n_masks": 6}


def test_hand_written_scores_without_maps(tmp_path, disc):
    # good images score 0..5; anomalous ones 2.5, 6, 7, 8, 9, 10.
    # 2.5 beats 3 of the 6 good scores, the other five beat all six: AUROC = (3 + 30) / 36.
    good = iter(range(6))
    bad = iter([2.5, 6, 7, 8, 9, 10])
    items = [(s.rel, float(next(bad) if s.label else next(good)), None) for s in disc.test]
    result = score_category(disc, write(tmp_path, disc, items))
    assert result["image_auroc"] == pytest.approx(33 / 36)
    assert result["pixel_auroc"] is None and result["aupro"] is None
    # F1-max: threshold 6 gives tp 5, fp 0, fn 1 -> 10/11
    assert result["f1_max"] == pytest.approx(10 / 11)


def test_low_resolution_maps_are_resized_to_the_masks(tmp_path, disc):
    # Maps at 32x32 (block-averaged masks): after bilinear upsampling the defects still rank first.
    items = []
    for s in disc.test:
        small = mask_of(s).reshape(32, 2, 32, 2).mean(axis=(1, 3))
        items.append((s.rel, float(small.max()), small))
    result = score_category(disc, write(tmp_path, disc, items))
    assert result["pixel_auroc"] > 0.99
    assert 0.9 < result["aupro"] <= 1.0


def test_maps_on_only_some_images_give_no_pixel_metrics(tmp_path, disc):
    items = [(s.rel, float(s.label), mask_of(s) if i % 2 else None) for i, s in enumerate(disc.test)]
    result = score_category(disc, write(tmp_path, disc, items))
    assert result["image_auroc"] == 1.0
    assert result["pixel_auroc"] is None and result["aupro"] is None


def test_binned_aupro_is_used_when_asked(tmp_path, disc):
    rng = np.random.default_rng(0)
    items = [(s.rel, float(s.label), mask_of(s) + rng.random((64, 64)).astype(np.float32)) for s in disc.test]
    preds = write(tmp_path, disc, items)
    exact = score_category(disc, preds)["aupro"]
    binned = score_category(disc, preds, thresholds=100)["aupro"]
    assert binned == pytest.approx(exact, abs=1 / 99)


@pytest.mark.parametrize("tamper, message", [
    (lambda items, cat: items[1:], "without a prediction"),
    (lambda items, cat: items + [items[0]], "more than once"),
    (lambda items, cat: items + [(cat.train[0].rel, 0.0, None)], "training image"),
    (lambda items, cat: items + [("disc/test/good/999.png", 0.0, None)], "not test images"),
    (lambda items, cat: items + [("ring/test/good/000.png", 0.0, None)], "not test images"),
])
def test_wrong_image_sets_are_refused_naming_the_problem(tmp_path, disc, tamper, message):
    items = tamper([(s.rel, float(s.label), None) for s in disc.test], disc)
    with pytest.raises(PredictionsError, match=message):
        score_category(disc, write(tmp_path, disc, items))


def test_score_run_scores_every_category(tmp_path, toy_dataset):
    run = tmp_path / "run"
    dataset = mvtec.read_dataset(toy_dataset)
    for name, cat in dataset.items():
        write(run, cat, [(s.rel, float(s.label), None) for s in cat.test])
    scores = score_run(toy_dataset, run)
    assert sorted(scores) == ["disc", "ring"]
    assert all(r["image_auroc"] == 1.0 for r in scores.values())
    assert list(score_run(toy_dataset, run, categories=["ring"])) == ["ring"]
    (run / "ring" / "predictions.json").unlink()
    with pytest.raises(PredictionsError, match="no predictions for category ring"):
        score_run(toy_dataset, run, categories=["disc", "ring"])


def test_resize_bilinear_matches_half_pixel_interpolation():
    amap = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    up = resize_bilinear(amap, (4, 4))
    # half-pixel centres: output x=0.5 maps to source -0.25 -> clamped 0; x=1 -> 0.25
    assert up[0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    assert up[:, 0].tolist() == pytest.approx([0.0, 0.5, 1.5, 2.0])
    assert np.all(resize_bilinear(np.full((5, 7), 0.3, np.float32), (13, 3)) == np.float32(0.3))


def test_score_command_on_a_run_folder_writes_valid_results(tmp_path, toy_dataset):
    from click.testing import CliRunner

    from leaderboard.cli import leaderboard
    from leaderboard.results import load_results

    run = tmp_path / "run"
    for name, cat in mvtec.read_dataset(toy_dataset).items():
        write(run, cat, [(s.rel, float(s.label), mask_of(s)) for s in cat.test])
    out = tmp_path / "results.json"
    result = CliRunner().invoke(leaderboard, ["score", str(run), "--data", str(toy_dataset), "--method", "oracle",
                                              "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = load_results(out)
    assert doc["method"] == "oracle" and doc["aggregation"]["seeds"] == [3]
    assert doc["dataset"]["manifest_sha256"] == mvtec.dataset_digest(toy_dataset)
    assert doc["mean"] == {"image_auroc": 1.0, "pixel_auroc": 1.0, "aupro": 1.0}
    result = CliRunner().invoke(leaderboard, ["score", str(tmp_path), "--data", str(toy_dataset)])
    assert result.exit_code != 0 and "neither a run folder" in result.output
