"""`insplad annotations check` findings, and the synth -> build-splits --masks -> validate round trip."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from annotations.geometry import as_points, polygon_area, self_intersects
from insplad_tools.cli import main
from insplad_tools.mvtec import read_dataset
from tests.test_roboflow_export import CATEGORIES, image_entry, polygon_ann, uncompressed_rle, write_split

QA_CATEGORIES = CATEGORIES + [{"id": 4, "name": "scratch", "supercategory": "defects"},
                              {"id": 5, "name": "good", "supercategory": "defects"}]
SQUARE = [10, 10, 30, 10, 30, 30, 10, 30]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def qa_export(root: Path) -> Path:
    """One export with every export-only finding in it (see the comments for the expected code)."""
    wrong_rle = uncompressed_rle(np.ones((10, 10), bool))  # 10x10, but the image is 100x80
    anns = [
        polygon_ann(1, 1, 1, SQUARE),                                   # fine
        polygon_ann(2, 1, 1, SQUARE),                                   # duplicate-annotation of 1
        polygon_ann(3, 1, 2, [20, 20, 40, 20, 40, 40, 20, 40]),         # overlapping-annotations (1 and 2)
        polygon_ann(4, 1, 2, [50, 50, 60, 60]),                         # degenerate: 2 points
        polygon_ann(5, 1, 2, [50, 50, 60, 50, 70, 50]),                 # degenerate: zero area
        polygon_ann(6, 1, 2, [50, 10, 70, 30, 70, 10, 50, 30]),         # self-intersecting (bow tie)
        polygon_ann(7, 1, 4, [80, 10, 95, 10, 95, 25]),                 # unknown-category "scratch"
        {**polygon_ann(8, 1, 2, SQUARE), "segmentation": []},           # empty-segmentation
        {**polygon_ann(9, 1, 2, SQUARE), "segmentation": wrong_rle},    # rle-size-mismatch
        polygon_ann(10, 1, 0, [60, 60, 70, 60, 70, 70]),                # supercategory-label
        polygon_ann(11, 1, 3, [85, 60, 130, 60, 130, 100]),             # outside-image
        polygon_ann(12, 1, 5, [5, 60, 15, 60, 15, 70]),                 # normal-category "good"
        polygon_ann(13, 1, 3, [40.1, 60.1, 40.3, 60.1, 40.3, 60.2]),    # empty-mask (covers no pixel centre)
    ]
    images = [image_entry(1, "a.jpg", 100, 80), image_entry(2, "b.jpg", 100, 80), image_entry(3, "c.jpg", 100, 80)]
    pixels = {images[0]["file_name"]: np.zeros((80, 100, 3), np.uint8),
              images[1]["file_name"]: np.zeros((80, 90, 3), np.uint8)}   # b: image-size-mismatch; c: missing-image
    write_split(root / "train", images, anns, categories=QA_CATEGORIES, pixels=pixels)
    return root


EXPECTED = {
    ("error", "degenerate-polygon", 4), ("error", "degenerate-polygon", 5), ("error", "self-intersecting", 6),
    ("error", "unknown-category", 7), ("error", "empty-segmentation", 8), ("error", "rle-size-mismatch", 9),
    ("error", "supercategory-label", 10), ("error", "image-size-mismatch", None),
    ("warning", "duplicate-annotation", 2), ("warning", "overlapping-annotations", 3),
    ("warning", "outside-image", 11), ("warning", "normal-category", 12), ("warning", "empty-mask", 13),
    ("error", "missing-image", None),
}


def test_every_export_finding_is_reported(tmp_path: Path) -> None:
    code, out = run("annotations", "check", qa_export(tmp_path / "qa"), "--json")
    assert code == 1
    report = json.loads(out)
    got = {(f["level"], f["code"], f["annotation_id"]) for f in report["findings"]}
    assert EXPECTED <= got
    assert {c for _, c, _ in got} == {c for _, c, _ in EXPECTED}
    assert not any(f["annotation_id"] in (1, 7, 10, 12) and f["code"] in ("degenerate-polygon", "self-intersecting")
                   for f in report["findings"])
    assert report["errors"] == sum(1 for f in report["findings"] if f["level"] == "error") > 0
    size = next(f for f in report["findings"] if f["code"] == "image-size-mismatch")
    assert "90x80" in size["message"] and size["image"].startswith("b_jpg.rf.")
    assert all(f["file"] == "train/_annotations.coco.json" for f in report["findings"])
    assert report["stats"]["images"] == 3 and report["stats"]["annotations"] == 13


def test_text_report_groups_findings_with_counts(tmp_path: Path) -> None:
    code, out = run("annotations", "check", qa_export(tmp_path / "qa"), "--max-lines", "1")
    assert code == 1
    assert "ERRORS (" in out and "WARNINGS (" in out and "FAILED:" in out
    assert "  degenerate-polygon (2)" in out
    assert "... and 1 more" in out
    line = next(ln for ln in out.splitlines() if "annotation 6:" in ln and "crosses" in ln)
    assert "train/_annotations.coco.json" in line and "a_jpg.rf." in line


def test_clean_export_passes_and_zip_works(tmp_path: Path) -> None:
    root = tmp_path / "clean"
    entries = [image_entry(1, "a.jpg", 100, 80), image_entry(2, "b.jpg", 100, 80)]
    write_split(root / "valid", entries,
                [polygon_ann(1, 1, 2, SQUARE), polygon_ann(2, 1, 3, [50, 50, 70, 50, 70, 70, 50, 70])],
                pixels={e["file_name"]: np.zeros((80, 100, 3), np.uint8) for e in entries})
    code, out = run("annotations", "check", root)
    assert code == 0 and "OK: 0 errors, 0 warning(s)" in out
    archive = shutil.make_archive(str(tmp_path / "clean"), "zip", root)
    code, out = run("annotations", "check", archive, "--json")
    assert code == 0 and json.loads(out)["errors"] == 0


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad" / "train").mkdir(parents=True)
    (tmp_path / "bad" / "train" / "_annotations.coco.json").write_text('{"images": [}')
    result = CliRunner().invoke(main, ["annotations", "check", str(tmp_path / "bad")])
    assert result.exit_code == 1 and "malformed JSON at line 1, column 13" in result.output
    result = CliRunner().invoke(main, ["annotations", "check"])
    assert result.exit_code == 2 and "exactly one" in result.output


# --------------------------------------------------------------------- synthetic raw data

@pytest.fixture(scope="module")
def synth_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from insplad_tools.synth.generate import SynthConfig, generate

    raw = tmp_path_factory.mktemp("synth") / "raw"
    generate(raw, SynthConfig(seed=1, frames=12, frame_size=(480, 360), defect_rate=0.4))
    return raw


@pytest.fixture(scope="module")
def built(synth_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "data"
    code, text = run("build-splits", synth_raw, out, "--masks", synth_raw / "roboflow")
    assert code == 0, text
    return out


def _fault_boxes(frame: dict) -> list[tuple[dict, list[int]]]:
    return [(o, o["box"]) for o in frame["objects"] if o["class"] != "damper"]


def test_raw_cross_check_finds_misplaced_and_missing_masks(synth_raw: Path, tmp_path: Path) -> None:
    code, out = run("annotations", "check", synth_raw / "roboflow", "--raw", synth_raw)
    assert code == 0, out
    truth = json.loads((synth_raw / "truth.json").read_text())
    export = tmp_path / "export"
    shutil.copytree(synth_raw / "roboflow", export)
    doc_path = export / "train" / "_annotations.coco.json"
    doc = json.loads(doc_path.read_text())
    frames = {f["file_name"]: f for f in truth["frames"]}
    # An image whose frame has a normal fault-class object and at least three defect annotations.
    image = next(im for im in doc["images"]
                 if any(o["condition"] == "normal" for o, _ in _fault_boxes(frames[im["extra"]["name"]]))
                 and sum(a["image_id"] == im["id"] for a in doc["annotations"]) >= 3)
    frame = frames[image["extra"]["name"]]
    s = image["width"] / frame["width"]
    anns = [a for a in doc["annotations"] if a["image_id"] == image["id"]]
    normal_box = next(b for o, b in _fault_boxes(frame) if o["condition"] == "normal")
    boxes = [b for _, b in _fault_boxes(frame)]
    free = next((x, y) for y in range(0, frame["height"] - 8, 4) for x in range(0, frame["width"] - 8, 4)
                if not any(b[0] - 8 <= x <= b[2] and b[1] - 8 <= y <= b[3] for b in boxes))

    def square(x: float, y: float, r: float = 3) -> list[list[float]]:
        return [[v * s for v in (x - r, y - r, x + r, y - r, x + r, y + r, x - r, y + r)]]

    cx, cy = (normal_box[0] + normal_box[2]) / 2, (normal_box[1] + normal_box[3]) / 2
    anns[0]["segmentation"] = square(cx, cy)                              # -> mask-on-normal
    anns[1]["segmentation"] = square(free[0] + 4, free[1] + 4)            # -> mask-outside-object
    anns[2]["category_id"] = 9                                            # -> unknown-category
    doc["categories"].append({"id": 9, "name": "scratch", "supercategory": "defects"})
    others = [a for a in doc["annotations"] if a["image_id"] != image["id"]]
    doc["annotations"].remove(others[0])                                  # -> anomalous-without-mask
    others[1]["category_id"] = 3 if others[1]["category_id"] != 3 else 2  # -> defect-mismatch
    doc_path.write_text(json.dumps(doc))
    code, out = run("annotations", "check", export, "--raw", synth_raw, "--json")
    assert code == 1
    report = json.loads(out)
    codes = [f["code"] for f in report["findings"]]
    assert codes.count("mask-on-normal") == 1 and codes.count("mask-outside-object") == 1
    assert codes.count("unknown-category") == 1 and codes.count("defect-mismatch") == 1
    # The two moved masks and the removed one leave three anomalous objects without a mask.
    assert codes.count("anomalous-without-mask") == 3
    on_normal = next(f for f in report["findings"] if f["code"] == "mask-on-normal")
    assert on_normal["annotation_id"] == anns[0]["id"] and on_normal["image"] == image["file_name"]


def test_end_to_end_masks_match_the_truth(synth_raw: Path, built: Path) -> None:
    """synth -> build-splits --masks: each anomalous crop's mask is the truth polygon cut by the crop box."""
    truth = json.loads((synth_raw / "truth.json").read_text())
    objects = {(f["file_name"], tuple(o["box"])): (f, o) for f in truth["frames"] for o in f["objects"]}
    manifest = {e["path"]: e for e in json.loads((built / "manifest.json").read_text())["files"]}
    dataset = read_dataset(built)
    n_masks = 0
    for cat in dataset.values():
        for sample in cat.test + cat.train:
            if sample.label == 0:
                assert sample.mask_rel is None and manifest[sample.rel]["mask"] is None
                continue
            assert sample.mask_rel == f"{cat.name}/ground_truth/{sample.defect}/{Path(sample.rel).stem}_mask.png"
            mask = np.asarray(Image.open(sample.mask_path))
            crop = Image.open(sample.path)
            assert mask.shape == (crop.height, crop.width) and set(np.unique(mask)) == {0, 255}
            entry = manifest[sample.rel]
            frame, obj = objects[(entry["frame"], tuple(entry["box"]))]
            full = np.zeros((frame["height"], frame["width"]), bool)
            for d in obj["defects"]:
                full |= mask_utils.decode(mask_utils.frPyObjects([d["polygon"]], frame["height"], frame["width"]))[:, :, 0] > 0
            x0, y0, x1, y1 = entry["crop_box"]
            want, got = full[y0:y1, x0:x1], mask > 0
            assert (want & got).sum() / (want | got).sum() > 0.9
            n_masks += 1
    assert n_masks == sum(1 for e in manifest.values() if e["defect"] != "good") > 0
    code, out = run("validate", built)
    assert code == 0, out
    code, out = run("annotations", "check", synth_raw / "roboflow", "--data", built)
    assert code == 0, out


