"""Object conditions from outside the annotation file (the released InsPLAD-det carries none).

A conditions file is CSV or JSON. Each row names one annotated object and its condition::

    image,annotation_id,condition              # keyed by frame file name + COCO annotation id
    284-1_DJI_0495.jpg,1187,rust
    image,x,y,width,height,condition           # or by frame + box (COCO x, y, w, h; 1 px tolerance)
    284-1_DJI_0495.jpg,812,403,96,210,good

JSON is a list of such objects (or ``{"conditions": [...]}``). Extra columns are ignored (the file
``insplad link-crops`` writes has a few). Every row is checked: the image must be among the frames
read, the id or box must name one of its objects, the condition must be known to the taxonomy and
allowed for the object's category, and two rows for one object must agree. Any failure is an
error naming the file and line; nothing is guessed.

Objects of a mapped category that end up without a condition follow ``missing``: ``error`` (stop
and list them), ``normal`` (a flawless object) or ``skip`` (leave it out, listed); ``auto`` is
``error`` when a conditions file is given, else ``normal`` (inside VOC/COCO annotations an absent
condition attribute has always meant a flawless object, see the taxonomy).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from insplad_tools.dataset.sources import FrameRecord, ObjectRecord, Problem
from insplad_tools.dataset.taxonomy import NORMAL, Taxonomy, UnknownClassError
from insplad_tools import jsonfile
from insplad_tools.errors import InspladError

MISSING_POLICIES = ("auto", "error", "normal", "skip")
IMAGE_KEYS = ("image", "file_name", "frame")
BOX_KEYS = ("x", "y", "width", "height")
BOX_TOLERANCE = 1.0
MAX_LISTED = 20


class ConditionsError(InspladError):
    """The conditions (or the objects left without one) are unusable; carries one line per problem."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class ConditionRow:
    """One row of a conditions file."""

    line: int
    image: str
    annotation_id: str | None
    box: tuple[float, float, float, float] | None   # COCO x, y, w, h
    condition: str


