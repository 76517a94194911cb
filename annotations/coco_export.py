"""Reading Roboflow "COCO Segmentation" exports (a folder or a .zip).

Layout: ``train/ valid/ test/`` (any of them, or none) each holding images and
``_annotations.coco.json``. Roboflow's quirks handled here:

- a first category (usually id 0) that is the workspace's *supercategory* entry, e.g.
  ``{"id": 0, "name": "defects", "supercategory": "none"}``; it names no defect;
- image files renamed ``<stem>_<ext>.rf.<hash>.<ext>``; the original name is recovered from
  ``extra.name`` when present, else from that pattern;
- images resized on export: polygons and RLE are in the exported resolution (``width``/``height``
  of the image entry), mapping back is done by :mod:`annotations.rasterize`;
- images with no annotations at all.

Problems that do not prevent reading (an annotation pointing at an unknown image, an unreadable
segmentation, duplicate ids) are recorded as :class:`~annotations.findings.Finding` objects on the
export for ``insplad annotations check``; problems that do (malformed JSON, missing top-level
lists) raise :class:`InspladError` naming the file.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from insplad_tools import jsonfile
from insplad_tools.errors import InspladError
from insplad_tools.safety import MAX_IMAGE_PIXELS, resolve_inside

from annotations.archive import safe_extract
from annotations.findings import ERROR, Finding

ANNOTATIONS_FILE = "_annotations.coco.json"
_RF_NAME = re.compile(r"^(?P<stem>.+)_(?P<ext>[A-Za-z0-9]{2,5})\.rf\.[0-9A-Za-z]{6,}\.[A-Za-z0-9]{2,5}$")
_NONE_SUPER = {"", "none", None}


def original_name(file_name: str, extra_name: str | None = None) -> str:
    """The image's name before Roboflow renamed it (``a_jpg.rf.<hash>.jpg`` -> ``a.jpg``)."""
    if extra_name:
        return PurePosixPath(str(extra_name).replace("\\", "/")).name
    base = PurePosixPath(file_name.replace("\\", "/")).name
    match = _RF_NAME.match(base)
    return f"{match['stem']}.{match['ext']}" if match else base


def load_json(path: Path, label: str | None = None) -> Any:
    """Parse a JSON file; every problem becomes one line naming the file (see insplad_tools.jsonfile)."""
    return jsonfile.load_json(path, label)


@dataclass
class ExportAnnotation:
    id: int | str
    image_id: int | str
    category_id: int | str | None
    category: str                       # category name ("" when the id is unknown)
    kind: str                           # "polygon", "rle", "empty" or "invalid"
    polygons: list[list[float]]         # flat [x0, y0, x1, y1, ...] lists, export resolution
    rle: dict | None                    # {"size": [h, w], "counts": str | list[int]}
    iscrowd: int = 0
    bbox: list[float] | None = None


@dataclass
class ExportImage:
    id: int | str
    file_name: str                      # as in the JSON (Roboflow's rewritten name)
    width: int                          # export resolution
    height: int
    original_name: str                  # name before Roboflow renamed it
    json_file: "ExportFile" = field(repr=False)
    annotations: list[ExportAnnotation] = field(default_factory=list, repr=False)

    @property
    def path(self) -> Path:
        """The image file: next to the JSON (Roboflow), else in an ``images/`` folder beside it."""
        here = self.json_file.path.parent / self.file_name
        if not here.is_file():
            beside = self.json_file.path.parent / "images" / self.file_name
            if beside.is_file():
                return beside
        return here

    @property
    def rel(self) -> str:
        """The image file relative to the export root (``train/x_jpg.rf.<hash>.jpg``)."""
        parent = PurePosixPath(self.json_file.rel).parent
        return str(parent / self.file_name) if str(parent) != "." else self.file_name

    @property
    def split(self) -> str:
        return self.json_file.split


@dataclass
class ExportCategory:
    id: int | str
    name: str
    supercategory: str | None
    is_workspace_entry: bool = False    # Roboflow's supercategory entry (names no defect)


@dataclass
class ExportFile:
    path: Path
    rel: str                            # relative to the export root, POSIX
    categories: dict[Any, ExportCategory]
    images: list[ExportImage] = field(repr=False)
    findings: list[Finding] = field(default_factory=list, repr=False)

    @property
    def split(self) -> str:
        parent = str(PurePosixPath(self.rel).parent)
        return "" if parent == "." else parent