def _crop_export(built: Path, root: Path, *, drop: int | None = None, on_normal: bool = False) -> Path:
    """A crop-drawn export made from the dataset's anomalous crops: 64x64 JPEGs, anonymous names, RLE masks."""
    images, anns, pixels = [], [], {}
    dataset = read_dataset(built)
    samples = [s for c in dataset.values() for s in c.test if s.label == 1]
    if on_normal:
        samples.append(next(s for c in dataset.values() for s in c.test if s.label == 0))
    for i, sample in enumerate(samples, start=1):
        entry = image_entry(i, f"upload_{i:03d}.jpg", 64, 64, extra=False)
        images.append(entry)
        pixels[entry["file_name"]] = np.asarray(Image.open(sample.path).convert("RGB").resize((64, 64), Image.BILINEAR))
        if i == drop:
            continue
        if sample.label == 1:
            mask = np.asarray(Image.open(sample.mask_path).resize((64, 64), Image.NEAREST)) > 0
        else:
            mask = np.zeros((64, 64), bool)
            mask[20:40, 20:40] = True
        anns.append({"id": i, "image_id": i, "category_id": 2, "iscrowd": 1, "segmentation": uncompressed_rle(mask),
                     "bbox": [0, 0, 64, 64], "area": int(mask.sum())})
    write_split(root / "test", images, anns, pixels=pixels)
    return root