def _cell(row: dict, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = row.get(key)
        if value is not None and str(value).strip() != "":
            return str(value).strip()
    return None


def _row(raw: dict, line: int, where: str) -> ConditionRow:
    row = {str(k).strip().lower(): v for k, v in raw.items() if k is not None}
    image = _cell(row, IMAGE_KEYS)
    condition = _cell(row, ("condition",))
    if image is None:
        raise InspladError(f"{where} line {line}: no image name (column 'image')")
    if condition is None:
        raise InspladError(f"{where} line {line}: no condition (column 'condition')")
    ann = _cell(row, ("annotation_id",))
    box = None
    if ann is None:
        values = [_cell(row, (k,)) for k in BOX_KEYS]
        if any(v is None for v in values):
            raise InspladError(f"{where} line {line}: needs an 'annotation_id' or a box ('x', 'y', 'width', 'height')")
        try:
            box = tuple(float(v) for v in values)  # type: ignore[arg-type]
        except ValueError:
            raise InspladError(f"{where} line {line}: box {values} is not numeric") from None
        if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
            raise InspladError(f"{where} line {line}: box {values} is not a finite box of positive size")
    elif ann.endswith(".0") and ann[:-2].isdigit():
        ann = ann[:-2]           # 12.0 from a spreadsheet is annotation 12
    return ConditionRow(line, Path(image).name, ann, box, condition)  # type: ignore[arg-type]


def read_conditions(path: Path) -> list[ConditionRow]:
    """Parse a CSV or JSON conditions file; :class:`InspladError` naming the file and line when malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InspladError(f"{path}: cannot read conditions file ({exc})") from exc
    if path.suffix.lower() == ".json":
        data = jsonfile.loads(text, f"{path} (conditions file)")
        if isinstance(data, dict):
            data = data.get("conditions")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InspladError(f"{path}: a JSON conditions file must be a list of objects (or {{\"conditions\": [...]}})")
        rows = [_row(r, i + 1, f"{path} entry") for i, r in enumerate(data)]
    else:
        reader = csv.DictReader(io.StringIO(text))
        fields = {f.strip().lower() for f in reader.fieldnames or []}
        if not fields & set(IMAGE_KEYS) or "condition" not in fields:
            raise InspladError(f"{path}: a conditions CSV needs a header with 'image' and 'condition' "
                               f"(and 'annotation_id' or x, y, width, height); found {sorted(fields) or 'no header'}")
        rows = [_row(r, reader.line_num, str(path)) for r in reader]
    if not rows:
        raise InspladError(f"{path}: conditions file has no rows")
    return rows


def _find_object(frame: FrameRecord, row: ConditionRow) -> tuple[ObjectRecord | None, str]:
    if row.annotation_id is not None:
        hits = [o for o in frame.objects if o.annotation_id == row.annotation_id]
        return (hits[0], "") if hits else (None, f"annotation id {row.annotation_id} is not an object of {row.image}")
    x, y, w, h = row.box  # type: ignore[misc]
    want = (x, y, x + w, y + h)
    hits = [o for o in frame.objects if all(abs(a - b) <= BOX_TOLERANCE for a, b in zip(o.box, want))]
    if not hits:
        return None, f"no object of {row.image} has the box {x:g}, {y:g}, {w:g}, {h:g}"
    if len(hits) > 1:
        return None, f"box {x:g}, {y:g}, {w:g}, {h:g} fits {len(hits)} objects of {row.image}; key it by annotation_id"
    return hits[0], ""


def _raise(path: Path | str, errors: list[str], what: str) -> None:
    shown = errors[:MAX_LISTED]
    more = f" (and {len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
    raise ConditionsError(f"{path}: {len(errors)} {what}; first: {errors[0]}{more}", errors)


def apply_conditions(frames: list[FrameRecord], rows: list[ConditionRow], taxonomy: Taxonomy,
                     path: Path | str) -> list[FrameRecord]:
    """Frames with each named object's condition set from ``rows``; :class:`ConditionsError` on any bad row."""
    by_name = {f.name: f for f in frames}
    errors: list[str] = []
    chosen: dict[tuple[str, str], tuple[str, int, str]] = {}   # (frame, annotation id) -> (defect, line, raw)
    for row in rows:
        where = f"line {row.line}"
        frame = by_name.get(row.image)
        if frame is None:
            errors.append(f"{where}: image {row.image} is not among the frames read (missing, unreadable or "
                          "excluded as a duplicate name)")
            continue
        obj, why = _find_object(frame, row)
        if obj is None:
            errors.append(f"{where}: {why}")
            continue
        try:
            category = taxonomy.category_of(obj.raw_class)
        except UnknownClassError as exc:
            errors.append(f"{where}: {exc.message}")
            continue
        try:
            resolved = taxonomy.normalize_condition(row.condition) or NORMAL
            if category is None:
                if resolved != NORMAL:
                    errors.append(f"{where}: annotation {obj.annotation_id} of {row.image} is a {obj.raw_class!r}, "
                                  f"which taxonomy {taxonomy.name} ignores, yet has condition {row.condition!r}")
                continue
            taxonomy.defect_of(category, row.condition)
        except InspladError as exc:
            errors.append(f"{where}: {exc.message}")
            continue
        key = (frame.name, obj.annotation_id)
        if key in chosen and chosen[key][0] != resolved:
            other = chosen[key]
            errors.append(f"{where}: condition {row.condition!r} for annotation {obj.annotation_id} of {row.image} "
                          f"conflicts with {other[2]!r} on line {other[1]}")
            continue
        if obj.condition is not None and (taxonomy.normalize_condition(obj.condition) or NORMAL) != resolved:
            errors.append(f"{where}: condition {row.condition!r} for annotation {obj.annotation_id} of {row.image} "
                          f"conflicts with its attribute {obj.condition!r} in {obj.source}")
            continue
        chosen.setdefault(key, (resolved, row.line, row.condition))
    if errors:
        _raise(path, errors, "problem(s) in the conditions file")
    out = []
    for frame in frames:
        objects = tuple(dataclasses.replace(o, condition=chosen[(frame.name, o.annotation_id)][2])
                        if (frame.name, o.annotation_id) in chosen else o for o in frame.objects)
        out.append(dataclasses.replace(frame, objects=objects))
    return out


def resolve_missing(frames: list[FrameRecord], taxonomy: Taxonomy, policy: str,
                    labelled: bool) -> tuple[list[FrameRecord], list[Problem]]:
    """Apply the missing-condition ``policy`` to objects of mapped categories without a condition.

    Returns the frames and one :class:`Problem` per object left out (``skip``); raises
    :class:`ConditionsError` listing them for ``error``. Unknown classes are left for the planner.
    """
    if policy not in MISSING_POLICIES:
        raise InspladError(f"--missing-condition {policy!r}: choose from {', '.join(MISSING_POLICIES)}")
    if policy == "auto":
        policy = "error" if labelled else "normal"
    missing: dict[str, list[str]] = defaultdict(list)
    skipped: list[Problem] = []
    out = []
    for frame in frames:
        keep = []
        for obj in frame.objects:
            try:
                category = taxonomy.category_of(obj.raw_class)
            except UnknownClassError:
                category = None
                keep.append(obj)
                continue
            if category is None or obj.condition is not None:
                keep.append(obj)
                continue
            if policy == "error":
                missing[category].append(f"{frame.name}: {obj.label}")
            elif policy == "skip":
                skipped.append(Problem(obj.source, f"{frame.name}: no condition; skipped (--missing-condition skip)",
                                       obj.label))
            else:
                keep.append(dataclasses.replace(obj, condition=NORMAL))
        out.append(dataclasses.replace(frame, objects=tuple(keep)))
    if missing:
        lines = [f"{cat}: {item} has no condition" for cat in sorted(missing) for item in missing[cat]]
        counts = ", ".join(f"{cat} {len(v)}" for cat, v in sorted(missing.items()))
        raise ConditionsError(f"{len(lines)} object(s) of mapped categories have no condition ({counts}); give them one "
                              "in the conditions file, or use --missing-condition normal|skip", lines)
    return out, skipped
