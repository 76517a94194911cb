"""The released InsPLAD-det layout: per-split COCO files, images in the folder named after the split.

Layout (as the release ships it)::

    RAW/annotations/instances_train.json     COCO detection, 18 categories, no condition
    RAW/annotations/instances_val.json
    RAW/train/<tower>-<visit>_DJI_<n>.jpg    1920x1080 frames
    RAW/val/...

Any number of ``annotations/instances_<split>.json`` files is read; each file's images are looked up
in ``RAW/<split>/`` (falling back to ``RAW/images/`` and ``RAW/``). The release lists a few file
names under two image ids with different boxes; ``duplicates`` decides what happens to them:
``exclude`` (default) drops every record of such a name, ``first`` keeps the record with the lowest
image id, ``error`` stops. Either way each one is reported.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from insplad_tools.dataset.sources import FrameRecord, Problem, _ImageIndex, coco_frames
from insplad_tools.errors import InspladError
from insplad_tools.jsonfile import load_json

ANNOTATIONS_DIR = "annotations"
INSTANCES_PREFIX = "instances_"
DUPLICATE_POLICIES = ("exclude", "first", "error")


@dataclass(frozen=True)
class DetName:
    """The parts of an InsPLAD-det frame name ``<tower>-<visit>_DJI_<n>.jpg``."""

    tower: str
    visit: str
    number: str

    @property
    def visit_id(self) -> str:
        return f"{self.tower}-{self.visit}"


def parse_frame_name(name: str) -> DetName | None:
    """``284-1_DJI_0495.jpg`` -> DetName("284", "1", "0495"); ``None`` for any other naming."""
    stem = PurePosixPath(name).stem
    head, sep, rest = stem.partition("_")
    if not sep:
        return None
    tower, dash, visit = head.partition("-")
    if not (dash and tower.isdigit() and visit.isdigit()):
        return None
    tag, sep, number = rest.partition("_")
    if not sep or not number:
        return None
    return DetName(tower, visit, number)


def instance_files(raw_dir: Path) -> list[Path]:
    """``RAW/annotations/instances_*.json``, sorted."""
    folder = Path(raw_dir) / ANNOTATIONS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{INSTANCES_PREFIX}*.json") if p.is_file())


def is_insplad_det(raw_dir: Path) -> bool:
    return bool(instance_files(raw_dir))


def split_of_file(path: Path) -> str:
    """``instances_train.json`` -> ``train``."""
    return path.stem[len(INSTANCES_PREFIX):]


def _image_base(raw_dir: Path, split: str) -> Path:
    for candidate in (raw_dir / split, raw_dir / "images"):
        if split and candidate.is_dir():
            return candidate
    return raw_dir


def resolve_duplicates(data: dict, src: str, policy: str) -> tuple[dict, list[Problem]]:
    """Apply the duplicate-file-name ``policy`` to a loaded COCO document; returns it filtered and the report."""
    if policy not in DUPLICATE_POLICIES:
        raise InspladError(f"--duplicate-images {policy!r}: choose from {', '.join(DUPLICATE_POLICIES)}")
    ids_by_name: dict[str, list] = defaultdict(list)
    for img in data["images"]:
        if isinstance(img, dict) and isinstance(img.get("file_name"), str) and "id" in img:
            ids_by_name[img["file_name"]].append(img["id"])
    dups = {name: ids for name, ids in ids_by_name.items() if len(ids) > 1}
    if not dups:
        return data, []
    if policy == "error":
        first = sorted(dups)[0]
        raise InspladError(f"{src}: {len(dups)} file name(s) appear under several image ids, e.g. {first} "
                           f"(ids {', '.join(map(str, dups[first]))}); use --duplicate-images exclude or first")
    problems = []
    drop: set = set()
    for name in sorted(dups):
        ids = dups[name]
        try:
            ordered = sorted(ids)
        except TypeError:
            ordered = list(ids)
        if policy == "exclude":
            drop.update(ids)
            problems.append(Problem(src, f"file name {name} appears under image ids {', '.join(map(str, ordered))} "
                                         "with different boxes; all its records excluded (--duplicate-images exclude)"))
        else:
            drop.update(ordered[1:])
            problems.append(Problem(src, f"file name {name} appears under image ids {', '.join(map(str, ordered))}; "
                                         f"kept image id {ordered[0]} (--duplicate-images first)"))
    filtered = dict(data)
    filtered["images"] = [img for img in data["images"] if not (isinstance(img, dict) and img.get("id") in drop)]
    filtered["annotations"] = [a for a in data["annotations"] if not (isinstance(a, dict) and a.get("image_id") in drop)]
    return filtered, problems


def read_insplad_det(raw_dir: Path, duplicates: str = "exclude") -> tuple[list[FrameRecord], list[Problem]]:
    """Every ``annotations/instances_*.json`` of a released InsPLAD-det folder as frame records."""
    raw_dir = Path(raw_dir)
    files = instance_files(raw_dir)
    if not files:
        raise InspladError(f"{raw_dir}: no {ANNOTATIONS_DIR}/{INSTANCES_PREFIX}*.json (not an InsPLAD-det folder)")
    frames: list[FrameRecord] = []
    problems: list[Problem] = []
    for path in files:
        src = path.relative_to(raw_dir).as_posix()
        try:
            data = load_json(path, src)
        except InspladError as exc:
            problems.append(Problem(src, f"unreadable JSON ({exc.message.removeprefix(src + ': ')}); no frames read"))
            continue
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                                 for k in ("images", "annotations", "categories")):
            problems.append(Problem(src, "not a COCO detection file (needs lists 'images', 'annotations', "
                                         "'categories'); no frames read"))
            continue
        data, dup_problems = resolve_duplicates(data, src, duplicates)
        problems += dup_problems
        images = _ImageIndex(raw_dir, base=_image_base(raw_dir, split_of_file(path)))
        got, more = coco_frames(data, src, images)
        frames += got
        problems += more
    return frames, problems