def test_data_cross_check_of_a_crop_drawn_export(built: Path, tmp_path: Path) -> None:
    code, out = run("annotations", "check", _crop_export(built, tmp_path / "ok"), "--data", built, "--json")
    report = json.loads(out)
    assert code == 0, [f for f in report["findings"] if f["level"] == "error"]
    assert report["stats"]["data"]["anomalous_without_mask"] == 0
    code, out = run("annotations", "check", _crop_export(built, tmp_path / "bad", drop=2, on_normal=True),
                    "--data", built, "--json")
    assert code == 1
    codes = sorted(f["code"] for f in json.loads(out)["findings"] if f["level"] == "error")
    assert codes == ["anomalous-without-mask", "mask-on-normal"]


def test_data_cross_check_of_a_frame_export_via_the_manifest(synth_raw: Path, built: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(synth_raw / "roboflow", export)
    doc_path = export / "test" / "_annotations.coco.json"
    doc = json.loads(doc_path.read_text())
    assert doc["annotations"], "the synthetic test split should hold defect polygons"
    dropped = copy.deepcopy(doc["annotations"][0])
    doc["annotations"] = doc["annotations"][1:]
    doc_path.write_text(json.dumps(doc))
    code, out = run("annotations", "check", export, "--data", built, "--json")
    assert code == 1
    missing = [f for f in json.loads(out)["findings"] if f["code"] == "anomalous-without-mask"]
    frame = next(im for im in doc["images"] if im["id"] == dropped["image_id"])["extra"]["name"]
    assert len(missing) == 1 and Path(frame).stem in missing[0]["image"]


# ------------------------------------------------------------------ polygon validity properties


def _convex(angles: list[float], radius: float = 50.0) -> np.ndarray:
    a = np.sort(np.asarray(angles))
    return np.stack([100 + radius * np.cos(a), 100 + radius * np.sin(a)], axis=1)


@settings(max_examples=60, deadline=None)
@given(angles=st.lists(st.floats(0, 2 * np.pi, exclude_max=True), min_size=4, max_size=24, unique=True),
       k=st.integers(0, 100))
def test_convex_polygons_are_simple_and_swapping_two_neighbours_crosses(angles: list[float], k: int) -> None:
    pts = _convex(angles)
    if np.min(np.abs(np.diff(np.sort(angles)))) < 1e-3:
        return  # nearly coincident points: not a meaningful polygon
    assert not self_intersects(pts)
    i = k % len(pts)
    swapped = pts.copy()
    swapped[[i, (i + 1) % len(pts)]] = swapped[[(i + 1) % len(pts), i]]
    assert self_intersects(swapped)


@settings(max_examples=30, deadline=None)
@given(x0=st.integers(0, 50), y0=st.integers(0, 50), w=st.integers(1, 40), h=st.integers(1, 40))
def test_shoelace_area_of_boxes(x0: int, y0: int, w: int, h: int) -> None:
    pts = as_points([x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h, x0, y0])  # closing point is dropped
    assert len(pts) == 4 and polygon_area(pts) == w * h and not self_intersects(pts)


def test_data_cross_check_flags_masks_no_crop_claims(synth_raw: Path, built: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(synth_raw / "roboflow", export)
    doc_path = export / "valid" / "_annotations.coco.json"
    doc = json.loads(doc_path.read_text())
    image = doc["images"][0]
    s = image["width"] / 480
    # A small square in the frame's top-left corner (sky, no asset there in the synthetic scenes' boxes).
    truth = {f["file_name"]: f for f in json.loads((synth_raw / "truth.json").read_text())["frames"]}
    boxes = [o["box"] for o in truth[image["extra"]["name"]]["objects"]]
    x, y = next((x, y) for y in range(0, 350, 5) for x in range(0, 470, 5)
                if not any(b[0] - 10 <= x <= b[2] and b[1] - 10 <= y <= b[3] for b in boxes))
    doc["annotations"].append(polygon_ann(999, image["id"], 2, [v * s for v in (x, y, x + 6, y, x + 6, y + 6, x, y + 6)]))
    doc_path.write_text(json.dumps(doc))
    code, out = run("annotations", "check", export, "--data", built, "--json")
    report = json.loads(out)
    assert code == 0  # a warning: the object may just have been skipped by the build
    assert [(f["code"], f["annotation_id"]) for f in report["findings"]] == [("mask-unused", 999)]


class _CopyingSDK:
    """A fake ``roboflow.Roboflow`` whose download copies a local export (no network)."""

    source: Path
    downloads = 0

    def __init__(self, api_key: str | None = None):
        pass

    def workspace(self, ws: str):
        return self

    def project(self, name: str):
        return self

    def version(self, number: int):
        return self

    def download(self, model_format: str, location: str, overwrite: bool = False):
        assert model_format == "coco-segmentation"
        type(self).downloads += 1
        shutil.copytree(self.source, location)
        return type("Dataset", (), {"location": location})()


def test_build_splits_with_roboflow_download(synth_raw: Path, built: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    module = types.ModuleType("roboflow")
    module.Roboflow = _CopyingSDK  # type: ignore[attr-defined]
    _CopyingSDK.source, _CopyingSDK.downloads = synth_raw / "roboflow", 0
    monkeypatch.setitem(sys.modules, "roboflow", module)
    monkeypatch.setenv("ROBOFLOW_API_KEY", "test-key")
    out = tmp_path / "data"
    code, text = run("build-splits", synth_raw, out, "--roboflow", "team/insplad-seg/1", "--cache-dir", tmp_path / "cache")
    assert code == 0, text
    masks = sorted(p.relative_to(out) for p in out.rglob("*_mask.png"))
    assert masks == sorted(p.relative_to(built) for p in built.rglob("*_mask.png")) and masks
    code, text = run("annotations", "check", "--roboflow", "team/insplad-seg/1", "--cache-dir", tmp_path / "cache",
                     "--raw", synth_raw)
    assert code == 0, text
    assert _CopyingSDK.downloads == 1  # the second use found the cache
