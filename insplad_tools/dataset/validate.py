"""``insplad validate``: re-check a built dataset against its ``manifest.json``.

Checks, each reported as one line naming the file: files missing, extra, changed (sha256) or moved
to another folder; manifest fields that contradict a file's folder; groups of a category on both
the train and the test side; identical decoded pixels on both sides of a category; and masks
(same size as their image, binary 0/255, non-empty, present for every anomalous image of a
category that has masks, absent for normal images). Symbolic links are reported, never followed;
categories without train/good, test/good or anomalous test images get a warning.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from insplad_tools.dataset.imaging import pixel_digest, to_rgb8
from insplad_tools.dataset.manifest import load_manifest
from insplad_tools.errors import DatasetError
from insplad_tools.fsutil import sha256_file
from insplad_tools.mvtec import GOOD, MANIFEST, read_category
from insplad_tools.safety import OUTPUT_MARKER

TOP_LEVEL_FILES = {MANIFEST, "stats.md", "stats.csv", OUTPUT_MARKER}


@dataclass
class ValidationResult:
    root: Path
    name: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # usable, but not for training/evaluation as is
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        c = self.counts
        if self.ok:
            return (f"OK {self.name}: {c.get('images', 0)} images ({c.get('train', 0)} train, {c.get('test_good', 0)} test good, "
                    f"{c.get('test_anomalous', 0)} test anomalous), {c.get('masks', 0)} masks in {c.get('categories', 0)} "
                    f"categories match {MANIFEST}")
        return f"{self.root}: {len(self.problems)} problem(s) found against {MANIFEST}"


def _split_defect(rel: str) -> tuple[str, str, str] | None:
    parts = rel.split("/")
    if len(parts) == 4 and parts[1] in ("train", "test"):
        return parts[0], parts[1], parts[2]
    return None


def validate_dataset(root: Path, progress: bool = False) -> ValidationResult:
    """Every problem of the dataset at ``root`` (empty list when it matches its manifest)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    manifest = load_manifest(root)
    result = ValidationResult(root, str(manifest.get("name") or root.name))
    out = result.problems
    entries: dict[str, dict[str, Any]] = {}
    masks: dict[str, dict[str, Any]] = {}
    for e in manifest["files"]:
        if e["path"] in entries:
            out.append(f"{MANIFEST}: {e['path']}: listed twice")
        entries[e["path"]] = e
        if isinstance(e.get("mask"), dict) and isinstance(e["mask"].get("path"), str):
            masks[e["mask"]["path"]] = e

    links = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink())
    for rel in links:
        out.append(f"{rel}: symbolic link (a dataset holds plain files only; it is not followed)")
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    on_disk = [r for r in on_disk if r not in TOP_LEVEL_FILES]
    disk_set = set(on_disk)
    extras = [r for r in on_disk if r not in entries and r not in masks]
    digests: dict[str, str] = {}

    def digest(rel: str) -> str:
        if rel not in digests:
            digests[rel] = sha256_file(root / rel)
        return digests[rel]

    # Where each manifest image really is: its own path, or (moved) an extra file with its sha256.
    extra_by_sha: dict[str, list[str]] = defaultdict(list)
    for rel in extras:
        extra_by_sha[digest(rel)].append(rel)
    location: dict[str, str] = {}
    for rel, e in entries.items():
        if rel in disk_set:
            location[rel] = rel
            if digest(rel) != e.get("sha256"):
                out.append(f"{rel}: changed (sha256 {digest(rel)[:12]}..., manifest says {str(e.get('sha256'))[:12]}...)")
        elif extra_by_sha.get(e.get("sha256", "")):
            moved = extra_by_sha[e["sha256"]].pop(0)
            location[rel] = moved
            extras.remove(moved)
            out.append(f"{rel}: moved to {moved}")
        else:
            out.append(f"{rel}: missing (listed in {MANIFEST})")
    for rel, e in masks.items():
        if rel not in disk_set:
            out.append(f"{rel}: missing mask of {e['path']} (listed in {MANIFEST})")
        elif digest(rel) != e["mask"].get("sha256"):
            out.append(f"{rel}: changed mask (sha256 {digest(rel)[:12]}..., manifest says {str(e['mask'].get('sha256'))[:12]}...)")
    for rel in extras:
        out.append(f"{rel}: extra file (not in {MANIFEST})")

    for rel, e in entries.items():
        parsed = _split_defect(rel)
        if parsed is None or parsed != (e.get("category"), e.get("split"), e.get("defect")):
            out.append(f"{MANIFEST}: {rel}: entry says category {e.get('category')}, split {e.get('split')}, "
                       f"defect {e.get('defect')}, which does not match its path")

    # Read the layout the way every other command does; compare what it sees with the manifest.
    categories = sorted({e.get("category") for e in entries.values() if isinstance(e.get("category"), str)})
    samples = []
    for cat in categories:
        try:
            samples += [*(c := read_category(root, cat)).train, *c.test]
        except DatasetError as exc:
            out.append(exc.message)
    has_masks = {e["category"] for e in masks.values()}

    # Group leakage and pixel duplicates, with files where they actually are.
    sides: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for rel, e in entries.items():
        where = _split_defect(location.get(rel, ""))
        if where is not None and e.get("group") is not None:
            sides[(where[0], str(e["group"]))][where[1]].append(location[rel])
    for (cat, group), by_side in sorted(sides.items()):
        if by_side.get("train") and by_side.get("test"):
            out.append(f"{cat}: group {group!r} leaks: {len(by_side['train'])} train image(s) (e.g. {by_side['train'][0]}) "
                       f"and {len(by_side['test'])} test image(s) (e.g. {by_side['test'][0]})")

    pixels: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    counts = defaultdict(int)
    linked = set(links)
    samples = [s for s in samples if s.rel not in linked]
    for s in tqdm(samples, unit="image", desc="validating", disable=not progress, leave=False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(s.path)
            with img:
                rgb = to_rgb8(img)
                size = img.size
                pixels[(s.category, pixel_digest(rgb))][s.split].append(s.rel)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            out.append(f"{s.rel}: cannot decode image ({type(exc).__name__}: {exc})")
            continue
        counts["images"] += 1
        counts["train" if s.split == "train" else ("test_good" if s.label == 0 else "test_anomalous")] += 1
        if s.label == 0:
            continue
        if s.mask_path is None:
            if s.category in has_masks:
                out.append(f"{s.rel}: anomalous image without a mask (its category has masks)")
            continue
        counts["masks"] += 1
        problem = _check_mask(s.mask_path, size)
        if problem:
            out.append(f"{s.mask_rel}: {problem}")
    for (cat, _), by_split in sorted(pixels.items()):
        if by_split.get("train") and by_split.get("test"):
            out.append(f"{cat}: identical pixels in train and test: {by_split['train'][0]} and {by_split['test'][0]}")
    for rel, e in masks.items():
        if e.get("defect") == GOOD:
            out.append(f"{rel}: mask for a normal image ({e['path']})")
    for cat in categories:
        good_gt = root / cat / "ground_truth" / GOOD
        if good_gt.is_dir() and any(good_gt.iterdir()):
            out.append(f"{good_gt.relative_to(root).as_posix()}: masks for normal images")
    for cat in categories:  # what training and evaluation need before anyone trains on it
        sides_of = Counter((x.split, x.label) for x in samples if x.category == cat)
        for key, what in ((("train", 0), "no train/good images"), (("test", 0), "an empty test/good"),
                          (("test", 1), "no anomalous test images")):
            if not sides_of[key]:
                result.warnings.append(f"warning: {cat}: {what}; the category cannot be "
                                       f"{'trained' if key[0] == 'train' else 'evaluated'} as it is")
    counts["categories"] = len(categories)
    result.counts = dict(counts)
    return result


def _check_mask(path: Path, size: tuple[int, int]) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if img.size != size:
                return f"mask is {img.size[0]}x{img.size[1]} but its image is {size[0]}x{size[1]}"
            arr = np.asarray(img.convert("L") if img.mode not in ("L", "1") else img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"cannot decode mask ({type(exc).__name__}: {exc})"
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if not np.isin(arr, (0, 255)).all():
        return "mask is not binary (values other than 0 and 255)"
    if not arr.any():
        return "mask of an anomalous image is empty"
    return None
