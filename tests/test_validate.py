"""`insplad validate`: clean datasets pass; each kind of damage is named on its own line with exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from insplad_tools.dataset.manifest import dumps
from insplad_tools.dataset.pipeline import BuildOptions, build_dataset
from insplad_tools.cli import main
from insplad_tools.fsutil import sha256_file
from tests.test_build_splits import FakeMaskSource, frame_pixels, make_raw


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = make_raw(tmp_path_factory.mktemp("vraw"))
    out = tmp_path_factory.mktemp("vbuilt") / "data"
    build_dataset(raw, out, BuildOptions(group_by="tower", mask_source=FakeMaskSource(), progress=False))
    return out


@pytest.fixture()
def data(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    return copy


def validate(root: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["validate", str(root), "-q"])
    return result.exit_code, result.output.splitlines()


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def save_manifest(root: Path, doc: dict) -> None:
    (root / "manifest.json").write_text(dumps(doc))


def first(root: Path, split: str, defect: str = "good", category: str = "glass_insulator") -> dict:
    return next(e for e in manifest(root)["files"]
                if e["split"] == split and e["defect"] == defect and e["category"] == category)


def test_clean_dataset_passes(data: Path) -> None:
    code, lines = validate(data)
    assert code == 0 and len(lines) == 1
    assert lines[0].startswith("OK insplad-seg:") and "3 masks" in lines[0]


def test_changed_missing_and_extra_files(data: Path) -> None:
    train = first(data, "train")
    img = np.asarray(Image.open(data / train["path"])).copy()
    img[0, 0] ^= 0xFF
    Image.fromarray(img).save(data / train["path"])
    test_good = first(data, "test")
    (data / test_good["path"]).unlink()
    extra = data / "glass_insulator" / "test" / "good" / "stray.png"
    Image.fromarray(frame_pixels("stray", 20, 20)).save(extra)
    code, lines = validate(data)
    assert code == 1
    assert any(line.startswith(f"{train['path']}: changed (sha256") for line in lines), lines
    assert f"{test_good['path']}: missing (listed in manifest.json)" in lines
    assert "glass_insulator/test/good/stray.png: extra file (not in manifest.json)" in lines
    assert lines[-1].endswith("problem(s) found against manifest.json")


def test_leaked_group_by_moved_file(data: Path) -> None:
    train = first(data, "train")
    moved = train["path"].replace("/train/", "/test/")
    shutil.move(data / train["path"], data / moved)
    code, lines = validate(data)
    assert code == 1
    assert f"{train['path']}: moved to {moved}" in lines
    assert any(line.startswith(f"glass_insulator: group {train['group']!r} leaks") for line in lines), lines


def test_leaked_group_in_manifest(data: Path) -> None:
    doc = manifest(data)
    train_group = first(data, "train")["group"]
    victim = next(e for e in doc["files"] if e["split"] == "test" and e["defect"] == "good"
                  and e["category"] == "glass_insulator")
    victim["group"] = train_group
    save_manifest(data, doc)
    code, lines = validate(data)
    assert code == 1 and len(lines) == 2, lines
    assert lines[0].startswith(f"glass_insulator: group {train_group!r} leaks: ")


def test_cross_split_pixel_duplicate(data: Path) -> None:
    doc = manifest(data)
    train = next(e for e in doc["files"] if e["split"] == "train" and e["category"] == "glass_insulator")
    victim = next(e for e in doc["files"] if e["split"] == "test" and e["defect"] == "good"
                  and e["category"] == "glass_insulator")
    shutil.copyfile(data / train["path"], data / victim["path"])
    victim["sha256"] = sha256_file(data / victim["path"])  # a consistent manifest: only the duplicate is wrong
    save_manifest(data, doc)
    code, lines = validate(data)
    assert code == 1 and len(lines) == 2, lines
    assert lines[0] == f"glass_insulator: identical pixels in train and test: {train['path']} and {victim['path']}"


@pytest.mark.parametrize("damage", ["grey", "size", "empty", "deleted", "good"])
def test_bad_masks(data: Path, damage: str) -> None:
    doc = manifest(data)
    entry = next(e for e in doc["files"] if e["mask"] is not None)
    mask_path = data / entry["mask"]["path"]
    mask = np.asarray(Image.open(mask_path)).copy()
    if damage == "grey":
        mask[mask == 255] = 128
        expect = "mask is not binary"
    elif damage == "size":
        mask = np.pad(mask, ((0, 3), (0, 0)))
        expect = "mask is 48x63 but its image is 48x60"
    elif damage == "empty":
        mask[:] = 0
        expect = "mask of an anomalous image is empty"
    elif damage == "deleted":
        expect = "anomalous image without a mask"
    else:
        good = next(e for e in doc["files"] if e["defect"] == "good" and e["category"] == entry["category"])
        gt = data / entry["category"] / "ground_truth" / "good"
        gt.mkdir()
        Image.fromarray(mask).save(gt / Path(good["path"]).name.replace(".png", "_mask.png"))
        code, lines = validate(data)
        assert code == 1 and any("masks for normal images" in line for line in lines), lines
        return
    if damage == "deleted":
        mask_path.unlink()
    else:
        Image.fromarray(mask).save(mask_path)
    entry["mask"]["sha256"] = sha256_file(mask_path) if mask_path.exists() else entry["mask"]["sha256"]
    save_manifest(data, doc)
    code, lines = validate(data)
    assert code == 1
    assert any(expect in line and (entry["path"] in line or entry["mask"]["path"] in line) for line in lines), lines


def test_not_a_built_dataset(tmp_path: Path, toy_dataset: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(toy_dataset)])
    assert result.exit_code != 0 and "no manifest" in result.output
    (tmp_path / "manifest.json").write_text("{")
    result = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert result.exit_code != 0 and "unreadable manifest" in result.output