@dataclass
class RoboflowExport:
    root: Path                          # folder holding the export (a temporary one for a zip)
    label: str                          # what the user named (folder, zip or Roboflow spec)
    files: list[ExportFile] = field(repr=False)
    _finalizer: Any = field(default=None, repr=False)

    def images(self) -> Iterator[ExportImage]:
        for f in self.files:
            yield from f.images

    @property
    def findings(self) -> list[Finding]:
        return [x for f in self.files for x in f.findings]

    def close(self) -> None:
        """Remove the temporary extraction folder of a zip export (no-op for folders)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "RoboflowExport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MAX_SIDE = 65_535            # pixels per image side an export may declare (pycocotools works in uint32)
MAX_PIXELS = MAX_IMAGE_PIXELS  # the decompression-bomb limit of every command
MAX_COORD = 1e7              # |polygon coordinate|: beyond it, C code overflows long before the data makes sense
MAX_POINTS = 200_000         # points per annotation


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _segmentation(raw: Any) -> tuple[str, list[list[float]], dict | None, str]:
    """(kind, polygons, rle, why-invalid) of a COCO ``segmentation`` value, bounded before any C code sees it."""
    if raw is None or raw == [] or raw == {}:
        return "empty", [], None, ""
    if isinstance(raw, dict):
        if "counts" in raw and isinstance(raw.get("size"), list) and len(raw["size"]) == 2:
            why = _rle_problem(raw)
            return ("invalid", [], None, why) if why else ("rle", [], raw, "")
        return "invalid", [], None, "segmentation is neither polygons nor RLE"
    if isinstance(raw, list):
        if raw and all(_number(v) for v in raw):  # a single flat polygon, as some tools write
            raw = [raw]
        if all(isinstance(p, list) and all(_number(v) for v in p) for p in raw):
            if sum(len(p) for p in raw) > 2 * MAX_POINTS:
                return "invalid", [], None, f"more than {MAX_POINTS} polygon points"
            if any(not abs(v) <= MAX_COORD for p in raw for v in p):  # also catches NaN
                return "invalid", [], None, f"polygon coordinates beyond +-{MAX_COORD:g}"
            polys = [list(map(float, p)) for p in raw if p]
            return ("polygon", polys, None, "") if polys else ("empty", [], None, "")
    return "invalid", [], None, "segmentation is neither polygons nor RLE"


def _rle_problem(rle: dict) -> str:
    """Why an RLE cannot be decoded safely ("" when it can): pycocotools writes past its buffer when the
    run lengths do not add up to height x width, so they are checked here first."""
    from annotations.rasterize import rle_counts

    h, w = rle["size"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in (h, w)):
        return f"RLE size {str(rle['size'])[:40]} is not two integers in 1..{MAX_SIDE}"
    counts = rle["counts"]
    if isinstance(counts, list):
        if len(counts) > h * w + 1 or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            return "RLE counts must be non-negative integers"
    elif isinstance(counts, str):
        if len(counts) > 8 * (h * w + 1):
            return "RLE counts string longer than the image"
        try:
            counts = rle_counts(counts)
        except ValueError as exc:
            return f"RLE counts string is corrupt ({exc})"
        if any(c < 0 for c in counts):
            return "RLE counts string decodes to negative run lengths"
    else:
        return "RLE counts must be a list of integers or a string"
    if sum(counts) != h * w:
        return f"RLE run lengths add up to {sum(counts)}, not {h}x{w} = {h * w}"
    return ""


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 < value <= MAX_SIDE:
        return value
    if isinstance(value, float) and value.is_integer() and 0 < value <= MAX_SIDE:
        return int(value)
    return None


def read_annotations_file(path: Path, rel: str, label: str) -> ExportFile:
    """Read one ``_annotations.coco.json``; ``label`` is how errors name it."""
    data = load_json(path, label)
    if not isinstance(data, dict):
        raise InspladError(f"{label}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise InspladError(f"{label}: '{key}' must be a list")
    if "images" not in data:
        raise InspladError(f"{label}: no 'images' list (not a COCO export)")
    out = ExportFile(path=Path(path), rel=rel, categories={}, images=[])

    raw_cats = data.get("categories", [])
    super_names = {str(c.get("supercategory")) for c in raw_cats if isinstance(c, dict)}
    for i, c in enumerate(raw_cats):
        if not isinstance(c, dict) or not _is_id(c.get("id")) or not isinstance(c.get("name"), (str, int)):
            raise InspladError(f"{label}: categories[{i}] needs an integer or string 'id' and a 'name'")
        if c["id"] in out.categories:
            out.findings.append(Finding(ERROR, "duplicate-id", rel, f"category id {c['id']} is used twice"))
        name = str(c["name"])
        workspace_entry = (name in super_names and c.get("supercategory") in _NONE_SUPER
                           and any(o.get("supercategory") == name and o is not c for o in raw_cats if isinstance(o, dict)))
        out.categories[c["id"]] = ExportCategory(c["id"], name, c.get("supercategory"), workspace_entry)

    by_id: dict[Any, ExportImage] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not _is_id(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise InspladError(f"{label}: images[{i}] needs an integer or string 'id' and a 'file_name'")
        resolve_inside(Path(path).parent, im["file_name"], f"{label}: images[{i}].file_name")
        width, height = _positive_int(im.get("width")), _positive_int(im.get("height"))
        if width is None or height is None or width * height > MAX_PIXELS:
            raise InspladError(f"{label}: images[{i}] ({im['file_name']}) needs integer width and height in 1..{MAX_SIDE} "
                               f"and at most {MAX_PIXELS:,} pixels")
        extra = im.get("extra") if isinstance(im.get("extra"), dict) else {}
        image = ExportImage(id=im["id"], file_name=im["file_name"], width=width, height=height,
                            original_name=original_name(im["file_name"], extra.get("name")), json_file=out)
        if image.id in by_id:
            out.findings.append(Finding(ERROR, "duplicate-id", rel, f"image id {image.id} is used twice",
                                        image=image.file_name))
            continue
        by_id[image.id] = image
        out.images.append(image)

    seen_ann: set = set()
    for i, a in enumerate(data.get("annotations", [])):
        if not isinstance(a, dict) or not _is_id(a.get("id")) or not _is_id(a.get("image_id")):
            raise InspladError(f"{label}: annotations[{i}] needs an integer or string 'id' and 'image_id'")
        if a.get("category_id") is not None and not _is_id(a.get("category_id")):
            raise InspladError(f"{label}: annotations[{i}].category_id must be an integer or a string")
        if a["id"] in seen_ann:
            out.findings.append(Finding(ERROR, "duplicate-id", rel, f"annotation id {a['id']} is used twice",
                                        annotation_id=a["id"]))
        seen_ann.add(a["id"])
        image = by_id.get(a["image_id"])
        if image is None:
            out.findings.append(Finding(ERROR, "unknown-image-id", rel,
                                        f"annotation refers to image id {a['image_id']} which is not in 'images'",
                                        annotation_id=a["id"]))
            continue
        cat = out.categories.get(a.get("category_id"))
        if cat is None:
            out.findings.append(Finding(ERROR, "unknown-category-id", rel,
                                        f"category id {a.get('category_id')} is not in 'categories'",
                                        image=image.file_name, annotation_id=a["id"]))
        kind, polys, rle, why = _segmentation(a.get("segmentation"))
        if kind == "invalid":
            out.findings.append(Finding(ERROR, "bad-segmentation", rel, why, image=image.file_name,
                                        annotation_id=a["id"]))
        bbox = a.get("bbox") if isinstance(a.get("bbox"), list) else None
        image.annotations.append(ExportAnnotation(
            id=a["id"], image_id=a["image_id"], category_id=a.get("category_id"),
            category=cat.name if cat else "", kind=kind, polygons=polys, rle=rle,
            iscrowd=int(bool(a.get("iscrowd", 0))), bbox=bbox))
    return out


def _find_json_files(root: Path) -> list[Path]:
    found = sorted(p for p in root.rglob(ANNOTATIONS_FILE) if p.is_file())
    if not found:
        found = sorted(p for p in root.rglob("*.coco.json") if p.is_file())
    return found


def open_export(export: Path, *, label: str | None = None) -> RoboflowExport:
    """Open a Roboflow COCO-segmentation export: a folder, a ``.zip`` of one, or a single JSON file.

    A zip is extracted (safely, see :mod:`annotations.archive`) into a temporary folder that is
    removed by :meth:`RoboflowExport.close` or when the object is garbage-collected.
    """
    export = Path(export)
    label = label or str(export)
    if not export.exists():
        raise InspladError(f"{export}: export not found")
    finalizer = None
    if export.is_file() and zipfile.is_zipfile(export):
        tmp = Path(tempfile.mkdtemp(prefix="insplad-export-"))
        try:
            root = safe_extract(export, tmp / "export")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        json_files = _find_json_files(root)
        holder = RoboflowExport(root=root, label=label, files=[])
        finalizer = weakref.finalize(holder, shutil.rmtree, tmp, True)
    elif export.is_file():
        if export.suffix.lower() != ".json":
            raise InspladError(f"{export}: expected an export folder, a .zip or a COCO .json file")
        root, json_files = export.parent, [export]
        holder = RoboflowExport(root=root, label=label, files=[])
    elif export.is_dir():
        root = export
        json_files = _find_json_files(root)
        holder = RoboflowExport(root=root, label=label, files=[])
    else:
        raise InspladError(f"{export}: not a file or folder")
    holder._finalizer = finalizer
    if not json_files:
        holder.close()
        raise InspladError(f"{label}: no {ANNOTATIONS_FILE} found (expected a Roboflow 'COCO Segmentation' export)")
    try:
        for path in json_files:
            rel = path.relative_to(root).as_posix()
            shown = f"{label}:{rel}" if finalizer is not None else str(path)
            holder.files.append(read_annotations_file(path, rel, shown))
    except BaseException:
        holder.close()
        raise
    return holder
