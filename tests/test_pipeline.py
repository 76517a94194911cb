"""The shared input pipeline (methods.data): one decode cache, whichever way it is produced.

Serial decoding, DataLoader workers and the memory-mapped spill file must give the same bytes; the
spill folder never outlives the call; a bad image is one line naming it, from a worker too.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from insplad_tools.cli import main
from insplad_tools.errors import InspladError
from leaderboard.predictions import read_category
from leaderboard.region import CentreCrop
from leaderboard.results import validate_results
from methods import data
from methods.data import (PARALLEL_MIN_IMAGES, SPILL_PREFIX, iter_decoded, load_images_uint8, load_rgb,
                          predict_score_maps, to_device, to_tensor)
from tests.toydata import make_toy_mvtec

N_IMAGES = PARALLEL_MIN_IMAGES + 6  # enough that workers are really used


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Varied small files: PNG and JPEG, odd sizes, greyscale, RGBA and palette modes."""
    folder = tmp_path_factory.mktemp("pipeline-images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 256, (20 + i % 17, 24 + i % 11, 3), dtype=np.uint8)
        img = Image.fromarray(pixels)
        img = {0: img, 1: img.convert("L"), 2: img.convert("RGBA"), 3: img.convert("P")}[i % 4]
        path = folder / f"{i:03d}.{'jpg' if i % 4 in (0, 1) and i % 3 == 0 else 'png'}"
        img.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def serial(images: list[Path]) -> torch.Tensor:
    return load_images_uint8(images, 32, workers=0)


@pytest.fixture
def loaders(monkeypatch) -> list[int]:
    """The ``num_workers`` of every DataLoader the pipeline starts."""
    started: list[int] = []
    original = data.DataLoader

    def spy(*args, **kwargs):
        started.append(kwargs["num_workers"])
        return original(*args, **kwargs)

    monkeypatch.setattr(data, "DataLoader", spy)
    return started


@pytest.fixture
def spills(monkeypatch) -> list[Path]:
    """The spill folders the pipeline creates."""
    made: list[Path] = []
    original = tempfile.mkdtemp

    def spy(*args, **kwargs):
        folder = original(*args, **kwargs)
        if Path(folder).name.startswith(SPILL_PREFIX):
            made.append(Path(folder))
        return folder

    monkeypatch.setattr(data.tempfile, "mkdtemp", spy)
    return made


def corrupt_copy(images: list[Path], folder: Path) -> tuple[list[Path], Path]:
    bad = folder / "broken.png"
    bad.write_bytes(images[1].read_bytes()[:60])  # a truncated PNG
    return [*images[:40], bad, *images[40:]], bad


def test_cache_is_the_bytes_every_method_trained_on(images: list[Path], serial: torch.Tensor) -> None:
    # The pre-pipeline definition: float tensor in [0, 1] from the resized RGB image, times 255, rounded.
    for i in (0, 1, 2, 3, 17):
        before = (to_tensor(load_rgb(images[i]), 32, normalize=False) * 255).round().to(torch.uint8)
        assert torch.equal(serial[i], before)
    assert serial.shape == (N_IMAGES, 3, 32, 32) and serial.dtype == torch.uint8


def test_workers_and_memmap_give_identical_bytes(images: list[Path], serial: torch.Tensor, tmp_path: Path,
                                                 loaders: list[int], spills: list[Path]) -> None:
    parallel = load_images_uint8(images, 32, workers=2)
    assert loaders == [2] and not spills
    spilled = load_images_uint8(images, 32, workers=2, cache_budget_mb=0, cache_dir=tmp_path)
    assert len(spills) == 1 and spills[0].parent == tmp_path and spills[0].name.startswith(SPILL_PREFIX)
    serial_spilled = load_images_uint8(images, 32, workers=0, cache_budget_mb=0, cache_dir=tmp_path)
    for other in (parallel, spilled, serial_spilled):
        assert other.numpy().tobytes() == serial.numpy().tobytes()
    # the spill folders are gone while the mapped data stays usable, and nothing else was written there
    assert list(tmp_path.iterdir()) == [] and not any(p.exists() for p in spills)
    assert float(spilled.float().mean()) == pytest.approx(float(serial.float().mean()))


def test_a_centre_crop_view_is_cached_identically(images: list[Path], tmp_path: Path) -> None:
    view = CentreCrop(40, 32)
    plain = load_images_uint8(images, view, workers=0)
    assert plain.shape == (N_IMAGES, 3, 32, 32)
    assert torch.equal(plain, load_images_uint8(images, view, workers=2, cache_budget_mb=0, cache_dir=tmp_path))


def test_budget_decides_memory_or_file(images: list[Path], tmp_path: Path, spills: list[Path]) -> None:
    load_images_uint8(images[:4], 32, cache_budget_mb=1, cache_dir=tmp_path)  # 12 KB fits 1 MB
    assert spills == []
    load_images_uint8(images[:4], 32, cache_budget_mb=0, cache_dir=tmp_path / "missing")  # no such folder
    assert len(spills) == 1 and spills[0].parent == Path(tempfile.gettempdir()) and not spills[0].exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_is_one_line_naming_it_and_leaves_nothing(images: list[Path], tmp_path: Path, workers: int,
                                                                  loaders: list[int], spills: list[Path]) -> None:
    paths, bad = corrupt_copy(images, tmp_path)
    cache_dir = tmp_path / "run"
    cache_dir.mkdir()
    with pytest.raises(InspladError) as info:
        load_images_uint8(paths, 32, workers=workers, cache_budget_mb=0, cache_dir=cache_dir)
    message = info.value.message
    assert message.startswith(f"{bad}: cannot read image") and "\n" not in message and "Traceback" not in message
    assert loaders == ([2] if workers else [])
    assert len(spills) == 1 and not spills[0].exists() and list(cache_dir.iterdir()) == []


def test_an_interrupted_fill_leaves_no_spill_folder(images: list[Path], tmp_path: Path, monkeypatch,
                                                    spills: list[Path]) -> None:
    calls = []

    def interrupted(path, size):
        calls.append(path)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return np.zeros((3, 32, 32), dtype=np.uint8)

    monkeypatch.setattr(data, "decode_uint8", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_images_uint8(images, 32, workers=0, cache_budget_mb=0, cache_dir=tmp_path)
    assert len(spills) == 1 and list(tmp_path.iterdir()) == []


def test_a_spill_left_by_a_killed_run_is_removed_by_the_next(images: list[Path], tmp_path: Path) -> None:
    import os

    stale, fresh, foreign = (tmp_path / f"{SPILL_PREFIX}{name}" for name in ("stale", "fresh", "foreign"))
    for folder in (stale, fresh, foreign):
        folder.mkdir()
        (folder / "images.u8").write_bytes(b"x")
    (foreign / "notes.txt").write_text("not ours")
    for folder in (stale, foreign):
        os.utime(folder, (0, 0))
    load_images_uint8(images[:2], 32, cache_budget_mb=0, cache_dir=tmp_path)
    assert not stale.exists() and fresh.exists() and (foreign / "notes.txt").exists()


@settings(deadline=None, max_examples=15)
@given(batch_size=st.integers(1, 80))
def test_batches_in_order_rebuild_the_cache(images: list[Path], serial: torch.Tensor, batch_size: int) -> None:
    batches = list(iter_decoded(images[:30], 32, batch_size=batch_size))
    assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert torch.equal(torch.cat(batches), serial[:30])


def test_predict_prefetching_with_workers_scores_like_serial(images: list[Path], loaders: list[int]) -> None:
    class MeanModel(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            return x.mean(dim=(1, 2, 3)), x.mean(dim=1)

    kwargs = dict(size=32, batch_size=8, device=torch.device("cpu"))
    serial = predict_score_maps(MeanModel(), images, workers=0, **kwargs)
    parallel = predict_score_maps(MeanModel(), images, workers=2, **kwargs)
    assert loaders == [2] and len(parallel) == N_IMAGES
    for (s0, m0), (s1, m1) in zip(serial, parallel):
        assert s0 == s1 and np.array_equal(m0, m1) and m0.shape == (32, 32)


def test_to_device_on_cpu_is_a_plain_copy() -> None:
    batch = torch.arange(24, dtype=torch.uint8).view(2, 3, 2, 2)
    moved = to_device(batch, "cpu")
    assert moved.device.type == "cpu" and torch.equal(moved, batch) and not moved.is_pinned()
    assert to_device(batch, torch.device("cpu")).dtype == torch.uint8


def test_bad_worker_counts_and_budgets_are_one_line_errors(images: list[Path]) -> None:
    for kwargs in ({"workers": -1}, {"workers": 1000}, {"workers": True}, {"cache_budget_mb": -5}):
        with pytest.raises(InspladError, match=r"expected an integer"):
            load_images_uint8(images[:2], 32, **kwargs)


def test_old_results_without_pipeline_fields_still_validate() -> None:
    from leaderboard.results import build_results

    doc = build_results(method="padim", variant={}, dataset={"name": "x", "manifest_sha256": "0" * 64, "categories": ["c"]},
                        seeds=[0], report="best",
                        per_category={"c": {"n_test_good": 1, "n_test_anomalous": 1, "n_masks": 0,
                                            "runs": [{"seed": 0, "image_auroc": 0.5, "pixel_auroc": None,
                                                      "aupro": None, "f1_max": None}]}},
                        training={"epochs": 1, "image_size": 32, "batch_size": 2})
    assert validate_results(doc) == []
    assert validate_results({**doc, "training": {**doc["training"], "workers": 2, "cache_budget_mb": 0}}) == []
    assert validate_results({**doc, "training": {**doc["training"], "workers": -1}}) == \
        ["training.workers: must be an integer >= 0"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_mvtec(tmp_path_factory.mktemp("pipe-toy"), categories=("disc",), size=48, n_train=8,
                          n_test_good=3, n_test_bad=3)


def test_benchmark_flags_reach_the_run_and_results(toy: Path, tmp_path: Path, spills: list[Path]) -> None:
    out = tmp_path / "run"
    args = ["benchmark", "--method", "padim", "--data", str(toy), "--out", str(out), "--image-size", "32",
            "--batch-size", "4", "--device", "cpu", "--no-pretrained", "--quiet", "--workers", "2",
            "--cache-budget-mb", "0"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["training"]["workers"] == 2 and doc["training"]["cache_budget_mb"] == 0
    assert validate_results(doc) == []
    # the train set was memory-mapped from a folder inside --out, and that folder is gone
    assert spills and all(p.parent == out and not p.exists() for p in spills)
    assert len(read_category(out / "predictions/seed-0/disc").items) == 6


@pytest.mark.parametrize("flag", [["--workers", "-1"], ["--workers", "65"], ["--cache-budget-mb", "-1"]])
def test_out_of_range_flags_are_refused(flag: list[str], toy: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["benchmark", "--method", "padim", "--data", str(toy), "--out",
                                       str(tmp_path / "o"), *flag])
    assert result.exit_code == 2 and "is not in the range" in result.output
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_never_decides_this_machines_decode_settings(tmp_path: Path) -> None:
    """Workers and cache settings are the machine's: a checkpoint written elsewhere (or tampered with)
    loads with this machine's defaults."""
    from methods.base import RunConfig
    from methods.registry import build_detector, load_detector

    root = make_toy_mvtec(tmp_path / "toy", n_train=4, n_test_good=1, n_test_bad=1)
    train = sorted((root / "disc" / "train" / "good").glob("*.png"))
    run = RunConfig(epochs=1, batch_size=4, image_size=32, pretrained=False, progress=False, workers=7,
                    cache_budget_mb=1, cache_dir=str(tmp_path / "elsewhere"))
    detector = build_detector("padim", {}, run)
    detector.fit(train, tmp_path / "ckpt.pt")
    loaded = load_detector(tmp_path / "ckpt.pt")
    defaults = RunConfig(epochs=1, batch_size=1, image_size=1)
    assert (loaded.run.workers, loaded.run.cache_budget_mb, loaded.run.cache_dir) == \
        (defaults.workers, defaults.cache_budget_mb, None)
    assert len(loaded.predict(train[:1])) == 1
