"""Data-side fault suite: one row per kind of bad input, for build-splits, validate, synth,
annotations check and demo. Every row asserts the whole contract of :func:`harness.run_fault`:
exit code, one line naming the file/entry, no traceback, nothing changed outside OUT, no
partial OUT and nothing left beside it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import run_fault
from tests.faults.hostile import big_int_json, deep_json, edit_json, export_json, png_header, zip_with

COCO = "annotations/coco.json"
RF = "roboflow/train/_annotations.coco.json"


@dataclass
class Ctx:
    """The world of one case: ``tmp`` holds every input; ``out`` is where output may go."""

    tmp: Path
    _raw: Callable[[], Path]
    _data: Callable[[], Path]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def raw(self) -> Path:
        return self._raw()

    @property
    def data(self) -> Path:
        return self._data()

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def outside(self) -> Path:
        """A frame outside RAW that a hostile path may point at."""
        target = self.tmp / "outside" / "secret.jpg"
        target.parent.mkdir(exist_ok=True)
        first = sorted((self.raw / "images").iterdir())[0]
        shutil.copy(first, target)
        return target

    def export(self, doc: Any | str | bytes, *, images: dict[str, bytes] | None = None) -> Path:
        """A one-split export folder ``tmp/export/train`` holding ``doc`` and image files."""
        folder = self.tmp / "export" / "train"
        folder.mkdir(parents=True, exist_ok=True)
        data = doc if isinstance(doc, bytes) else (doc if isinstance(doc, str) else json.dumps(doc)).encode()
        (folder / "_annotations.coco.json").write_bytes(data)
        for name, content in (images or {}).items():
            (folder / name).write_bytes(content)
        return self.tmp / "export"


@dataclass
class Case:
    """args(ctx) -> command line; names: in the Error line; detail: in some single line."""

    args: Callable[[Ctx], list[Any]]
    names: tuple[str, ...] = ()
    detail: tuple[str, ...] = ()
    code: int = 1
    error_line: bool = True


def build(*extra: Any, out: str = "out") -> Callable[[Ctx], list[Any]]:
    return lambda c: ["build-splits", c.raw, c.tmp / out, "-q", *extra]


def strict(setup: Callable[[Ctx], None], *extra: Any) -> Callable[[Ctx], list[Any]]:
    """Damage RAW with ``setup``, then build with --strict (problems listed, nothing written)."""
    def args(c: Ctx) -> list[Any]:
        setup(c)
        return ["build-splits", c.raw, c.out, "--strict", *extra]
    return args


def coco(change: Callable[[Any], Any]) -> Callable[[Ctx], None]:
    return lambda c: edit_json(c.raw / COCO, change)


def coco_text(text: str | bytes) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        (c.raw / COCO).write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def first_image(key: str, value: Any) -> Callable[[Any], None]:
    return lambda d: d["images"][0].__setitem__(key, value)


def first_ann(key: str, value: Any) -> Callable[[Any], None]:
    return lambda d: d["annotations"][0].__setitem__(key, value)


def voc_first(text_from: str, text_to: str) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        xml = sorted((c.raw / "annotations" / "voc").glob("*.xml"))[0]
        xml.write_text(xml.read_text().replace(text_from, text_to, 1))
    return setup


def voc_raw(c: Ctx) -> None:
    """Keep only VOC annotations so that --format auto reads them."""
    (c.raw / COCO).unlink()


def frame_bytes(content: bytes) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        sorted((c.raw / "images").iterdir())[0].write_bytes(content)
    return setup


def escape_symlink(c: Ctx) -> None:
    target = c.outside()
    frame = sorted((c.raw / "images").iterdir())[0]
    frame.unlink()
    frame.symlink_to(target)


def taxonomy(text: str | bytes) -> Callable[[Ctx], list[Any]]:
    def args(c: Ctx) -> list[Any]:
        path = c.tmp / "tax.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["build-splits", c.raw, c.out, "-q", "--taxonomy", path]
    return args


def masks(make: Callable[[Ctx], Path]) -> Callable[[Ctx], list[Any]]:
    return lambda c: ["build-splits", c.raw, c.out, "-q", "--masks", make(c)]


def rf_edit(change: Callable[[Any], Any]) -> Callable[[Ctx], Path]:
    def make(c: Ctx) -> Path:
        export = Path(shutil.copytree(c.raw / "roboflow", c.tmp / "export"))
        edit_json(export / "train" / "_annotations.coco.json", change)
        return export
    return make


def foreign_export(c: Ctx) -> Path:
    """Another flight's export whose image names are those of RAW's frames."""
    from insplad_tools.synth.generate import SynthConfig, generate

    other = c.tmp / "other"
    generate(other, SynthConfig(seed=7, frames=10, frame_size=(320, 240), defect_rate=0.6, progress=False))
    return other / "roboflow"


def foreign_crop_export(c: Ctx) -> Path:
    """A crop-drawn export whose image has the name of an anomalous crop of RAW but other pixels."""
    import numpy as np
    from io import BytesIO

    from PIL import Image

    entry = next(e for e in json.loads((c.data / "manifest.json").read_text())["files"] if e["defect"] != "good")
    name, w, h = Path(entry["path"]).name, entry["width"], entry["height"]
    buf = BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    doc = export_json(w, h, [[1, 1, w - 2, 1, w - 2, h - 2, 1, h - 2]], file_name=name)
    return c.export(doc, images={name: buf.getvalue()})


def manifest(change: Callable[[Any], Any]) -> Callable[[Ctx], list[Any]]:
    def args(c: Ctx) -> list[Any]:
        edit_json(c.data / "manifest.json", change)
        return ["validate", c.data, "-q"]
    return args


def manifest_text(text: str | bytes) -> Callable[[Ctx], list[Any]]:
    def args(c: Ctx) -> list[Any]:
        (c.data / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["validate", c.data, "-q"]
    return args


def first_file(key: str, value: Any) -> Callable[[Any], None]:
    return lambda d: d["files"][0].__setitem__(key, value)


def check(doc: Any, *extra: Any, images: dict[str, bytes] | None = None) -> Callable[[Ctx], list[Any]]:
    return lambda c: ["annotations", "check", c.export(doc, images=images), *extra]


def a_jpg() -> dict[str, bytes]:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (100, 80), (90, 90, 90)).save(buf, "JPEG")
    return {"a.jpg": buf.getvalue()}


def polygon_points(n: int) -> list[list[float]]:
    import math

    return [[v for k in range(n) for v in (50 + 30 * math.cos(2 * math.pi * k / n), 40 + 30 * math.sin(2 * math.pi * k / n))]]


def _foreign_out(c: Ctx) -> list[Any]:
    (c.out).mkdir()
    (c.out / "holiday.jpg").write_bytes(b"family photos")
    return ["build-splits", c.raw, c.out, "-q", "--overwrite"]


def _foreign_manifest(c: Ctx) -> list[Any]:
    c.out.mkdir()
    (c.out / "manifest.json").write_text(json.dumps({"tool": {"name": "someone else"}}))
    return ["build-splits", c.raw, c.out, "-q", "--overwrite"]


def _failed_overwrite(c: Ctx) -> list[Any]:
    """OUT holds an earlier build; a --strict --overwrite rebuild fails: the earlier build must stay as it was."""
    shutil.copytree(c.data, c.out)
    frame_bytes(b"corrupt")(c)
    return ["build-splits", c.raw, c.out, "--strict", "--overwrite"]


def _nonempty(c: Ctx) -> list[Any]:
    c.out.mkdir()
    (c.out / "notes.txt").write_text("keep")
    return ["build-splits", c.raw, c.out, "-q"]


def _symlink_alias(c: Ctx) -> list[Any]:
    (c.tmp / "alias").symlink_to(c.raw)
    return ["build-splits", c.raw, c.tmp / "alias", "-q", "--overwrite"]


def _masks_is_out(c: Ctx) -> list[Any]:
    export = shutil.copytree(c.raw / "roboflow", c.tmp / "export")
    return ["build-splits", c.raw, export, "-q", "--overwrite", "--masks", export]


def _out_contains_masks(c: Ctx) -> list[Any]:
    export = shutil.copytree(c.raw / "roboflow", c.tmp / "exports" / "flight1")
    return ["build-splits", c.raw, c.tmp / "exports", "-q", "--overwrite", "--masks", export]


def _out_contains_taxonomy(c: Ctx) -> list[Any]:
    from insplad_tools.dataset.taxonomy import builtin_taxonomy_text

    (c.tmp / "cfg").mkdir()
    (c.tmp / "cfg" / "tax.json").write_text(builtin_taxonomy_text())
    return ["build-splits", c.raw, c.tmp / "cfg", "-q", "--overwrite", "--taxonomy", c.tmp / "cfg" / "tax.json"]


def _parent_is_file(c: Ctx) -> list[Any]:
    (c.tmp / "afile").write_text("x")
    return ["build-splits", c.raw, c.tmp / "afile" / "out", "-q"]


def _synth_foreign(c: Ctx) -> list[Any]:
    c.out.mkdir()
    (c.out / "thesis.tex").write_text("years of work")
    return ["synth", c.out, "--frames", "2", "--overwrite", "--quiet"]


def _synth_file(c: Ctx) -> list[Any]:
    (c.tmp / "afile").write_text("x")
    return ["synth", c.tmp / "afile" / "raw", "--frames", "2", "--quiet"]


def _demo_foreign(c: Ctx) -> list[Any]:
    c.out.mkdir()
    (c.out / "report.docx").write_bytes(b"keep me")
    return ["demo", "--quick", "--out", c.out]


def _demo_is_dataset(c: Ctx) -> list[Any]:
    return ["demo", "--quick", "--out", c.data]


def _raw_unmatched(c: Ctx) -> list[Any]:
    export = c.export(export_json(file_name="unrelated.jpg"), images={"unrelated.jpg": a_jpg()["a.jpg"]})
    return ["annotations", "check", export, "--raw", c.raw]


def _copied_json(c: Ctx) -> list[Any]:
    export = shutil.copytree(c.raw / "roboflow", c.tmp / "export")
    shutil.copy(export / "train" / "_annotations.coco.json", export / "test" / "_annotations.coco.json")
    return ["annotations", "check", export]


def _zip_export(entries: dict[str, bytes], symlink: str | None = None) -> Callable[[Ctx], Path]:
    return lambda c: zip_with(c.tmp / "export.zip", entries, symlink=symlink)


def _validate_symlink(c: Ctx) -> list[Any]:
    crop = next(p for p in sorted(c.data.rglob("*.png")) if "train" in p.parts)
    secret = c.tmp / "secret.png"
    shutil.copy(crop, secret)
    crop.unlink()
    crop.symlink_to(secret)
    return ["validate", c.data, "-q"]


def _validate_bomb(c: Ctx) -> list[Any]:
    crop = next(p for p in sorted(c.data.rglob("*.png")) if "train" in p.parts)
    crop.write_bytes(png_header(30000, 30000))
    return ["validate", c.data, "-q"]


def _validate_missing_manifest(c: Ctx) -> list[Any]:
    (c.data / "manifest.json").unlink()
    return ["validate", c.data, "-q"]


GOOD_JSON = export_json()

CASES: dict[str, Case] = {
    # -- 1. output overlapping input, --overwrite of foreign folders -------------------------------
    "out-is-raw": Case(lambda c: ["build-splits", c.raw, c.raw, "-q", "--overwrite"], ("is the input RAW",)),
    "out-inside-raw": Case(lambda c: ["build-splits", c.raw, c.raw / "data", "-q"], ("lies inside the input RAW",)),
    "out-contains-raw": Case(lambda c: ["build-splits", c.raw, c.tmp, "-q", "--overwrite"], ("contains the input RAW",)),
    "out-symlink-to-raw": Case(_symlink_alias, ("alias", "is the input RAW")),
    "out-is-masks-export": Case(_masks_is_out, ("is the input --masks",)),
    "out-contains-masks-export": Case(_out_contains_masks, ("contains the input --masks",)),
    "out-contains-taxonomy": Case(_out_contains_taxonomy, ("contains the input --taxonomy",)),
    "overwrite-foreign-folder": Case(_foreign_out, ("not a folder written by insplad",)),
    "overwrite-foreign-manifest": Case(_foreign_manifest, ("not a folder written by insplad",)),
    "overwrite-own-output-then-failure": Case(_failed_overwrite, ("--strict", "nothing was written"), ("images/", "cannot decode")),
    "out-nonempty-without-overwrite": Case(_nonempty, ("use --overwrite",)),
    "out-parent-is-a-file": Case(_parent_is_file, ("afile",)),
    "raw-missing": Case(lambda c: ["build-splits", c.tmp / "nope", c.out, "-q"], ("nope", "does not exist")),
    "raw-without-annotations": Case(lambda c: (shutil.rmtree(c.raw / "annotations"), build()(c))[1],
                                    ("no annotations found",)),
    # -- 3. paths chosen by a file we read ------------------------------------------------------------
    "coco-file-name-dotdot": Case(strict(lambda c: (c.outside(), coco(first_image("file_name", "../../outside/secret.jpg"))(c))),
                                  ("--strict",), (COCO, "image 1", "leads outside")),
    "coco-file-name-absolute": Case(strict(lambda c: coco(first_image("file_name", str(c.outside())))(c)),
                                    ("--strict",), (COCO, "image 1", "absolute path")),
    "frame-symlink-out-of-raw": Case(strict(escape_symlink, "--format", "coco"), ("--strict",),
                                     (COCO, "image 1", "leads outside")),
    "voc-filename-dotdot": Case(strict(lambda c: (voc_raw(c), c.outside(),
                                                  voc_first("<filename>flight", "<filename>../../outside/secret.jpg#")(c))),
                                ("--strict",), ("annotations/voc/", "leads outside")),
    # -- 5. JSON structure and types of the raw COCO file -----------------------------------------------
    "coco-image-id-list": Case(strict(coco(first_image("id", [1]))), ("--strict",), (COCO, "lacks an id")),
    "coco-category-id-object": Case(strict(coco(first_ann("category_id", {"a": 1}))), ("--strict",),
                                    (COCO, "annotation 1", "integers or strings")),
    "coco-annotation-id-list": Case(strict(coco(first_ann("id", [1, 2]))), ("--strict",), (COCO, "integers or strings")),
    "coco-image-id-of-annotation-list": Case(strict(coco(first_ann("image_id", [1]))), ("--strict",), (COCO, "lacks an image_id")),
    "coco-width-infinity": Case(strict(coco_text('{"images": [{"id": 1, "width": Infinity}], "annotations": [], "categories": []}')),
                                ("--strict",), (COCO, "Infinity")),
    "coco-nan-bbox": Case(strict(coco_text('{"images": [], "annotations": [{"bbox": [NaN, 0, 1, 1]}], "categories": []}')),
                          ("--strict",), (COCO, "NaN")),
    "coco-5000-digit-integer": Case(strict(coco_text(big_int_json())), ("--strict",), (COCO, "5000 digits")),
    "coco-deep-nesting": Case(strict(coco_text(deep_json())), ("--strict",), (COCO, "nested too deeply")),
    "coco-not-utf8": Case(strict(coco_text(b'{"images": ["\xff\xfe"]}')), ("--strict",), (COCO, "not UTF-8")),
    "coco-truncated": Case(strict(coco_text('{"images": [{"id": 1')), ("--strict",), (COCO, "malformed JSON")),
    "coco-top-level-list": Case(strict(coco_text("[1, 2, 3]")), ("--strict",), (COCO, "not a COCO detection file")),
    "coco-images-not-a-list": Case(strict(coco(lambda d: d.__setitem__("images", {"a": 1}))), ("--strict",),
                                   (COCO, "not a COCO detection file")),
    "coco-bbox-string": Case(strict(coco(first_ann("bbox", "10,10,5,5"))), ("--strict",), (COCO, "unreadable bbox")),
    "coco-bbox-huge": Case(strict(coco(first_ann("bbox", [1e308, 0, 1e308, 1]))), ("--strict",), (COCO, "non-finite")),
    "coco-bbox-negative-area": Case(strict(coco(first_ann("bbox", [10, 10, -5, 5]))), ("--strict",), (COCO, "zero or negative area")),
    "coco-width-huge-int": Case(strict(coco(first_image("width", 10 ** 25))), ("--strict",), ("images/", "annotation says")),
    "coco-duplicate-image-id": Case(strict(coco(lambda d: d["images"][1].__setitem__("id", d["images"][0]["id"]))),
                                    ("--strict",), (COCO, "duplicate image id")),
    "coco-unknown-image-id": Case(strict(coco(first_ann("image_id", 99999))), ("--strict",), (COCO, "unknown image id")),
    "coco-missing-frame": Case(strict(lambda c: sorted((c.raw / "images").iterdir())[0].unlink(), "--format", "coco"),
                               ("--strict",), (COCO, "not found")),
    "coco-unknown-class": Case(strict(coco(lambda d: d["categories"][0].__setitem__("name", "teapot"))), ("--strict",),
                               (COCO, "teapot")),
    # -- VOC ------------------------------------------------------------------------------------------
    "voc-malformed-xml": Case(strict(lambda c: (voc_raw(c), voc_first("</annotation>", "")(c))), ("--strict",),
                              ("annotations/voc/", "unreadable XML")),
    "voc-entity-expansion": Case(strict(lambda c: (voc_raw(c), voc_first(
        "<annotation>", '<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
        '<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">'
        '<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;"><!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">]>'
        '<annotation><pose>&h;</pose>')(c))), ("--strict",), ("annotations/voc/", "unreadable XML")),
    "voc-bndbox-not-numeric": Case(strict(lambda c: (voc_raw(c), voc_first("<xmin>", "<xmin>abc")(c))), ("--strict",),
                                   ("annotations/voc/", "bndbox")),
    "voc-root-not-annotation": Case(strict(lambda c: (voc_raw(c), sorted((c.raw / "annotations" / "voc").glob("*.xml"))[0]
                                                      .write_text("<html><object/></html>"))),
                                    ("--strict",), ("annotations/voc/", "not a Pascal VOC")),
    # -- images ---------------------------------------------------------------------------------------
    "frame-garbage-bytes": Case(strict(frame_bytes(b"this is not a jpeg")), ("--strict",), ("images/", "cannot decode")),
    "frame-truncated-jpeg": Case(strict(lambda c: frame_bytes(sorted((c.raw / "images").iterdir())[0].read_bytes()[:300])(c)),
                                 ("--strict",), ("images/", "cannot decode")),
    "frame-empty-file": Case(strict(frame_bytes(b"")), ("--strict",), ("images/", "cannot decode")),
    "frame-decompression-bomb": Case(strict(frame_bytes(png_header(30000, 30000))), ("--strict",), ("images/",)),
    # -- taxonomy -------------------------------------------------------------------------------------
    "taxonomy-malformed": Case(taxonomy('{"categories": '), ("tax.json", "malformed JSON")),
    "taxonomy-deep-nesting": Case(taxonomy(deep_json()), ("tax.json", "nested too deeply")),
    "taxonomy-not-utf8": Case(taxonomy(b"\xff\xfe{}"), ("tax.json", "not UTF-8")),
    "taxonomy-categories-list": Case(taxonomy('{"categories": ["a"]}'), ("tax.json", "categories")),
    "taxonomy-unknown-key": Case(taxonomy('{"categories": {"a": {"defects": []}}, "evil": 1}'), ("tax.json", "unknown key")),
    # -- --masks exports ------------------------------------------------------------------------------
    "masks-zip-slip": Case(masks(_zip_export({"../../evil.txt": b"x", "train/_annotations.coco.json": b"{}"})),
                           ("export.zip",)),
    "masks-zip-absolute-entry": Case(masks(_zip_export({"/tmp/evil.txt": b"x"})), ("export.zip",)),
    "masks-zip-symlink-entry": Case(masks(_zip_export({"train/_annotations.coco.json": b"{}"}, symlink="/etc/passwd")),
                                    ("export.zip",)),
    "masks-zip-not-a-zip": Case(masks(lambda c: (c.tmp / "export.zip").write_bytes(b"PK\x03\x04broken") and c.tmp / "export.zip"),
                                ("export.zip",)),
    "masks-file-name-escape": Case(masks(rf_edit(first_image("file_name", "../../images/x.jpg"))),
                                   ("_annotations.coco.json", "images[0].file_name", "leads outside")),
    "masks-image-200000-px": Case(masks(rf_edit(lambda d: d["images"][0].update(width=200000, height=200000))),
                                  ("_annotations.coco.json", "images[0]", "width and height")),
    "masks-image-id-list": Case(masks(rf_edit(first_image("id", [0]))), ("_annotations.coco.json", "images[0]")),
    "masks-category-id-list": Case(masks(rf_edit(first_ann("category_id", [1]))), ("_annotations.coco.json", "annotations[0]")),
    "masks-deep-nesting": Case(masks(lambda c: c.export(deep_json())), ("_annotations.coco.json", "nested too deeply")),
    "masks-not-utf8": Case(masks(lambda c: c.export(b"\xff\xfe\x00")), ("_annotations.coco.json", "not UTF-8")),
    "masks-no-json": Case(masks(lambda c: (c.tmp / "empty-export").mkdir() or c.tmp / "empty-export"),
                          ("empty-export", "_annotations.coco.json")),
    "masks-foreign-flight-same-names": Case(masks(foreign_export), ("shows other pixels", "never attached by name alone")),
    "masks-crop-name-other-pixels": Case(masks(foreign_crop_export), ("named like crop", "shows other pixels")),
    "masks-option-missing-path": Case(lambda c: ["build-splits", c.raw, c.out, "--masks", c.tmp / "nope"], ("nope",), code=2),
    # -- CLI values -----------------------------------------------------------------------------------
    "build-pad-negative": Case(build("--pad", "-1"), ("--pad",)),
    "build-pad-nan": Case(build("--pad", "nan"), ("--pad",)),
    "build-test-ratio-one": Case(build("--test-ratio", "1"), ("--test-ratio",)),
    "build-min-size-zero": Case(build("--min-size", "0"), ("--min-size",)),
    "build-jobs-zero": Case(build("--jobs", "0"), ("--jobs",)),
    "build-group-regex-invalid": Case(build("--group-regex", "(("), ("regex",)),
    "synth-frames-zero": Case(lambda c: ["synth", c.out, "--frames", "0"], ("--frames",)),
    "synth-jobs-negative": Case(lambda c: ["synth", c.out, "--jobs", "-1"], ("--jobs",), code=2),
    "synth-frame-size-garbage": Case(lambda c: ["synth", c.out, "--frame-size", "huge"], ("--frame-size",)),
    "synth-defect-rate-nan": Case(lambda c: ["synth", c.out, "--defect-rate", "nan"], ("--defect-rate",)),
    "synth-overwrite-foreign-folder": Case(_synth_foreign, ("not a folder written by insplad",)),
    "synth-parent-is-a-file": Case(_synth_file, ("afile",)),
    "annotations-max-lines-negative": Case(lambda c: ["annotations", "check", c.export(GOOD_JSON), "--max-lines", "-1"],
                                           ("--max-lines",), code=2),
    "demo-out-foreign-folder": Case(_demo_foreign, ("not an insplad demo folder",)),
    "demo-out-is-a-dataset": Case(_demo_is_dataset, ("not an insplad demo folder",)),
    # -- validate ------------------------------------------------------------------------------------
    "validate-folder-missing": Case(lambda c: ["validate", c.tmp / "nope"], ("nope", "does not exist")),
    "validate-manifest-missing": Case(_validate_missing_manifest, ("manifest.json", "no manifest")),
    "validate-manifest-malformed": Case(manifest_text('{"format": '), ("manifest.json", "malformed JSON")),
    "validate-manifest-deep": Case(manifest_text(deep_json()), ("manifest.json", "nested too deeply")),
    "validate-manifest-not-utf8": Case(manifest_text(b"\xff{}"), ("manifest.json", "not UTF-8")),
    "validate-manifest-big-int": Case(manifest_text('{"format": ' + "1" * 5000 + "}"), ("manifest.json", "5000 digits")),
    "validate-manifest-wrong-format": Case(manifest(lambda d: d.__setitem__("format", "other/9")), ("manifest.json", "other/9")),
    "validate-manifest-files-object": Case(manifest(lambda d: d.__setitem__("files", {"a": 1})), ("manifest.json", "'files'")),
    "validate-path-dotdot": Case(manifest(first_file("path", "../../outside.png")), ("files[0].path", "inside the dataset")),
    "validate-path-absolute": Case(manifest(first_file("path", "/etc/passwd")), ("files[0].path", "inside the dataset")),
    "validate-sha256-list": Case(manifest(first_file("sha256", ["a"])), ("files[0].sha256",)),
    "validate-group-object": Case(manifest(first_file("group", {"a": 1})), ("files[0].group",)),
    "validate-box-string": Case(manifest(first_file("box", "0,0,1,1")), ("files[0].box",)),
    "validate-frame-size-huge": Case(manifest(first_file("frame_size", [10 ** 20, 1])), ("files[0].frame_size",)),
    "check-data-manifest-frame-list": Case(lambda c: (edit_json(c.data / "manifest.json", first_file("frame", ["x"])),
                                                      ["annotations", "check", c.raw / "roboflow", "--data", c.data])[1],
                                           ("manifest.json", "files[0].frame")),
    "validate-mask-path-escape": Case(manifest(lambda d: next(f for f in d["files"] if f["mask"])["mask"].__setitem__(
        "path", "../x.png")), ("mask",)),
    "validate-symlink-in-dataset": Case(_validate_symlink, detail=("symbolic link",), error_line=False),
    "validate-decompression-bomb": Case(_validate_bomb, detail=("train/good", "DecompressionBombError"), error_line=False),
    # -- annotations check ---------------------------------------------------------------------------
    "check-file-name-escape": Case(check(export_json(file_name="../../secret.jpg")),
                                   ("_annotations.coco.json", "images[0].file_name", "leads outside")),
    "check-file-name-absolute": Case(check(export_json(file_name="/etc/passwd")), ("images[0].file_name", "absolute")),
    "check-image-200000-px": Case(check(export_json(200000, 200000)), ("images[0]", "width and height")),
    "check-width-infinity": Case(check('{"images": [{"id": 0, "file_name": "a.jpg", "width": Infinity}]}'),
                                 ("_annotations.coco.json", "Infinity")),
    "check-deep-nesting": Case(check(deep_json()), ("_annotations.coco.json", "nested too deeply")),
    "check-5000-digit-id": Case(check(big_int_json()), ("_annotations.coco.json", "5000 digits")),
    "check-not-utf8": Case(check(b"\xff\xfe"), ("_annotations.coco.json", "not UTF-8")),
    "check-image-id-list": Case(check({**GOOD_JSON, "images": [{**GOOD_JSON["images"][0], "id": [0]}]}), ("images[0]",)),
    "check-annotation-id-object": Case(check({**GOOD_JSON, "annotations": [{**GOOD_JSON["annotations"][0], "id": {}}]}),
                                       ("annotations[0]",)),
    "check-polygon-1e15": Case(check(export_json(segmentation=[[0, 0, 1e15, 0, 1e15, 1e15]]), images=a_jpg()),
                               detail=("annotation 1", "coordinates beyond"), error_line=False),
    "check-rle-negative-counts": Case(check(export_json(segmentation={"size": [80, 100], "counts": [-5, 8005]}), images=a_jpg()),
                                      detail=("annotation 1", "non-negative"), error_line=False),
    "check-rle-huge-counts": Case(check(export_json(segmentation={"size": [80, 100], "counts": [10 ** 9, 5]}), images=a_jpg()),
                                  detail=("annotation 1", "add up to"), error_line=False),
    "check-rle-string-overflow": Case(check(export_json(segmentation={"size": [80, 100], "counts": "ooooooooooo0"}), images=a_jpg()),
                                      detail=("annotation 1", "RLE"), error_line=False),
    "check-rle-size-huge": Case(check(export_json(segmentation={"size": [10 ** 6, 10 ** 6], "counts": "0"}), images=a_jpg()),
                                detail=("annotation 1", "RLE size"), error_line=False),
    "check-decompression-bomb-image": Case(check(GOOD_JSON, images={"a.jpg": png_header(30000, 30000)}),
                                           detail=("a.jpg", "decompression bomb"), error_line=False),
    "check-json-matches-no-image": Case(_copied_json, detail=("missing-image",), error_line=False),
    "check-raw-category-unmatched": Case(_raw_unmatched, detail=("category-unmatched",), error_line=False),
    "check-zip-slip": Case(lambda c: ["annotations", "check", zip_with(c.tmp / "e.zip", {"../x": b"1"})], ("e.zip",)),
    "check-zip-symlink": Case(lambda c: ["annotations", "check", zip_with(c.tmp / "e.zip", {"train/_annotations.coco.json": b"{}"},
                                                                          symlink="../../etc/passwd")], ("e.zip",)),
    "check-export-missing": Case(lambda c: ["annotations", "check", c.tmp / "nope"], ("nope",), code=2),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_fault(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    case = CASES[kind]
    ctx = Ctx(tmp_path, lambda: request.getfixturevalue("raw"), lambda: request.getfixturevalue("data"))
    args = case.args(ctx)
    run_fault(args, world=tmp_path, out=ctx.out, code=case.code, names=case.names, detail=case.detail,
              error_line=case.error_line)


def test_at_least_sixty_data_kinds() -> None:
    assert len(CASES) >= 60


def test_polygon_of_30000_points_is_checked_quickly(tmp_path: Path) -> None:
    """The self-intersection test is capped: a huge polygon is reported as too complex, not hung on."""
    import time

    ctx = Ctx(tmp_path, lambda: tmp_path, lambda: tmp_path)
    start = time.perf_counter()
    outcome = run_fault(check(export_json(segmentation=polygon_points(30000)), images=a_jpg())(ctx), world=tmp_path,
                        code=0, error_line=False, detail=("too-complex",))
    assert time.perf_counter() - start < 20 and "OK: 0 errors" in outcome.output


def test_foreign_export_says_so_once_and_checks_geometry(tmp_path: Path) -> None:
    doc = export_json(category="gunny_bag")
    doc["annotations"] += [{**doc["annotations"][0], "id": i, "segmentation": [[x, y, x + 5, y, x + 5, y + 5, x, y + 5]]}
                           for i, (x, y) in enumerate(((x, y) for x in range(45, 95, 7) for y in range(5, 75, 7)), 2)]
    doc["annotations"].append({**doc["annotations"][0], "id": 99, "segmentation": [[0, 0, 10, 10, 0, 10, 10, 0]]})
    ctx = Ctx(tmp_path, lambda: tmp_path, lambda: tmp_path)
    outcome = run_fault(check(doc, "--max-lines", "0", images=a_jpg())(ctx), world=tmp_path, code=1, error_line=False,
                        detail=("knows none of the export's categories", "--taxonomy"))
    assert outcome.output.count("knows none of the export's categories") == 1
    assert "unknown-category" not in outcome.output and "self-intersecting (1)" in outcome.output


def test_validate_warns_about_categories_that_cannot_be_evaluated(data: Path) -> None:
    from tests.faults.harness import run_cli

    for path in (data / "glass_insulator" / "test" / "good").iterdir():
        path.unlink()
    edit_json(data / "manifest.json", lambda d: d.__setitem__(
        "files", [f for f in d["files"] if not f["path"].startswith("glass_insulator/test/good/")]))
    outcome = run_cli(["validate", data, "-q"])
    assert outcome.exit_code == 0 and "warning: glass_insulator: an empty test/good" in outcome.output


def test_unreadable_output_parent_is_one_line(raw: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (the parent-is-a-file rows cover this class as root)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        run_fault(["build-splits", raw, locked / "out", "-q"], world=tmp_path, names=("locked",))
    finally:
        locked.chmod(0o700)


def test_out_that_is_the_current_folder_is_refused(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    run_fault(["build-splits", raw, ".", "-q"], world=tmp_path, names=("current folder",))
    assert here.is_dir() and Path.cwd() == here
