"""`insplad build-splits`: layout, manifest determinism, parallel equality, image modes, bad input, masks."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from insplad_tools.dataset.pipeline import BuildOptions, build_dataset
from insplad_tools.dataset.sources import read_annotations
from insplad_tools.dataset.split import side_of
from insplad_tools.dataset.taxonomy import UnknownClassError, load_taxonomy
from insplad_tools.cli import main
from insplad_tools.errors import InspladError
from insplad_tools.mvtec import read_dataset
from insplad_tools.safety import OUTPUT_MARKER

FRAME_W, FRAME_H = 160, 120

# (class, condition, box x0, y0, x1, y1 in 0-based exclusive pixels)
Obj = tuple[str, str | None, tuple[int, int, int, int]]


def frame_pixels(name: str, w: int = FRAME_W, h: int = FRAME_H) -> np.ndarray:
    """Deterministic, distinct content per frame name (smooth, so JPEG keeps it recognisable)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy, phase = rng.uniform(0.02, 0.2, 3)
    base = np.stack([np.sin(xx * fx + phase * c) * np.cos(yy * fy + c) for c in range(3)], -1)
    return np.clip(128 + 100 * base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def default_frames(n_towers: int = 6, per_tower: int = 3) -> dict[str, list[Obj]]:
    """Frames flightFF_towerTTT_KKK.jpg with every InsPLAD-fault class, some defects and a distractor."""
    frames: dict[str, list[Obj]] = {}
    for t in range(n_towers):
        for k in range(per_tower):
            objs: list[Obj] = [
                ("glass-insulator", "missing-cap" if (t, k) in ((1, 0), (4, 2)) else "normal", (10, 10, 50, 60)),
                ("vari-grip", {(2, 1): "bird-nest", (3, 0): "rust"}.get((t, k)), (60, 20, 100, 70)),
                ("yoke-suspension", None, (100, 60, 150, 110)),
                ("damper", None, (5, 80, 40, 110)),
            ]
            frames[f"flight{t // 3:02d}_tower{t:03d}_{k:03d}.jpg"] = objs
    return frames


def make_raw(root: Path, frames: dict[str, list[Obj]] | None = None, *, fmt: str = "both",
             size: tuple[int, int] = (FRAME_W, FRAME_H)) -> Path:
    """Write RAW/images + annotations/voc/*.xml and/or annotations/coco.json like `insplad synth`."""
    frames = default_frames() if frames is None else frames
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in frames:
        Image.fromarray(frame_pixels(name, *size)).save(root / "images" / name, quality=95)
    if fmt in ("both", "voc"):
        write_voc(root, frames, size)
    if fmt in ("both", "coco"):
        write_coco(root, frames, size)
    return root


def voc_xml(name: str, objs: list[Obj], size: tuple[int, int]) -> str:
    parts = [f"<annotation><folder></folder><filename>{name}</filename>",
             f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for cls, cond, (x0, y0, x1, y1) in objs:
        attrs = (f"<attributes><attribute><name>condition</name><value>{cond}</value></attribute></attributes>"
                 if cond else "")
        parts.append(f"<object><name>{cls}</name><truncated>0</truncated><difficult>0</difficult>"
                     f"<bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
                     f"{attrs}</object>")
    return "".join(parts) + "</annotation>"


def write_voc(root: Path, frames: dict[str, list[Obj]], size: tuple[int, int]) -> None:
    (root / "annotations" / "voc").mkdir(parents=True, exist_ok=True)
    for name, objs in frames.items():
        (root / "annotations" / "voc" / f"{Path(name).stem}.xml").write_text(voc_xml(name, objs, size))


def write_coco(root: Path, frames: dict[str, list[Obj]], size: tuple[int, int]) -> None:
    classes = sorted({cls for objs in frames.values() for cls, _, _ in objs})
    cat_id = {c: i + 1 for i, c in enumerate(classes)}
    images, anns = [], []
    for image_id, (name, objs) in enumerate(frames.items(), start=1):
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        for cls, cond, (x0, y0, x1, y1) in objs:
            ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": cat_id[cls],
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            if cond:
                ann["attributes"] = {"condition": cond}
            anns.append(ann)
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": i, "name": c, "supercategory": ""} for c, i in cat_id.items()]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "coco.json").write_text(json.dumps(doc))


def run_cli(*args: str) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def files_under(root: Path) -> dict[str, bytes]:
    """Every file's bytes, except the output marker (it records when and by which process it was written)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != OUTPUT_MARKER}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raw(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def built(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "data"
    result = run_cli("build-splits", raw, out, "--quiet", "--group-by", "tower")
    assert result.exit_code == 0, result.output
    return out


# ------------------------------------------------------------------------------------------ API

def test_taxonomy_builtin_and_aliases(tmp_path: Path) -> None:
    tax = load_taxonomy()
    assert set(tax.categories) == {"glass_insulator", "lightning_rod_suspension", "polymer_insulator_upper_shackle",
                                   "vari_grip", "yoke_suspension"}
    assert tax.category_of("Glass Insulator") == tax.category_of("glass_insulator") == "glass_insulator"
    assert tax.category_of("lightning rod suspension") == "lightning_rod_suspension"
    assert tax.category_of("damper") is None
    with pytest.raises(UnknownClassError):
        tax.category_of("pylon")
    assert tax.normalize_condition("rust") == "corrosion"
    assert tax.normalize_condition("missing cap") == tax.normalize_condition("missingcap") == "missing_cap"
    assert tax.normalize_condition("bird nest") == tax.normalize_condition("nest") == "bird_nest"
    assert tax.normalize_condition("flawless") is None and tax.normalize_condition(None) is None
    assert tax.defect_of("vari_grip", "nest") == "bird_nest"
    assert tax.defect_of("glass_insulator", "ok") == "good"
    with pytest.raises(InspladError, match="not a defect type of glass_insulator"):
        tax.defect_of("glass_insulator", "rust")
    with pytest.raises(InspladError, match="unknown condition"):
        tax.normalize_condition("melted")

    custom = tmp_path / "tax.json"
    custom.write_text(json.dumps({"name": "mine", "categories": {"discs": {"classes": ["insulator disc", "pylon"],
                                                                           "defects": ["crack"]}},
                                  "conditions": {"crack": ["cracked", "broken"]}, "ignore": ["glass-insulator"]}))
    mine = load_taxonomy(custom)
    assert mine.category_of("PYLON") == "discs" and mine.category_of("Insulator_Disc") == "discs"
    assert mine.defect_of("discs", "Broken") == "crack" and mine.category_of("glass insulator") is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"categories": {"a": {"classes": ["x"]}, "b": {"classes": ["X"]}}}))
    with pytest.raises(InspladError, match="bad.json: class name 'X' maps to both a and b"):
        load_taxonomy(bad)


def test_voc_and_coco_readers_agree(raw: Path) -> None:
    voc, voc_problems = read_annotations(raw, "voc")
    coco, coco_problems = read_annotations(raw, "coco")
    assert not voc_problems and not coco_problems
    assert [f.name for f in voc] == [f.name for f in coco] == sorted(default_frames())
    for a, b in zip(voc, coco):
        assert a.size == b.size == (FRAME_W, FRAME_H)
        assert [(o.index, o.raw_class, o.condition, o.box) for o in a.objects] == \
               [(o.index, o.raw_class, o.condition, o.box) for o in b.objects]
    first = voc[0].objects[0]
    assert first.box == (10.0, 10.0, 50.0, 60.0) and first.raw_class == "glass-insulator"


# ------------------------------------------------------------------------------------- building

def test_layout_counts_and_stats(raw: Path, built: Path) -> None:
    data = read_dataset(built)
    assert sorted(data) == ["glass_insulator", "vari_grip", "yoke_suspension"]  # damper ignored
    glass, vari = data["glass_insulator"], data["vari_grip"]
    assert glass.defects == ["missing_cap"] and vari.defects == ["bird_nest", "corrosion"]
    assert glass.counts()["test_anomalous"] == 2
    assert sum(len(c.train) + len(c.test) for c in data.values()) == 18 * 3
    # every crop is RGB and padded by 10% of its 40x50 box, clamped to the 160x120 frame
    img = Image.open(built / glass.train[0].rel)
    assert img.mode == "RGB" and img.size == (48, 60)
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["name"] == "insplad-fault" and manifest["arguments"]["group_by"] == "tower"
    entry = next(e for e in manifest["files"] if e["path"] == glass.train[0].rel)
    assert entry["box"] == [10, 10, 50, 60] and entry["crop_box"] == [6, 5, 54, 65]
    assert entry["frame"].startswith("flight") and entry["group"].startswith("tower")
    assert str(raw) not in (built / "manifest.json").read_text()
    csv_lines = (built / "stats.csv").read_text().splitlines()
    assert csv_lines[0] == "category,train_flawless,test_flawless,test_anomalous,test_bird_nest,test_corrosion,test_missing_cap"
    vari_row = next(line for line in csv_lines if line.startswith("vari_grip,")).split(",")
    assert vari_row[3:6] == ["2", "1", "1"] and vari_row[6] == ""
    assert "| Vari-grip |" in (built / "stats.md").read_text() and "| 1/1 |" in (built / "stats.md").read_text()
    # tower groups: no tower on both sides of a category, anomalous towers entirely in test
    for cat in manifest["categories"]:
        sides: dict[str, set[str]] = {}
        for e in manifest["files"]:
            if e["category"] == cat:
                sides.setdefault(e["group"], set()).add(e["split"])
        assert all(len(s) == 1 for s in sides.values()), sides
    assert {e["group"] for e in manifest["files"] if e["defect"] == "missing_cap"} == {"tower001", "tower004"}


def test_rebuild_is_byte_identical_and_jobs_do_not_matter(raw: Path, built: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert run_cli("build-splits", raw, again, "-q", "--group-by", "tower", "--jobs", "2").exit_code == 0
    assert files_under(again) == files_under(built)


def test_voc_and_coco_builds_are_identical_except_format(raw: Path, tmp_path: Path) -> None:
    for fmt in ("voc", "coco"):
        assert run_cli("build-splits", raw, tmp_path / fmt, "-q", "--format", fmt).exit_code == 0
    a, b = files_under(tmp_path / "voc"), files_under(tmp_path / "coco")
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a if k.endswith(".png"))
    ma, mb = json.loads(a["manifest.json"]), json.loads(b["manifest.json"])
    for doc in (ma, mb):
        doc["arguments"].pop("format")
        for e in doc["files"]:
            e.pop("annotation_id"), e.pop("annotation_file")
    assert ma == mb


def test_existing_output_needs_overwrite(raw: Path, built: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = CliRunner().invoke(main, ["build-splits", str(raw), str(out), "-q"])
    assert result.exit_code != 0 and "--overwrite" in result.output and (out / "keep.txt").exists()
    result = CliRunner().invoke(main, ["build-splits", str(raw), str(out), "-q", "--overwrite"])
    assert result.exit_code == 1 and "not a folder written by insplad" in result.output and (out / "keep.txt").exists()
    (out / "keep.txt").unlink()
    assert CliRunner().invoke(main, ["build-splits", str(raw), str(out), "-q"]).exit_code == 0
    (out / "stats.md").write_text("stale")
    result = CliRunner().invoke(main, ["build-splits", str(raw), str(out), "-q", "--overwrite"])
    assert result.exit_code == 0 and (out / "stats.md").read_text() != "stale" and (out / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_min_size_and_pad_options(raw: Path, tmp_path: Path) -> None:
    result = run_cli("build-splits", raw, tmp_path / "o", "--min-size", "45", "--pad", "0", "--format", "voc", "-v")
    assert result.exit_code == 0
    # glass boxes are 40 px wide, vari-grip 40, yoke 50: only the yoke survives
    assert sorted(read_dataset(tmp_path / "o")) == ["yoke_suspension"]
    assert ("annotations/voc/flight00_tower000_000.xml: object 0 (glass-insulator): object is 40x50 px, "
            "below --min-size 45; skipped") in result.output.splitlines()
    assert "36 object(s) below --min-size" in result.output
    img = Image.open(next((tmp_path / "o" / "yoke_suspension" / "train" / "good").iterdir()))
    assert img.size == (50, 50)


def test_python_api_report(raw: Path, tmp_path: Path) -> None:
    report = build_dataset(raw, tmp_path / "api", BuildOptions(progress=False, seed=3, test_ratio=0.5))
    assert report.frames == 18 and not report.problems
    assert sum(report.total[k] for k in ("train_good", "test_good", "test_anomalous")) == 54
    assert "built insplad-fault" in report.summary()
    assert len(report.manifest_sha256) == 64


# ---------------------------------------------------------------------------------- image modes

def test_exif_grayscale_rgba_cmyk_16bit_frames_crop_to_rgb(tmp_path: Path) -> None:
    w, h = 80, 60
    box = (10, 5, 40, 45)
    frames = {f"{k}.png" if k in ("gray16", "rgba", "gray") else f"{k}.jpg": [("yoke-suspension", None, box)]
              for k in ("exif", "gray", "rgba", "cmyk", "gray16")}
    raw = make_raw(tmp_path / "raw", frames, fmt="coco", size=(w, h))
    base = frame_pixels("base", w, h)
    grey = base.mean(axis=2).astype(np.uint8)
    Image.fromarray(grey).save(raw / "images" / "gray.png")
    Image.fromarray(np.dstack([base, np.full((h, w), 128, np.uint8)])).save(raw / "images" / "rgba.png")
    Image.fromarray(base).convert("CMYK").save(raw / "images" / "cmyk.jpg", quality=100)
    Image.fromarray(grey.astype(np.uint16) * 257).save(raw / "images" / "gray16.png")
    # stored sideways (h x w as w x h) with EXIF orientation 6: viewers rotate 90 degrees clockwise
    stored = Image.fromarray(base).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(raw / "images" / "exif.jpg", exif=exif, quality=100)
    out = tmp_path / "out"
    report = build_dataset(raw, out, BuildOptions(pad=0.0, test_ratio=0.5, progress=False, min_size=4))
    assert not report.problems
    manifest = json.loads((out / "manifest.json").read_text())
    crops = {e["frame"].split(".")[0]: np.asarray(Image.open(out / e["path"])) for e in manifest["files"]}
    assert set(crops) == {"exif", "gray", "rgba", "cmyk", "gray16"}
    want = base[5:45, 10:40].astype(int)
    want_grey = grey[5:45, 10:40].astype(int)
    for k, arr in crops.items():
        assert arr.shape == (40, 30, 3) and arr.dtype == np.uint8, k
    assert np.abs(crops["exif"].astype(int) - want).mean() < 4
    assert np.abs(crops["cmyk"].astype(int) - want).mean() < 4
    assert np.array_equal(crops["rgba"], want.astype(np.uint8))
    for k in ("gray", "gray16"):
        assert np.array_equal(crops[k][..., 0], want_grey.astype(np.uint8)), k
        assert np.array_equal(crops[k][..., 0], crops[k][..., 2])


# ------------------------------------------------------------------------------------ bad input

def _bad(tmp_path: Path, fmt: str) -> Path:
    frames = {f"flight00_tower{t:03d}_000.jpg": [("glass-insulator", None, (10, 10, 50, 60))] for t in range(6)}
    return make_raw(tmp_path / f"raw-{fmt}", frames, fmt=fmt)


def _expect_problem(raw: Path, tmp_path: Path, *needles: str, fmt: str = "auto") -> None:
    """Default run skips and reports (naming file and object); --strict fails and writes nothing."""
    out = tmp_path / "out-default"
    result = CliRunner().invoke(main, ["build-splits", str(raw), str(out), "--format", fmt])
    assert result.exit_code == 0, result.output
    problem_lines = [line for line in result.output.splitlines() if all(n in line for n in needles)]
    assert problem_lines, result.output
    assert "problem(s) skipped" in result.output
    assert (out / "manifest.json").is_file()
    strict = tmp_path / "out-strict"
    result = CliRunner().invoke(main, ["build-splits", str(raw), str(strict), "--format", fmt, "--strict"])
    assert result.exit_code != 0
    assert any(all(n in line for n in needles) for line in result.output.splitlines()), result.output
    assert "nothing was written" in result.output
    assert not strict.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out-strict")]


def test_bad_corrupt_and_truncated_images(tmp_path: Path) -> None:
    raw = _bad(tmp_path, "voc")
    (raw / "images" / "flight00_tower000_000.jpg").write_bytes(b"this is not a jpeg")
    data = (raw / "images" / "flight00_tower001_000.jpg").read_bytes()
    (raw / "images" / "flight00_tower001_000.jpg").write_bytes(data[: len(data) // 2])
    _expect_problem(raw, tmp_path, "images/flight00_tower000_000.jpg", "cannot decode image")
    _expect_problem(raw, tmp_path / "t", "images/flight00_tower001_000.jpg", "cannot decode image")


def test_bad_missing_image(tmp_path: Path) -> None:
    raw = _bad(tmp_path, "coco")
    (raw / "images" / "flight00_tower002_000.jpg").unlink()
    _expect_problem(raw, tmp_path, "annotations/coco.json", "images/flight00_tower002_000.jpg", "not found")


def test_bad_boxes_outside_and_zero_area(tmp_path: Path) -> None:
    frames = {"flight00_tower000_000.jpg": [("glass-insulator", None, (10, 10, 50, 60)),
                                            ("glass-insulator", None, (300, 10, 340, 60))],
              "flight00_tower001_000.jpg": [("glass-insulator", None, (10, 10, 50, 60)),
                                            ("vari-grip", None, (30, 30, 30, 60))]}
    frames.update({f"flight00_tower{t:03d}_000.jpg": [("glass-insulator", None, (10, 10, 50, 60))] for t in range(2, 6)})
    raw = make_raw(tmp_path / "raw", frames, fmt="coco")
    _expect_problem(raw, tmp_path, "annotations/coco.json", "object 1", "outside the 160x120 frame")
    _expect_problem(raw, tmp_path / "z", "annotations/coco.json", "object 1", "vari-grip", "zero or negative area")


def test_bad_unknown_class_and_condition(tmp_path: Path) -> None:
    frames = {f"flight00_tower{t:03d}_000.jpg": [("glass-insulator", None, (10, 10, 50, 60))] for t in range(6)}
    frames["flight00_tower000_000.jpg"].append(("pylon", None, (60, 10, 100, 60)))
    frames["flight00_tower001_000.jpg"].append(("glass-insulator", "melted", (60, 10, 100, 60)))
    raw = make_raw(tmp_path / "raw", frames, fmt="voc")
    _expect_problem(raw, tmp_path, "annotations/voc/flight00_tower000_000.xml", "object 1 (pylon)", "unknown class")
    _expect_problem(raw, tmp_path / "c", "annotations/voc/flight00_tower001_000.xml", "object 1", "unknown condition 'melted'")


def test_bad_duplicate_names(tmp_path: Path) -> None:
    raw = _bad(tmp_path, "voc")
    xml = (raw / "annotations" / "voc" / "flight00_tower003_000.xml").read_text()
    (raw / "annotations" / "voc" / "copy.xml").write_text(xml)
    _expect_problem(raw, tmp_path, "annotations/voc/copy.xml", "duplicate frame name flight00_tower003_000.jpg")
    raw2 = _bad(tmp_path / "c", "coco")
    doc = json.loads((raw2 / "annotations" / "coco.json").read_text())
    doc["annotations"].append(dict(doc["annotations"][0]))
    (raw2 / "annotations" / "coco.json").write_text(json.dumps(doc))
    _expect_problem(raw2, tmp_path / "c", "annotations/coco.json", "annotation 1", "duplicate annotation id 1")


def test_bad_unreadable_xml_and_json(tmp_path: Path) -> None:
    raw = _bad(tmp_path, "voc")
    (raw / "annotations" / "voc" / "flight00_tower004_000.xml").write_text("<annotation><filename>")
    _expect_problem(raw, tmp_path, "annotations/voc/flight00_tower004_000.xml", "unreadable XML")
    raw2 = _bad(tmp_path / "j", "coco")
    (raw2 / "annotations" / "coco.json").write_text('{"images": [')
    result = CliRunner().invoke(main, ["build-splits", str(raw2), str(tmp_path / "j" / "o")])
    assert result.exit_code != 0
    assert "annotations/coco.json: unreadable JSON" in result.output and "nothing was written" in result.output
    assert not (tmp_path / "j" / "o").exists()


def test_missing_raw_dir_and_bad_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["build-splits", str(tmp_path / "nope"), str(tmp_path / "o")])
    assert result.exit_code != 0 and "raw data folder does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["build-splits", str(tmp_path / "empty"), str(tmp_path / "o")])
    assert result.exit_code != 0 and "no annotations found" in result.output
    result = CliRunner().invoke(main, ["build-splits", str(tmp_path / "empty"), str(tmp_path / "o"), "--test-ratio", "1.5"])
    assert result.exit_code != 0 and "--test-ratio 1.5" in result.output


# ----------------------------------------------------------------------------------- mask hook

class FakeMask:
    def __init__(self, mask: np.ndarray, ids: list[int]):
        self.mask, self.annotation_ids, self.source = mask, ids, "fake-export"


class FakeMaskSource:
    """Marks the object box inside the crop; no mask for vari-grip corrosion (to test the gap handling)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def mask_for_crop(self, *, frame_name, frame_size, object_box, crop_box, crop_pixels, crop_name):
        self.calls.append(dict(frame_name=frame_name, frame_size=frame_size, object_box=object_box,
                               crop_box=crop_box, crop_name=crop_name, shape=crop_pixels.shape))
        if frame_name == "flight01_tower003_000.jpg":
            return None
        mask = np.zeros(crop_pixels.shape[:2], np.uint8)
        ox0, oy0 = object_box[0] - crop_box[0], object_box[1] - crop_box[1]
        mask[oy0 + 5: oy0 + 15, ox0 + 5: ox0 + 15] = 255
        return FakeMask(mask, [len(self.calls)])


def test_mask_hook_writes_ground_truth_and_manifest(raw: Path, tmp_path: Path) -> None:
    source = FakeMaskSource()
    out = tmp_path / "seg"
    report = build_dataset(raw, out, BuildOptions(group_by="tower", mask_source=source, progress=False))
    assert len(source.calls) == 4  # the four anomalous crops, each asked once
    call = next(c for c in source.calls if c["frame_name"] == "flight00_tower001_000.jpg")
    assert call == dict(frame_name="flight00_tower001_000.jpg", frame_size=(160, 120), object_box=(10, 10, 50, 60),
                        crop_box=(6, 5, 54, 65), crop_name="flight00_tower001_000_000.png", shape=(60, 48, 3))
    assert report.name == "insplad-seg"
    assert any("no defect mask" in p and "flight01_tower003_000_001.png" in p for p in report.problems)
    data = read_dataset(out)
    # yoke_suspension has no anomalies at all, so no masks: left out of the -seg set
    assert sorted(data) == ["glass_insulator", "vari_grip"]
    assert data["vari_grip"].defects == ["bird_nest"] and data["glass_insulator"].counts()["masks"] == 2
    mask_path = out / "glass_insulator/ground_truth/missing_cap/flight00_tower001_000_000_mask.png"
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == (60, 48) and mask.max() == 255 and (mask == 255).sum() == 100
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(e for e in manifest["files"] if e["mask"] is not None)
    assert entry["mask"]["annotation_ids"] and entry["mask"]["source"] == "fake-export"
    assert len(entry["mask"]["sha256"]) == 64
    assert "masks" in (out / "stats.csv").read_text().splitlines()[0]
    result = run_cli("validate", out)
    assert result.exit_code == 0 and "OK insplad-seg" in result.output and "3 masks" in result.output


def test_identical_frames_never_straddle_the_split(tmp_path: Path) -> None:
    """The same photo filed under two names (two groups): its crops must not land in train and test."""
    frames = {f"flight00_tower{t:03d}_000.jpg": [("glass-insulator", None, (10, 10, 50, 60))] for t in range(10)}
    raw = make_raw(tmp_path / "raw", frames, fmt="coco")
    for t in range(1, 4):  # towers 0-3 show the very same picture
        (raw / "images" / f"flight00_tower{t:03d}_000.jpg").write_bytes((raw / "images" / "flight00_tower000_000.jpg").read_bytes())
    seed = next(s for s in range(100) if len({side_of(f"tower{t:03d}", s, 0.5) for t in range(4)}) == 2)
    result = run_cli("build-splits", raw, tmp_path / "out", "--group-by", "tower", "--test-ratio", "0.5", "--seed", seed)
    assert result.exit_code == 0
    dup_lines = [line for line in result.output.splitlines() if "has the same pixels as" in line]
    assert dup_lines and all("annotations/coco.json: object 0 (annotation" in line for line in dup_lines)
    assert run_cli("validate", tmp_path / "out").exit_code == 0


def test_group_regex_and_frame_without_group(tmp_path: Path) -> None:
    frames = {f"site{s}_{k:02d}.jpg": [("glass-insulator", None, (10, 10, 50, 60))] for s in "ABCDEFGH" for k in range(2)}
    frames["nosite.jpg"] = [("glass-insulator", None, (10, 10, 50, 60))]
    raw = make_raw(tmp_path / "raw", frames, fmt="voc")
    result = run_cli("build-splits", raw, tmp_path / "out", "--group-regex", r"^site(?P<group>[A-Z])_")
    assert result.exit_code == 0
    assert "images/nosite.jpg: no regex id in the file name" in result.output
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    groups = {e["frame"]: e["group"] for e in doc["files"]}
    assert groups["siteC_01.jpg"] == "C" and groups["nosite.jpg"] == "nosite"
    assert {e["split"] for e in doc["files"] if e["group"] == "C"} in ({"train"}, {"test"})


def test_size_mismatch_between_annotation_and_image(tmp_path: Path) -> None:
    raw = _bad(tmp_path, "voc")
    Image.fromarray(frame_pixels("small", 100, 80)).save(raw / "images" / "flight00_tower005_000.jpg")
    _expect_problem(raw, tmp_path, "images/flight00_tower005_000.jpg", "annotation says 160x120 but the (upright) image is 100x80")


def test_interrupted_build_leaves_nothing(raw: Path, tmp_path: Path) -> None:
    class Interrupting:
        def mask_for_crop(self, **kwargs):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset(raw, tmp_path / "out", BuildOptions(mask_source=Interrupting(), progress=False))
    assert list(tmp_path.iterdir()) == []


def test_custom_taxonomy_on_the_command_line(raw: Path, tmp_path: Path) -> None:
    tax = tmp_path / "dampers.json"
    tax.write_text(json.dumps({"name": "dampers", "categories": {"damper": {"classes": ["stockbridge"], "defects": []}},
                               "ignore": ["glass insulator", "vari grip", "yoke suspension"]}))
    result = run_cli("build-splits", raw, tmp_path / "out", "--taxonomy", tax, "--test-ratio", "0.5")
    assert result.exit_code == 0, result.output
    assert sorted(read_dataset(tmp_path / "out")) == ["damper"]
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert doc["arguments"]["taxonomy"]["name"] == "dampers" and doc["arguments"]["taxonomy"]["file"] == "dampers.json"
