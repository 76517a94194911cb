"""Reading Roboflow COCO-segmentation exports: quirks, zip safety, JSON errors, SDK download cache."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from annotations.archive import safe_extract
from annotations.coco_export import ExportAnnotation, open_export, original_name
from annotations.download import download_export, parse_spec
from annotations.masks import open_mask_source
from annotations.rasterize import decode_rle, rasterize_annotation, rasterize_polygons, resize_nearest
from insplad_tools.errors import InspladError

CATEGORIES = [
    {"id": 0, "name": "defects", "supercategory": "none"},
    {"id": 1, "name": "missing-cap", "supercategory": "defects"},
    {"id": 2, "name": "corrosion", "supercategory": "defects"},
    {"id": 3, "name": "bird-nest", "supercategory": "defects"},
]


# ----------------------------------------------------------------------- helpers shared by tests

def rf_name(original: str) -> str:
    """Roboflow's rewritten file name for ``original``."""
    stem, ext = original.rsplit(".", 1)
    digest = hashlib.md5(original.encode()).hexdigest()
    return f"{stem}_{ext}.rf.{digest}.{ext}"


def write_split(folder: Path, images: list[dict], annotations: list[dict], *, categories: list[dict] = CATEGORIES,
                pixels: dict[str, np.ndarray] | None = None) -> Path:
    """Write one Roboflow split folder: ``_annotations.coco.json`` plus the given image files."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"info": {"description": "test export"}, "licenses": [], "categories": categories,
           "images": images, "annotations": annotations}
    (folder / "_annotations.coco.json").write_text(json.dumps(doc, indent=1))
    for name, arr in (pixels or {}).items():
        Image.fromarray(arr).save(folder / name, quality=95)
    return folder


def image_entry(image_id: int, original: str, width: int, height: int, *, extra: bool = True, rename: bool = True) -> dict:
    entry = {"id": image_id, "license": 1, "file_name": rf_name(original) if rename else original,
             "height": height, "width": width, "date_captured": "2024-01-01T00:00:00+00:00"}
    if extra:
        entry["extra"] = {"name": original}
    return entry


def polygon_ann(ann_id: int, image_id: int, cat: int, flat: list[float], **more) -> dict:
    xs, ys = flat[0::2], flat[1::2]
    bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3],
            "segmentation": [flat], "iscrowd": 0, **more}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.astype(np.uint8).ravel(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


# ------------------------------------------------------------------------------------ names

def test_original_name_undoes_roboflow_rename() -> None:
    assert original_name(rf_name("flight01_tower003_002.jpg")) == "flight01_tower003_002.jpg"
    assert original_name("crop_7_png.rf.0123456789abcdef0123456789abcdef.png") == "crop_7.png"
    assert original_name("anything.jpg", "sub/dir/real name.JPG") == "real name.JPG"
    assert original_name("plain.png") == "plain.png"


# ----------------------------------------------------------------------------------- reading

def _export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    frame = np.zeros((60, 80, 3), np.uint8)
    write_split(root / "train", [image_entry(1, "a.jpg", 80, 60), image_entry(2, "b.jpg", 80, 60, extra=False)],
                [polygon_ann(10, 1, 1, [10, 10, 30, 10, 30, 30, 10, 30])],
                pixels={rf_name("a.jpg"): frame, rf_name("b.jpg"): frame})
    write_split(root / "valid", [image_entry(1, "c.jpg", 80, 60)], [])
    return root


def test_folder_export_reads_quirks(tmp_path: Path) -> None:
    export = open_export(_export(tmp_path))
    assert [f.rel for f in export.files] == ["train/_annotations.coco.json", "valid/_annotations.coco.json"]
    cats = export.files[0].categories
    assert cats[0].is_workspace_entry and not cats[1].is_workspace_entry
    names = {im.original_name: im for im in export.images()}
    assert set(names) == {"a.jpg", "b.jpg", "c.jpg"}
    assert names["b.jpg"].annotations == [] and names["c.jpg"].split == "valid"
    ann = names["a.jpg"].annotations[0]
    assert ann.category == "missing-cap" and ann.kind == "polygon" and ann.id == 10
    assert names["a.jpg"].path.is_file() and names["a.jpg"].rel == f"train/{rf_name('a.jpg')}"
    assert export.findings == []


def test_zip_export_matches_folder_and_is_cleaned_up(tmp_path: Path) -> None:
    root = _export(tmp_path)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, path.relative_to(root).as_posix())
    from_zip, from_dir = open_export(archive), open_export(root)
    assert [(i.original_name, i.split, len(i.annotations)) for i in from_zip.images()] == \
           [(i.original_name, i.split, len(i.annotations)) for i in from_dir.images()]
    extracted = from_zip.root
    assert extracted.is_dir()
    from_zip.close()
    assert not extracted.exists()


def test_malformed_json_names_file_line_and_column(tmp_path: Path) -> None:
    folder = tmp_path / "bad" / "train"
    folder.mkdir(parents=True)
    (folder / "_annotations.coco.json").write_text('{\n  "images": [],\n  "annotations": [,]\n}\n')
    with pytest.raises(InspladError) as err:
        open_export(tmp_path / "bad")
    msg = err.value.message
    assert "_annotations.coco.json" in msg and "line 3, column" in msg and "\n" not in msg
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(folder / "_annotations.coco.json", "train/_annotations.coco.json")
    with pytest.raises(InspladError, match=r"bad\.zip:train/_annotations\.coco\.json: malformed JSON at line 3"):
        open_export(archive)


def test_export_without_coco_json_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InspladError, match="no _annotations.coco.json"):
        open_export(tmp_path / "empty")


def test_records_reference_problems_instead_of_crashing(tmp_path: Path) -> None:
    write_split(tmp_path / "e", [image_entry(1, "a.jpg", 50, 50)],
                [polygon_ann(1, 1, 9, [1, 1, 9, 1, 9, 9]), polygon_ann(2, 7, 1, [1, 1, 9, 1, 9, 9]),
                 {"id": 3, "image_id": 1, "category_id": 1, "segmentation": "oops"}])
    codes = sorted(f.code for f in open_export(tmp_path / "e").findings)
    assert codes == ["bad-segmentation", "unknown-category-id", "unknown-image-id"]


# -------------------------------------------------------------------------------- zip safety

def _zip_with(path: Path, name: str, data: bytes = b"x", *, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train/_annotations.coco.json", "{}")
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = ((stat.S_IFLNK | 0o777) if symlink else (stat.S_IFREG | 0o644)) << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize("name,symlink", [("../escaped.txt", False), ("train/../../escaped.txt", False),
                                          ("/tmp/escaped.txt", False), ("..\\escaped.txt", False),
                                          ("C:/escaped.txt", False), ("train/link", True)])
def test_zip_slip_and_links_are_refused_and_nothing_is_written(tmp_path: Path, name: str, symlink: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _zip_with(tmp_path / "evil.zip", name, b"../../escaped.txt" if symlink else b"pwned", symlink=symlink)
    work = tmp_path / "work"
    work.mkdir()
    target = work / "out"
    with pytest.raises(InspladError, match="refusing"):
        safe_extract(archive, target)
    assert not target.exists()
    assert list(work.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/escaped.txt").exists()
    monkeypatch.setattr(tempfile, "tempdir", str(work))  # open_export's temporary folder lands in work/
    with pytest.raises(InspladError, match="refusing"):
        open_export(archive)
    assert list(work.iterdir()) == []  # and is removed again


def test_oversize_and_too_many_entries_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/_annotations.coco.json", "{}")
        zf.writestr("train/zeros.bin", b"\0" * 200_000)  # compresses to almost nothing
    assert archive.stat().st_size < 5_000
    with pytest.raises(InspladError, match="exceed the limit"):
        safe_extract(archive, tmp_path / "a", max_total_bytes=100_000)
    with pytest.raises(InspladError, match="entries exceed the limit"):
        safe_extract(archive, tmp_path / "b", max_entries=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    out = safe_extract(archive, tmp_path / "c")
    assert (out / "train" / "zeros.bin").stat().st_size == 200_000


def test_lying_size_header_is_caught_while_inflating(tmp_path: Path) -> None:
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("data.bin", b"A" * 5000)
    raw = bytearray(archive.read_bytes())
    # Shrink the declared uncompressed size (central directory, offset 24 after its signature) to 10.
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    with pytest.raises(InspladError, match="corrupt archive|inflates beyond"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- rasterisation

def test_rle_and_polygon_give_the_same_mask() -> None:
    poly = [12.0, 5.0, 40.5, 9.0, 33.0, 30.25, 8.0, 22.0]
    export_size, size = (50, 40), (100, 80)
    as_poly = ExportAnnotation(1, 1, 1, "corrosion", "polygon", [poly], None)
    rle = mask_utils.merge(mask_utils.frPyObjects([poly], 40, 50))
    compressed = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    exported_mask = mask_utils.decode(rle).astype(bool)
    as_rle = ExportAnnotation(2, 1, 1, "corrosion", "rle", [], compressed)
    as_list = ExportAnnotation(3, 1, 1, "corrosion", "rle", [], uncompressed_rle(exported_mask))
    assert np.array_equal(decode_rle(compressed), exported_mask)
    assert np.array_equal(decode_rle(uncompressed_rle(exported_mask)), exported_mask)
    at_export = [rasterize_annotation(a, export_size, export_size) for a in (as_poly, as_rle, as_list)]
    assert all(np.array_equal(at_export[0], m) for m in at_export[1:])
    # Mapped back to the original (2x) size: RLE is a pixel grid, so it matches the 2x block-upscaled grid.
    up_rle = rasterize_annotation(as_rle, export_size, size)
    assert np.array_equal(up_rle, np.kron(exported_mask, np.ones((2, 2), bool)))
    up_poly = rasterize_annotation(as_poly, export_size, size)
    iou = (up_rle & up_poly).sum() / (up_rle | up_poly).sum()
    assert iou > 0.93


@settings(max_examples=40, deadline=None)
@given(x0=st.integers(0, 60), y0=st.integers(0, 40), w=st.integers(1, 30), h=st.integers(1, 20),
       factor=st.sampled_from([1, 2, 4]))
def test_rectangles_map_back_pixel_exact(x0: int, y0: int, w: int, h: int, factor: int) -> None:
    """A box drawn on an export shrunk by ``factor`` covers exactly the original box's pixels."""
    size = (96, 64)
    export = (size[0] // factor, size[1] // factor)
    x1, y1 = x0 + w, y0 + h
    flat = [v / factor for v in (x0, y0, x1, y0, x1, y1, x0, y1)]
    ann = ExportAnnotation(1, 1, 1, "corrosion", "polygon", [flat], None)
    got = rasterize_annotation(ann, export, size)
    want = np.zeros((size[1], size[0]), bool)
    want[y0:y1, x0:x1] = True
    assert np.array_equal(got, want)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), k=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_resize_nearest_integer_upscale_is_block_repeat(h: int, w: int, k: int, seed: int) -> None:
    mask = np.random.default_rng(seed).random((h, w)) > 0.5
    assert np.array_equal(resize_nearest(mask, (w * k, h * k)), np.kron(mask, np.ones((k, k), bool)))


