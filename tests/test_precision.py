"""--precision: autocast in the shared fit/predict paths, fp32 islands, fp16 loss scaling, CLI and results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_category
from methods.base import RunConfig
from methods.precision import autocast, resolve_precision
from methods.registry import build_detector

# Scores under bf16 autocast stay within this fraction of the fp32 run's largest score (bf16 keeps
# 8 mantissa bits: ~0.4% per rounding; measured 0.5% for PaDiM, <0.01% for DifferNet on toy data).
BF16_TOLERANCE = 0.02
DIFFERNET_TINY = {"n_scales": 1, "flow_width": 32, "coupling_blocks": 2, "n_transforms": 2, "n_transforms_test": 4}


def _run(**kw) -> RunConfig:
    return RunConfig(epochs=1, batch_size=4, image_size=64, device="cpu", pretrained=False, progress=False, **kw)


@pytest.fixture(scope="module")
def disc(toy_dataset: Path):
    return read_category(toy_dataset, "disc")


def test_auto_is_fp32_on_cpu_and_bad_names_are_one_line_errors() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(InspladError, match="--precision 'fp8'"):
        resolve_precision("fp8", "cpu")


def test_autocast_on_cpu_runs_matmuls_in_bf16() -> None:
    a = torch.randn(4, 4)
    with autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (a @ a).dtype == torch.float32


def _scores(detector, paths) -> np.ndarray:
    return np.array([r.score for r in detector.predict(paths)])


@pytest.mark.parametrize("method, options", [("padim", {}), ("differnet", DIFFERNET_TINY)])
def test_bf16_scores_stay_within_tolerance_of_fp32(disc, method, options) -> None:
    test = [s.path for s in disc.test[::3]]  # good and anomalous images; bf16 convolutions are slow on CPU
    detector = build_detector(method, options, _run())
    detector.fit([s.path for s in disc.train])
    fp32 = _scores(detector, test)
    detector.run.precision = "bf16"
    results = detector.predict(test)
    bf16 = np.array([r.score for r in results])
    assert np.isfinite(bf16).all()
    assert np.abs(bf16 - fp32).max() <= BF16_TOLERANCE * np.abs(fp32).max()
    if results[0].map is not None:
        assert results[0].map.dtype == np.float32
    if method == "padim":  # bf16 really ran: the scores are not bit-identical to fp32
        assert not np.array_equal(bf16, fp32)


def test_differnet_trains_under_bf16_with_its_flow_in_fp32(disc) -> None:
    detector = build_detector("differnet", DIFFERNET_TINY, _run(precision="bf16"))
    history = detector.fit([s.path for s in disc.train])
    assert np.isfinite(history[-1]["loss"])
    with autocast("cpu", "bf16"):
        z, log_det, _ = detector.model(torch.rand(2, 3, 64, 64))
    assert z.dtype == log_det.dtype == torch.float32


def test_fp16_training_scales_the_loss_or_is_refused(disc) -> None:
    train = [s.path for s in disc.train]
    detector = build_detector("differnet", DIFFERNET_TINY, _run(precision="fp16"))
    assert np.isfinite(detector.fit(train)[-1]["loss"])
    assert isinstance(detector._grad_scaler, torch.amp.GradScaler)
    with pytest.raises(InspladError, match="fp16 training is not supported"):
        build_detector("padim", {}, _run(precision="fp16")).fit(train)


def test_profile_and_benchmark_record_the_precision(toy_dataset: Path, tmp_path: Path) -> None:
    from methods.cli import benchmark, profile

    runner = CliRunner()
    result = runner.invoke(profile, ["--method", "padim", "--image-size", "64", "--device", "cpu", "--batch-sizes", "1",
                                     "--repeats", "1", "--precision", "bf16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["precision"] == "bf16"
    out = tmp_path / "run"
    result = runner.invoke(benchmark, ["--method", "padim", "--data", str(toy_dataset), "--category", "disc",
                                       "--image-size", "64", "--device", "cpu", "--no-pretrained", "--quiet",
                                       "--precision", "bf16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["training"]["precision"] == "bf16"
    assert any("bf16" in note for note in doc["notes"])


def test_fp16_loss_scale_survives_a_resume(disc, tmp_path: Path) -> None:
    """An interrupted fp16 run resumes with the loss scale it had, not the initial 65536."""
    train = [s.path for s in disc.train]
    ckpt = tmp_path / "ckpt.pt"
    first = build_detector("differnet", DIFFERNET_TINY, RunConfig(
        epochs=1, batch_size=4, image_size=64, pretrained=False, progress=False, precision="fp16"))
    first.fit(train)
    first._grad_scaler.update(new_scale=1234.0)
    first.save(ckpt, finished=False)
    resumed = build_detector("differnet", DIFFERNET_TINY, RunConfig(
        epochs=2, batch_size=4, image_size=64, pretrained=False, progress=False, precision="fp16"))
    resumed.fit(train, ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 2 and "grad_scaler" in saved
    assert resumed.epochs_done == 2 and resumed.history[0]["epoch"] == 0
    assert resumed._grad_scaler.get_scale() <= 1234.0  # continued from the saved scale (it may only halve)
