"""Evaluation protocols: ``clean`` (last epoch, no test labels) and ``paper`` (test-set model selection)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from insplad_tools.errors import InspladError
from leaderboard.render import display_label
from leaderboard.results import validate_results
from methods.benchmarking import BenchmarkConfig, run_benchmark, split_validation

TINY = {"n_scales": "1", "flow_width": "16", "coupling_blocks": "1", "n_transforms": "1", "n_transforms_test": "2"}


def _config(toy: Path, out: Path, **kwargs) -> BenchmarkConfig:
    return BenchmarkConfig(method="differnet", data=toy, out=out, options=dict(TINY), categories=["disc"], epochs=3,
                           image_size=64, batch_size=8, device="cpu", pretrained=False, progress=False, **kwargs)


def test_paper_protocol_reports_the_best_test_epoch_and_says_so(toy_dataset: Path, tmp_path: Path) -> None:
    doc = run_benchmark(_config(toy_dataset, tmp_path / "paper", protocol="paper", eval_every=2), log=lambda _: None)
    assert validate_results(doc) == []
    assert doc["protocol"]["name"] == "paper" and doc["protocol"]["model_selection"] == "test-set model selection"
    assert doc["protocol"]["eval_every"] == 2
    assert any(n.startswith("test-set model selection") for n in doc["notes"])
    assert "[test-set model selection]" in display_label(doc)

    state = json.loads((tmp_path / "paper" / "benchmark-state.json").read_text())
    from methods.registry import load_detector

    history = load_detector(tmp_path / "paper" / "checkpoints" / "seed-0" / "disc.pt").history
    evaluated = {h["epoch"] + 1: h["test_image_auroc"] for h in history if "test_image_auroc" in h}
    assert sorted(evaluated) == [2, 3]  # every 2 epochs, and after the last
    best_epoch = max(evaluated, key=lambda e: (evaluated[e], -e))
    assert doc["protocol"]["selected_epochs"] == {"disc": {"0": best_epoch}}
    assert state["done"]["0/disc"]["selected_epoch"] == best_epoch
    # the reported number is the best evaluation, recomputed from the predictions written at that epoch
    assert doc["categories"][0]["image_auroc"] == pytest.approx(evaluated[best_epoch], abs=1e-9)


def test_clean_protocol_never_scores_the_test_set_during_training(toy_dataset: Path, tmp_path: Path) -> None:
    doc = run_benchmark(_config(toy_dataset, tmp_path / "clean"), log=lambda _: None)
    assert doc["protocol"] == {"name": "clean", "eval_every": None, "val_split": None, "model_selection": "last epoch"}
    from methods.registry import load_detector

    history = load_detector(tmp_path / "clean" / "checkpoints" / "seed-0" / "disc.pt").history
    assert len(history) == 3 and not any("test_image_auroc" in h for h in history)
    assert "test-set" not in display_label(doc)


def test_protocol_options_are_checked_before_anything_runs(toy_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InspladError, match="evaluates on no test set"):
        BenchmarkConfig(method="efficientad", data=toy_dataset, out=tmp_path, protocol="paper").resolved()
    with pytest.raises(InspladError, match="only to --protocol paper"):
        BenchmarkConfig(method="differnet", data=toy_dataset, out=tmp_path, eval_every=3).resolved()
    with pytest.raises(InspladError, match="uses no validation"):
        BenchmarkConfig(method="differnet", data=toy_dataset, out=tmp_path, val_split=0.2).resolved()
    assert BenchmarkConfig(method="efficientad", data=toy_dataset, out=tmp_path, val_split=0.2,
                           device="cpu").resolved().protocol_record()["val_split"] == 0.2
    assert BenchmarkConfig(method="differnet", data=toy_dataset, out=tmp_path, protocol="paper",
                           device="cpu").resolved().eval_every == 8
    bad = {"name": "paper", "model_selection": "last epoch"}
    assert any("model_selection" in p for p in validate_results({"protocol": bad, **_minimal()}))


def test_validation_split_is_seeded_disjoint_and_complete() -> None:
    paths = [Path(f"{i}.png") for i in range(20)]
    train, val = split_validation(paths, 0.2, seed=3)
    assert len(val) == 4 and set(train) | set(val) == set(paths) and not set(train) & set(val)
    assert split_validation(paths, 0.2, seed=3) == (train, val)
    assert split_validation(paths, 0.2, seed=4)[1] != val
    with pytest.raises(InspladError, match="none to train on"):
        split_validation(paths[:1], 0.5, seed=0)


def _minimal() -> dict:
    run = {"seed": 0, "image_auroc": 0.5, "pixel_auroc": None, "aupro": None, "f1_max": 0.5}
    row = {"category": "c", "n_test_good": 1, "n_test_anomalous": 1, "n_masks": 0, "runs": [run],
           "image_auroc": 0.5, "image_auroc_mean": 0.5, "image_auroc_std": 0.0, "image_auroc_best": 0.5,
           "pixel_auroc": None, "pixel_auroc_mean": None, "pixel_auroc_std": None, "pixel_auroc_best": None,
           "aupro": None, "aupro_mean": None, "aupro_std": None, "aupro_best": None,
           "f1_max": 0.5, "f1_max_mean": 0.5, "f1_max_std": 0.0, "f1_max_best": 0.5}
    return {"schema": "insplad-results/1", "method": "m", "variant": {}, "dataset": {"name": "d", "manifest_sha256": "0" * 64},
            "aggregation": {"seeds": [0], "report": "best"}, "categories": [row],
            "mean": {"image_auroc": 0.5, "pixel_auroc": None, "aupro": None}}