def test_degenerate_polygons_are_skipped_by_the_rasteriser() -> None:
    # A 4-number list would be taken for a bbox by pycocotools; it must be ignored instead.
    mask = rasterize_polygons([[1, 1, 5, 5], [1, 2, 3], [2, 2, 8, 2, 8, 8, 2, 8]], (10, 10))
    want = np.zeros((10, 10), bool)
    want[2:8, 2:8] = True
    assert np.array_equal(mask, want)


# ---------------------------------------------------------------------------- SDK download

class _FakeSDK:
    """Stands in for ``roboflow.Roboflow``: writes a tiny export where the SDK would download it."""

    calls: list[tuple] = []
    fail: Exception | None = None

    def __init__(self, api_key: str | None = None):
        self.api_key = api_key

    def workspace(self, ws: str):
        sdk = self

        class _Ws:
            def project(self, project: str):
                class _Proj:
                    def version(self, version: int):
                        class _Ver:
                            def download(self, model_format: str, location: str, overwrite: bool = False):
                                _FakeSDK.calls.append((sdk.api_key, ws, project, version, model_format))
                                if _FakeSDK.fail is not None:
                                    raise _FakeSDK.fail
                                write_split(Path(location) / "valid", [image_entry(1, "a.jpg", 20, 20)],
                                            [polygon_ann(1, 1, 2, [2, 2, 10, 2, 10, 10])])
                                return types.SimpleNamespace(location=location)
                        return _Ver()
                return _Proj()
        return _Ws()


