"""Readers of detection annotations (Pascal VOC XML, COCO JSON) into one common per-frame record.

Both readers return ``(frames, problems)``: the frames they could read and one :class:`Problem` per
thing they had to skip (unreadable file, missing image, duplicate name, degenerate box, ...), so a
caller can report everything at once instead of stopping at the first bad file.

Boxes in the records are in frame pixels, 0-based, with exclusive ``x1, y1`` (VOC's 1-based
inclusive ``xmin..xmax`` becomes ``xmin - 1 .. xmax``; COCO's ``[x, y, w, h]`` becomes
``x .. x + w``). They stay floats here; the cropper rounds them outwards and clamps them.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from insplad_tools.errors import InspladError
from insplad_tools.jsonfile import load_json
from insplad_tools.safety import resolve_inside

FORMATS = ("auto", "voc", "coco", "insplad-det")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
COCO_FILE = Path("annotations") / "coco.json"
VOC_DIR = Path("annotations") / "voc"
IMAGES_DIR = Path("images")


@dataclass(frozen=True)
class Problem:
    """One skipped input: the file (relative to the raw folder), the object when there is one, and why."""

    file: str
    message: str
    obj: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: {self.obj}" if self.obj else self.file
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ObjectRecord:
    """One annotated object of a frame."""

    index: int                                  # position within its frame; names the crop
    raw_class: str
    condition: str | None                       # raw condition attribute, None when absent
    box: tuple[float, float, float, float]      # x0, y0, x1, y1: 0-based, x1/y1 exclusive
    annotation_id: str                          # COCO annotation id, or "<xml file>#<index>"
    source: str                                 # annotation file relative to the raw folder

    @property
    def label(self) -> str:
        """How problems name this object: ``object 3 (glass-insulator)``, with the COCO annotation id if any."""
        if "#" in self.annotation_id:
            return f"object {self.index} ({self.raw_class})"
        return f"object {self.index} (annotation {self.annotation_id}, {self.raw_class})"


@dataclass(frozen=True)
class FrameRecord:
    """One full frame and its objects."""

    name: str                                   # file name, e.g. flight01_tower002_003.jpg
    path: Path
    size: tuple[int, int] | None                # (W, H) the annotation declares, if any
    objects: tuple[ObjectRecord, ...]
    source: str                                 # annotation file relative to the raw folder

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def rel(self) -> str:
        """The frame as problems name it (``images/<name>``)."""
        return (IMAGES_DIR / self.name).as_posix()


def detect_format(raw_dir: Path) -> str:
    """``insplad-det`` when ``annotations/instances_*.json`` exist (the released InsPLAD-det), else ``coco``
    when ``annotations/coco.json`` exists, else ``voc`` when ``annotations/voc/*.xml`` do."""
    raw_dir = Path(raw_dir)
    from insplad_tools.dataset.det import is_insplad_det
    if is_insplad_det(raw_dir):
        return "insplad-det"
    if (raw_dir / COCO_FILE).is_file():
        return "coco"
    if (raw_dir / VOC_DIR).is_dir() and any((raw_dir / VOC_DIR).glob("*.xml")):
        return "voc"
    raise InspladError(f"{raw_dir}: no annotations found (expected {COCO_FILE.as_posix()} or "
                       f"{VOC_DIR.as_posix()}/*.xml; see `insplad synth --help` for the raw layout)")


def read_annotations(raw_dir: Path, fmt: str = "auto",
                     duplicates: str = "exclude") -> tuple[list[FrameRecord], list[Problem]]:
    """Read the raw folder's annotations; frames sorted by name, problems in file order.

    Raises :class:`InspladError` only when there is nothing to read at all (no such folder, no
    annotations); everything else becomes a :class:`Problem`.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise InspladError(f"{raw_dir}: raw data folder does not exist")
    if fmt not in FORMATS:
        raise InspladError(f"unknown annotation format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt == "auto":
        fmt = detect_format(raw_dir)
    if fmt == "insplad-det":
        from insplad_tools.dataset.det import read_insplad_det
        frames, problems = read_insplad_det(raw_dir, duplicates)
        frames, more = _drop_stem_collisions(frames)
        return sorted(frames, key=lambda f: f.name), problems + more
    images = _ImageIndex(raw_dir)
    if fmt == "coco":
        frames, problems = _read_coco(raw_dir, images)
    else:
        frames, problems = _read_voc(raw_dir, images)
    frames, more = _drop_stem_collisions(frames)
    return sorted(frames, key=lambda f: f.name), problems + more


class _ImageIndex:
    """Finds a frame's file under ``images/`` (or the raw folder itself) by name or by stem."""

    def __init__(self, raw_dir: Path, base: Path | None = None):
        self.raw_dir = raw_dir
        if base is None:
            base = raw_dir / IMAGES_DIR if (raw_dir / IMAGES_DIR).is_dir() else raw_dir
        self.base = base
        self.by_stem: dict[str, list[Path]] = defaultdict(list)
        for path in sorted(self.base.iterdir()) if self.base.is_dir() else []:
            if path.is_file() and path.suffix.lower() in FRAME_EXTENSIONS:
                self.by_stem[path.stem].append(path)

    def find(self, name: str | None, stem: str | None = None) -> Path | None:
        """The frame file named ``name`` (or, without a name, the one image of ``stem``); ``None`` when
        absent. :class:`InspladError` when the name or a symlink leads outside the raw folder."""
        if name:
            resolve_inside(self.base, name, "file_name")  # absolute, '..' or a link out: refused
            candidate = self.base / name
            if not candidate.is_file():
                candidate = self.base / PurePosixPath(name).name
            return self._checked(candidate) if candidate.is_file() else None
        if stem and len(self.by_stem.get(stem, [])) == 1:
            return self._checked(self.by_stem[stem][0])
        return None

    def _checked(self, path: Path) -> Path:
        resolve_inside(self.raw_dir, path.relative_to(self.raw_dir).as_posix(),
                       f"{path.relative_to(self.raw_dir).as_posix()} (a symbolic link)")
        return path

    def rel(self, name: str) -> str:
        return (self.base / name).relative_to(self.raw_dir).as_posix()


def _is_id(value: object, *, optional: bool = False) -> bool:
    """COCO ids are integers or strings (a list or object there is malformed, and unhashable)."""
    if value is None:
        return optional
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _box_problem(box: tuple[float, float, float, float]) -> str | None:
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        return f"box {list(box)} has non-finite coordinates"
    if x1 <= x0 or y1 <= y0:
        return f"box {_fmt_box(box)} has zero or negative area"
    return None


def _fmt_box(box: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


# ----------------------------------------------------------------------------------------- VOC

def _text(node: ET.Element | None, tag: str) -> str | None:
    if node is None:
        return None
    child = node.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _voc_condition(obj: ET.Element) -> str | None:
    for attr in obj.iter("attribute"):
        if (_text(attr, "name") or "").lower() == "condition":
            return _text(attr, "value")
    direct = _text(obj, "condition")
    return direct if direct else None


def _read_voc(raw_dir: Path, images: _ImageIndex) -> tuple[list[FrameRecord], list[Problem]]:
    problems: list[Problem] = []
    parsed: list[FrameRecord] = []
    xml_dir = raw_dir / VOC_DIR
    if not xml_dir.is_dir():
        raise InspladError(f"{xml_dir}: no VOC annotation folder")
    files = sorted(xml_dir.glob("*.xml"))
    if not files:
        raise InspladError(f"{xml_dir}: no .xml annotation files")
    for xml_path in files:
        src = xml_path.relative_to(raw_dir).as_posix()
        try:
            root = ET.parse(xml_path).getroot()
        except (ET.ParseError, OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(src, f"unreadable XML ({exc})"))
            continue
        if root.tag != "annotation":
            problems.append(Problem(src, f"not a Pascal VOC annotation (root element <{root.tag}>)"))
            continue
        filename = _text(root, "filename")
        try:
            path = images.find(filename, xml_path.stem)
        except InspladError as exc:
            problems.append(Problem(src, f"{exc.message}; frame skipped"))
            continue
        name = PurePosixPath(filename).name if filename else (path.name if path else f"{xml_path.stem}.*")
        if path is None:
            problems.append(Problem(src, f"image {images.rel(name)} not found; frame skipped"))
            continue
        size = None
        size_node = root.find("size")
        if size_node is not None:
            try:
                w, h = int(float(_text(size_node, "width") or 0)), int(float(_text(size_node, "height") or 0))
                size = (w, h) if w > 0 and h > 0 else None
            except ValueError:
                problems.append(Problem(src, "unreadable <size>; the image's own size is used"))
        objects = []
        for index, obj in enumerate(root.findall("object")):
            raw_class = _text(obj, "name") or ""
            label = f"object {index} ({raw_class or 'no name'})"
            if not raw_class:
                problems.append(Problem(src, "object without a <name>; skipped", label))
                continue
            bnd = obj.find("bndbox")
            try:
                xmin, ymin, xmax, ymax = (float(_text(bnd, t) or "nan") for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                problems.append(Problem(src, "unreadable <bndbox> coordinates; skipped", label))
                continue
            box = (xmin - 1.0, ymin - 1.0, xmax, ymax)
            if bnd is None or (why := _box_problem(box)):
                problems.append(Problem(src, f"{why or 'missing <bndbox>'}; skipped", label))
                continue
            objects.append(ObjectRecord(index, raw_class, _voc_condition(obj), box, f"{xml_path.name}#{index}", src))
        parsed.append(FrameRecord(name, path, size, tuple(objects), src))
    return _drop_duplicate_names(parsed, problems)


def _drop_duplicate_names(frames: list[FrameRecord], problems: list[Problem]) -> tuple[list[FrameRecord], list[Problem]]:
    counts = Counter(f.name for f in frames)
    kept = []
    sources: dict[str, list[str]] = defaultdict(list)
    for f in frames:
        sources[f.name].append(f.source)
    for f in frames:
        if counts[f.name] > 1:
            problems.append(Problem(f.source, f"duplicate frame name {f.name} (also annotated in "
                                              f"{', '.join(s for s in sources[f.name] if s != f.source) or f.source}); frame skipped"))
        else:
            kept.append(f)
    return kept, problems


def _drop_stem_collisions(frames: list[FrameRecord]) -> tuple[list[FrameRecord], list[Problem]]:
    """Crops are named after the frame stem, so two frames with one stem (a.jpg, a.png) cannot both go in."""
    stems = Counter(f.stem for f in frames)
    problems = [Problem(f.rel, f"duplicate frame name: another frame has the stem {f.stem!r}; frame skipped")
                for f in frames if stems[f.stem] > 1]
    return [f for f in frames if stems[f.stem] == 1], problems


# ---------------------------------------------------------------------------------------- COCO

def _read_coco(raw_dir: Path, images: _ImageIndex) -> tuple[list[FrameRecord], list[Problem]]:
    path = raw_dir / COCO_FILE
    src = COCO_FILE.as_posix()
    problems: list[Problem] = []
    try:
        data = load_json(path, src)
    except InspladError as exc:
        return [], [Problem(src, f"unreadable JSON ({exc.message.removeprefix(src + ': ')}); no frames read")]
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        return [], [Problem(src, "not a COCO detection file (needs lists 'images', 'annotations', 'categories'); no frames read")]
    return coco_frames(data, src, images)


def coco_frames(data: dict, src: str, images: _ImageIndex) -> tuple[list[FrameRecord], list[Problem]]:
    """Frames of a loaded COCO detection document whose images ``images`` finds; ``src`` names the file."""
    problems: list[Problem] = []
    cat_names: dict[object, str] = {}
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or not isinstance(cat.get("name"), str):
            problems.append(Problem(src, f"category entry {cat!r} lacks an id or name; skipped"))
        elif cat["id"] in cat_names:
            problems.append(Problem(src, f"duplicate category id {cat['id']} ({cat_names[cat['id']]!r} and {cat['name']!r}); "
                                         "annotations of that id skipped"))
            cat_names[cat["id"]] = ""
        else:
            cat_names[cat["id"]] = cat["name"]

    entries: dict[object, dict] = {}
    id_counts = Counter(img.get("id") for img in data["images"] if isinstance(img, dict) and _is_id(img.get("id")))
    name_counts = Counter(img.get("file_name") for img in data["images"]
                          if isinstance(img, dict) and isinstance(img.get("file_name"), str))
    for img in data["images"]:
        if not isinstance(img, dict) or not _is_id(img.get("id")) or not isinstance(img.get("file_name"), str):
            problems.append(Problem(src, f"image entry {str(img)[:80]} lacks an id or file_name; skipped"))
            continue
        fname = img["file_name"]
        if id_counts[img["id"]] > 1:
            problems.append(Problem(src, f"duplicate image id {img['id']} ({fname}); frame skipped"))
            continue
        if name_counts[fname] > 1:
            problems.append(Problem(src, f"duplicate frame name {fname} (image id {img['id']}); frame skipped"))
            continue
        entries[img["id"]] = img

    by_image: dict[object, list[dict]] = defaultdict(list)
    ann_counts = Counter(a.get("id") for a in data["annotations"] if isinstance(a, dict) and _is_id(a.get("id")))
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not _is_id(ann.get("image_id")):
            problems.append(Problem(src, f"annotation {str(ann)[:80]} lacks an image_id; skipped"))
            continue
        if not _is_id(ann.get("id"), optional=True) or not _is_id(ann.get("category_id"), optional=True):
            problems.append(Problem(src, "id and category_id must be integers or strings; skipped",
                                    f"annotation {str(ann.get('id'))[:40]}"))
            continue
        if ann_counts[ann.get("id")] > 1:
            problems.append(Problem(src, f"duplicate annotation id {ann.get('id')}; skipped", f"annotation {ann.get('id')}"))
            continue
        if ann["image_id"] not in entries:
            if id_counts.get(ann["image_id"], 0) == 0:
                problems.append(Problem(src, f"refers to unknown image id {ann['image_id']}; skipped", f"annotation {ann.get('id')}"))
            continue
        by_image[ann["image_id"]].append(ann)

    frames = []
    for image_id, img in entries.items():
        fname = img["file_name"]
        name = PurePosixPath(fname).name
        try:
            frame_path = images.find(fname)
        except InspladError as exc:
            problems.append(Problem(src, f"{exc.message}; frame skipped", f"image {image_id}"))
            continue
        if frame_path is None:
            problems.append(Problem(src, f"image {images.rel(name)} not found; frame skipped", f"image {image_id} ({fname})"))
            continue
        try:
            w, h = int(img.get("width") or 0), int(img.get("height") or 0)
        except (TypeError, ValueError, OverflowError):
            w = h = 0
        anns = by_image.get(image_id, [])
        if all(isinstance(a.get("id"), int) for a in anns):
            anns = sorted(anns, key=lambda a: a["id"])
        objects = []
        for index, ann in enumerate(anns):
            raw_class = cat_names.get(ann.get("category_id"), "")
            label = f"object {index} (annotation {ann.get('id')}, {raw_class or 'category ' + str(ann.get('category_id'))})"
            if not raw_class:
                problems.append(Problem(src, f"unknown category id {ann.get('category_id')}; skipped", label))
                continue
            bbox = ann.get("bbox")
            try:
                x, y, bw, bh = (float(v) for v in bbox)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                problems.append(Problem(src, f"unreadable bbox {bbox!r}; skipped", label))
                continue
            box = (x, y, x + bw, y + bh)
            if why := _box_problem(box):
                problems.append(Problem(src, f"{why}; skipped", label))
                continue
            attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
            condition = attrs.get("condition")
            objects.append(ObjectRecord(index, raw_class, None if condition is None else str(condition), box,
                                        str(ann.get("id")), src))
        frames.append(FrameRecord(name, frame_path, (w, h) if w > 0 and h > 0 else None, tuple(objects), src))
    return frames, problems
