"""Fixtures of the fault suite: one small synthetic raw set and its dataset per session, copied
per test into ``tmp_path`` (the "world" whose files a failing command must leave untouched)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from insplad_tools.dataset.pipeline import BuildOptions, build_dataset
from insplad_tools.synth.generate import SynthConfig, generate


@pytest.fixture(scope="session")
def raw_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic raw set: 10 frames of 320x240 over 2 towers, defects, VOC + COCO + Roboflow export."""
    raw = tmp_path_factory.mktemp("faults") / "raw"
    generate(raw, SynthConfig(seed=0, frames=10, frame_size=(320, 240), defect_rate=0.6, progress=False))
    return raw


@pytest.fixture(scope="session")
def data_master(raw_master: Path) -> Path:
    """The InsPLAD-seg-style dataset built from :func:`raw_master` (with masks)."""
    data = raw_master.parent / "data"
    build_dataset(raw_master, data, BuildOptions(masks=raw_master / "roboflow", progress=False))
    return data


@pytest.fixture
def raw(raw_master: Path, tmp_path: Path) -> Path:
    """A private copy of the raw set (tests may damage it)."""
    return Path(shutil.copytree(raw_master, tmp_path / "raw", symlinks=True))


@pytest.fixture
def data(data_master: Path, tmp_path: Path) -> Path:
    """A private copy of the built dataset (tests may damage it)."""
    return Path(shutil.copytree(data_master, tmp_path / "data", symlinks=True))


# -- methods / leaderboard faults (A2): a tiny MVTec-layout set and one finished PatchCore run ----------
BENCH_ARGS = ("--method", "patchcore", "--image-size", "32", "--batch-size", "4", "--no-pretrained", "--device", "cpu",
              "--quiet", "--option", "projection_dim=0", "--option", "backbone=resnet18")


@pytest.fixture(scope="session")
def toy_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three categories of 32 px images (6 train, 3 good + 3 anomalous test with masks each)."""
    from tests.toydata import make_toy_mvtec

    return make_toy_mvtec(tmp_path_factory.mktemp("faults-toy") / "toy", categories=("disc", "ring", "rod"), size=32,
                          n_train=6, n_test_good=3, n_test_bad=3)


@pytest.fixture(scope="session")
def bench_master(toy_master: Path) -> Path:
    """A finished ``insplad benchmark`` folder (a valid submission with checkpoints) on :func:`toy_master`."""
    from click.testing import CliRunner

    from insplad_tools.cli import main

    out = toy_master.parent / "bench"
    result = CliRunner().invoke(main, ["benchmark", *BENCH_ARGS, "--data", str(toy_master), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def toy(toy_master: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset."""
    return Path(shutil.copytree(toy_master, tmp_path / "toy", symlinks=True))


@pytest.fixture
def sub(bench_master: Path, tmp_path: Path) -> Path:
    """A private copy of the finished benchmark folder, without its checkpoints (a submission)."""
    return Path(shutil.copytree(bench_master, tmp_path / "sub", symlinks=True, ignore=shutil.ignore_patterns("checkpoints")))