@pytest.fixture
def fake_roboflow(monkeypatch: pytest.MonkeyPatch):
    module = types.ModuleType("roboflow")
    module.Roboflow = _FakeSDK  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "roboflow", module)
    _FakeSDK.calls, _FakeSDK.fail = [], None
    return _FakeSDK


def test_download_is_cached(tmp_path: Path, fake_roboflow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBOFLOW_API_KEY", "k3y")
    first = download_export("team/insplad-seg/2", cache_dir=tmp_path / "cache")
    assert first == tmp_path / "cache" / "team" / "insplad-seg" / "2"
    assert fake_roboflow.calls == [("k3y", "team", "insplad-seg", 2, "coco-segmentation")]
    monkeypatch.delenv("ROBOFLOW_API_KEY")  # the cache needs no key and no network
    again = download_export("team/insplad-seg/2", cache_dir=tmp_path / "cache")
    assert again == first and len(fake_roboflow.calls) == 1
    source = open_mask_source(roboflow="team/insplad-seg/2", cache_dir=tmp_path / "cache")
    assert [im.original_name for im in source.export.images()] == ["a.jpg"]
    assert [p.name for p in first.parent.iterdir()] == ["2"]  # no staging folders left behind


def test_download_without_key_or_network_is_one_clear_line(tmp_path: Path, fake_roboflow,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROBOFLOW_API_KEY", raising=False)
    with pytest.raises(InspladError, match="ROBOFLOW_API_KEY is not set") as err:
        download_export("team/proj/1", cache_dir=tmp_path)
    assert "\n" not in err.value.message and fake_roboflow.calls == []
    monkeypatch.setenv("ROBOFLOW_API_KEY", "k")
    fake_roboflow.fail = ConnectionError("Failed to resolve 'api.roboflow.com'\nlong traceback text")
    with pytest.raises(InspladError, match="download failed .ConnectionError: Failed to resolve") as err:
        download_export("team/proj/1", cache_dir=tmp_path)
    assert "\n" not in err.value.message
    assert not (tmp_path / "team" / "proj" / "1").exists()
    assert os.listdir(tmp_path / "team" / "proj") == []


def test_roboflow_spec_is_validated() -> None:
    assert parse_spec("ws/proj/3") == ("ws", "proj", 3)
    with pytest.raises(InspladError, match="WORKSPACE/PROJECT/VERSION"):
        parse_spec("ws/proj")
    with pytest.raises(InspladError, match="exactly one"):
        open_mask_source()
