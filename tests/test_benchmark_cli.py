"""``insplad benchmark`` / ``predict`` / ``profile`` end to end through click's CliRunner (CPU, tiny models)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import urllib.error
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from insplad_tools.cli import main
from leaderboard.check import check_submission
from leaderboard.predictions import read_category
from leaderboard.results import load_results

TINY = ["--option", "n_scales=1", "--option", "flow_width=32", "--option", "coupling_blocks=2",
        "--option", "n_transforms=2", "--option", "n_transforms_test=4"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    from methods.backbones.alexnet import alexnet_features

    torch.manual_seed(0)
    state = {k: v * 3 if k.endswith("weight") else v for k, v in alexnet_features().state_dict().items()}
    path = tmp_path_factory.mktemp("w") / "alexnet-scaled.pt"
    torch.save(state, path)
    return str(path)


def bench_args(data: Path, out: Path, weights: str, *extra: str) -> list[str]:
    return ["benchmark", "--method", "differnet", "--data", str(data), "--out", str(out), "--epochs", "1",
            "--image-size", "64", "--batch-size", "4", "--device", "cpu", "--weights", weights, "--quiet", *TINY, *extra]


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def submission(toy_dataset: Path, weights: str, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "run"
    result = invoke(bench_args(toy_dataset, out, weights, "--runs", "2", "--report", "mean"))
    assert result.exit_code == 0, result.output
    return out


def scores_of(folder: Path) -> dict[str, float]:
    return {p.image: p.score for p in read_category(folder).items}


def test_benchmark_writes_a_submission_that_check_accepts(submission: Path, toy_dataset: Path) -> None:
    assert check_submission(submission, toy_dataset) == []
    doc = load_results(submission / "results.json")
    assert doc["method"] == "differnet" and doc["aggregation"] == {"seeds": [0, 1], "report": "mean"}
    assert [row["category"] for row in doc["categories"]] == ["disc", "ring"]
    for row in doc["categories"]:
        assert [r["seed"] for r in row["runs"]] == [0, 1]
        assert row["image_auroc"] == pytest.approx((row["runs"][0]["image_auroc"] + row["runs"][1]["image_auroc"]) / 2)
        assert row["image_auroc_std"] is not None and row["pixel_auroc"] is None
    assert doc["mean"]["image_auroc"] > 0.7  # easy bright-spot anomalies
    assert doc["training"]["epochs"] == 1 and doc["training"]["image_size"] == 64 and doc["training"]["batch_size"] == 4
    assert doc["training"]["pretrained"] == "file:alexnet-scaled.pt"
    assert doc["hardware"]["device"] == "cpu" and doc["trainable_params"] == 58_752
    assert doc["wall_time_s"] > 0 and doc["package_version"] and "git_commit" in doc
    assert doc["variant"]["backbone"] == "alexnet" and doc["variant"]["attention"] == "none"
    for seed in (0, 1):
        for name in ("disc", "ring"):
            assert (submission / "checkpoints" / f"seed-{seed}" / f"{name}.pt").is_file()


def test_rerun_skips_finished_work_and_keeps_numbers(submission: Path, toy_dataset: Path, weights: str) -> None:
    before = json.loads((submission / "results.json").read_text())
    result = invoke(bench_args(toy_dataset, submission, weights, "--runs", "2", "--report", "mean"))
    assert result.exit_code == 0
    assert result.output.count("already finished, skipped") == 4
    after = json.loads((submission / "results.json").read_text())
    assert after["categories"] == before["categories"]


def test_interrupted_before_predicting_resumes_from_the_checkpoint(submission: Path, toy_dataset: Path, weights: str,
                                                                   tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(submission, copy)
    state = json.loads((copy / "benchmark-state.json").read_text())
    del state["done"]["1/ring"]
    (copy / "benchmark-state.json").write_text(json.dumps(state))
    shutil.rmtree(copy / "predictions" / "seed-1" / "ring")
    result = invoke(bench_args(toy_dataset, copy, weights, "--runs", "2", "--report", "mean"))
    assert result.exit_code == 0
    assert "ring: trained model found, predicting" in result.output
    assert scores_of(copy / "predictions/seed-1/ring") == scores_of(submission / "predictions/seed-1/ring")


def test_same_seed_gives_identical_scores(submission: Path, toy_dataset: Path, weights: str, tmp_path: Path) -> None:
    result = invoke(bench_args(toy_dataset, tmp_path / "again", weights, "--category", "disc"))
    assert result.exit_code == 0, result.output
    assert scores_of(tmp_path / "again/predictions/seed-0/disc") == scores_of(submission / "predictions/seed-0/disc")


def test_other_settings_in_the_same_folder_are_refused(submission: Path, toy_dataset: Path, weights: str) -> None:
    result = CliRunner().invoke(main, bench_args(toy_dataset, submission, weights, "--runs", "2", "--option", "clamp=2.0"))
    assert result.exit_code != 0 and "different settings" in result.output


def test_unknown_option_is_one_clear_error(toy_dataset: Path, weights: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, bench_args(toy_dataset, tmp_path / "x", weights, "--option", "depth=3"))
    assert result.exit_code != 0 and "unknown option(s) depth" in result.output


def test_offline_without_cached_weights_fails_with_instructions(toy_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "urlopen", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("blocked")))
    args = ["benchmark", "--method", "differnet", "--data", str(toy_dataset), "--out", str(tmp_path / "o"),
            "--epochs", "1", "--image-size", "64", "--device", "cpu", "--quiet", *TINY]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "alexnet-owt-7be5be79.pth" in result.output and "--no-pretrained" in result.output
    assert not (tmp_path / "o" / "results.json").exists()


def test_predict_scores_new_images_like_the_benchmark(submission: Path, toy_dataset: Path, tmp_path: Path) -> None:
    expected = scores_of(submission / "predictions/seed-0/disc")
    images = sorted(expected)[:3]
    result = invoke(["predict", "--checkpoint", str(submission / "checkpoints/seed-0/disc.pt"), "--device", "cpu",
                     "--out", str(tmp_path / "p"), *[str(toy_dataset / i) for i in images]])
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p" / "scores.csv").read_text())))
    assert [Path(r["image"]).name for r in rows] == [Path(i).name for i in images]
    for row, image in zip(rows, images):
        assert float(row["score"]) == pytest.approx(expected[image], rel=1e-6)
        assert row["map"] == ""  # DifferNet has no maps


def test_predict_refuses_an_unfinished_checkpoint(toy_dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    image = next((toy_dataset / "disc" / "test" / "good").iterdir())
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(bad), str(image)])
    assert result.exit_code != 0 and "not a readable insplad checkpoint" in result.output


# CBAM default is the AttentDifferNet code line's 49x49 spatial conv: +27,721, as the paper counts it.
@pytest.mark.parametrize("attention, extra", [("none", 0), ("se", 106_496), ("cbam", 27_721)])
def test_profile_reports_parameters_size_and_latency(attention: str, extra: int) -> None:
    result = invoke(["profile", "--method", "differnet", "--attention", attention, "--image-size", "64", "--device", "cpu",
                     "--batch-sizes", "1,2", "--repeats", "1", "--json", *TINY])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["trainable_params"] == 58_752 + extra
    assert info["trainable_mb"] == pytest.approx((58_752 + extra) * 4 / 2**20)
    assert info["model_mb"] > info["trainable_mb"]  # + the frozen AlexNet convs
    assert set(info["latency_ms"]) == {"1", "2"} and all(v > 0 for v in info["latency_ms"].values())


def test_commands_explain_themselves() -> None:
    for command in ("benchmark", "predict", "profile"):
        result = invoke([command, "--help"])
        assert result.exit_code == 0 and "--" in result.output


class _Bomb:
    """Unpickling this writes a marker file: proof that a loader executed code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


@pytest.mark.parametrize("payload", ["garbage", "bomb"])
def test_unsafe_or_corrupt_checkpoints_are_refused_in_one_line(tmp_path: Path, toy_dataset: Path, payload: str) -> None:
    marker = tmp_path / "marker"
    checkpoint = tmp_path / "model.pt"
    if payload == "garbage":
        checkpoint.write_bytes(b"not a checkpoint at all")
    else:
        torch.save({"format": "insplad-checkpoint/1", "state": _Bomb(marker)}, checkpoint)
    image = next((toy_dataset / "disc" / "test" / "good").iterdir())
    for args in (["predict", "--checkpoint", str(checkpoint), str(image)],
                 ["benchmark", "--method", "differnet", "--data", str(toy_dataset), "--out", str(tmp_path / "run"),
                  "--weights", str(checkpoint), "--category", "disc", "--epochs", "1", "--quiet", *TINY]):
        result = invoke(args)
        assert result.exit_code != 0
        message = result.output.strip().splitlines()[-1]
        assert str(checkpoint) in message and "never unpickled" in message
        assert "weights_only` set to `False`" not in result.output
    assert not marker.exists()
