"""``build_dataset``: raw frames + detection annotations -> an MVTec-AD-layout dataset.

Steps: read annotations -> map classes/conditions through the taxonomy -> decode each frame once
and crop all its objects (in parallel with ``jobs``) -> optional InsPLAD-seg masks for anomalous
crops -> split normal crops by group -> drop cross-split pixel duplicates -> move files into place,
write ``manifest.json``, ``stats.md``, ``stats.csv``. Everything happens in a temporary folder that
is renamed into place at the end, so an interrupted or failed run leaves nothing behind.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from insplad_tools import __version__
from insplad_tools.dataset import manifest as manifest_mod
from insplad_tools.dataset import stats as stats_mod
from insplad_tools.dataset.imaging import encode_png
from insplad_tools.dataset.conditions import apply_conditions, read_conditions, resolve_missing
from insplad_tools.dataset.crops import CropJob, CropResult, FrameJob, FrameResult, process_frame
from insplad_tools.dataset.sources import FrameRecord, Problem, detect_format, read_annotations
from insplad_tools.dataset.split import TEST, TRAIN, Grouper, split_items
from insplad_tools.dataset.taxonomy import GOOD, Taxonomy, UnknownClassError, load_taxonomy
from insplad_tools.errors import InspladError
from insplad_tools.fsutil import atomic_output_dir, atomic_write_text, sha256_bytes, sha256_file
from insplad_tools.safety import check_replaceable, ensure_disjoint, worker_signals

STAGING = ".staging"


@dataclass
class BuildOptions:
    """Every knob of a build (the CLI's options); defaults give InsPLAD-fault's ~80/20 normal split."""

    fmt: str = "auto"
    taxonomy: Path | None = None
    pad: float = 0.1
    min_size: int = 16
    test_ratio: float = 0.2
    seed: int = 0
    group_by: str = "frame"
    group_regex: str | None = None
    strict: bool = False
    overwrite: bool = False
    jobs: int = 1
    masks: Path | None = None
    roboflow: str | None = None
    cache_dir: Path | None = None
    name: str | None = None
    progress: bool = True
    conditions: Path | None = None     # CSV/JSON of object conditions (insplad_tools.dataset.conditions)
    missing_condition: str = "auto"    # auto | error | normal | skip
    duplicate_images: str = "exclude"  # InsPLAD-det file names under two image ids: exclude | first | error
    mask_source: Any = None      # an already opened mask source (tests, callers); overrides masks/roboflow

    def check(self) -> None:
        if not 0.0 <= self.pad <= 10.0:
            raise InspladError(f"--pad {self.pad}: must be between 0 and 10 (a fraction of the box size)")
        if self.min_size < 1:
            raise InspladError(f"--min-size {self.min_size}: must be at least 1 pixel")
        if not 0.0 < self.test_ratio < 1.0:
            raise InspladError(f"--test-ratio {self.test_ratio}: must be strictly between 0 and 1")
        if self.jobs < 1:
            raise InspladError(f"--jobs {self.jobs}: must be at least 1")
        if self.masks is not None and self.roboflow is not None:
            raise InspladError("give either --masks EXPORT or --roboflow WORKSPACE/PROJECT/VERSION, not both")

    @property
    def wants_masks(self) -> bool:
        return self.mask_source is not None or self.masks is not None or self.roboflow is not None


@dataclass
class BuildReport:
    """What a build did: where, how many of what, and every problem it skipped."""

    out_dir: Path
    name: str
    frames: int
    counts: dict[str, dict[str, int]]
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    manifest_sha256: str = ""

    @property
    def total(self) -> dict[str, int]:
        keys = ("train_good", "test_good", "test_anomalous", "masks")
        return {k: sum(c.get(k, 0) for c in self.counts.values()) for k in keys}

    def summary(self) -> str:
        t = self.total
        masks = f", {t['masks']} masks" if t["masks"] else ""
        return (f"built {self.name} in {self.out_dir}: {len(self.counts)} categories, {t['train_good']} train good, "
                f"{t['test_good']} test good, {t['test_anomalous']} test anomalous{masks} from {self.frames} frames; "
                f"{len(self.problems)} problem(s) skipped, {len(self.skipped)} object(s) below --min-size or without a "
                f"condition (listed in manifest.json)")


class BuildFailed(InspladError):
    """A ``--strict`` build that met problems; carries them so the CLI can list them."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


def _plan(frames: list[FrameRecord], taxonomy: Taxonomy, grouper: Grouper) -> tuple[list[FrameJob], list[Problem]]:
    problems: list[Problem] = []
    jobs = []
    for frame in frames:
        group = grouper.group_of(frame.name)
        if group is None:
            problems.append(Problem(frame.rel, f"no {grouper.key} id in the file name (pattern {grouper.pattern!r}); "
                                               "grouped by frame"))
            group = frame.stem
        crops = []
        for obj in frame.objects:
            try:
                category = taxonomy.category_of(obj.raw_class)
            except UnknownClassError as exc:
                problems.append(Problem(obj.source, f"{exc.message}; skipped", obj.label))
                continue
            if category is None:
                continue
            try:
                defect = taxonomy.defect_of(category, obj.condition)
            except InspladError as exc:
                problems.append(Problem(obj.source, f"{exc.message}; skipped", obj.label))
                continue
            crops.append(CropJob(f"{frame.stem}_{obj.index:03d}", obj.index, category, defect, obj.raw_class,
                                 obj.condition, obj.box, obj.annotation_id, obj.source, obj.label))
        if crops:
            jobs.append(FrameJob(frame.name, frame.path, frame.rel, frame.size, group, tuple(crops)))
    return jobs, problems


def _run_frames(jobs: list[FrameJob], worker: Callable[[FrameJob], FrameResult], n_jobs: int,
                progress: bool) -> Iterator[FrameResult]:
    bar = tqdm(total=len(jobs), unit="frame", desc="cropping", disable=not progress, leave=False)
    try:
        if n_jobs == 1 or len(jobs) < 2:
            for job in jobs:
                yield worker(job)
                bar.update()
        else:
            chunk = max(1, min(16, len(jobs) // (n_jobs * 8)))
            with ProcessPoolExecutor(max_workers=n_jobs, initializer=worker_signals) as pool:
                for result in pool.map(worker, jobs, chunksize=chunk):
                    yield result
                    bar.update()
    finally:
        bar.close()


def _open_masks(opts: BuildOptions) -> Any:
    if opts.mask_source is not None:
        return opts.mask_source
    if opts.masks is None and opts.roboflow is None:
        return None
    try:
        from annotations.masks import open_mask_source
    except ImportError as exc:
        raise InspladError(f"--masks/--roboflow need the annotations.masks module, which cannot be imported ({exc})") from exc
    return open_mask_source(export=opts.masks, roboflow=opts.roboflow, cache_dir=opts.cache_dir)


def _check_mask(mask_obj: Any, crop: CropResult) -> str | None:
    mask = getattr(mask_obj, "mask", None)
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8:
        return "mask source returned no uint8 array"
    h, w = crop.crop_box[3] - crop.crop_box[1], crop.crop_box[2] - crop.crop_box[0]
    if mask.shape != (h, w):
        return f"mask is {mask.shape[1] if mask.ndim > 1 else '?'}x{mask.shape[0]} but the crop is {w}x{h}"
    if not np.isin(mask, (0, 255)).all():
        return "mask is not binary 0/255"
    if not mask.any():
        return "mask is empty"
    return None


def _attach_masks(crops: list[CropResult], source: Any, problems: list[Problem], progress: bool) -> dict[str, dict[str, Any]]:
    """Ask the mask source for every anomalous crop; returns stem -> {png bytes, annotation ids, source}."""
    found: dict[str, dict[str, Any]] = {}
    anomalous = [c for c in crops if c.job.defect != GOOD]
    for crop in tqdm(anomalous, unit="crop", desc="masks", disable=not progress, leave=False):
        result = source.mask_for_crop(frame_name=crop.frame, frame_size=crop.frame_size, object_box=crop.object_box,
                                      crop_box=crop.crop_box, crop_pixels=crop.pixels, crop_name=crop.file_name)
        label = crop.job.label
        if result is None:
            problems.append(Problem(crop.job.source, f"no defect mask in the segmentation export for crop {crop.file_name}; "
                                                     "anomalous crop left out", label))
            continue
        if why := _check_mask(result, crop):
            problems.append(Problem(crop.job.source, f"{why} for crop {crop.file_name}; anomalous crop left out", label))
            continue
        ids = [a if isinstance(a, (int, str)) else str(a) for a in (getattr(result, "annotation_ids", None) or [])]
        buf = _png(result.mask)
        found[crop.job.stem] = {"png": buf, "annotation_ids": ids, "source": str(getattr(result, "source", ""))}
    return found


def _png(mask: np.ndarray) -> bytes:
    return encode_png(Image.fromarray(np.ascontiguousarray(mask)))


def _drop_duplicates(by_cat: dict[str, list[CropResult]], split_of: dict[str, str], problems: list[Problem]) -> set[str]:
    """Stems to drop so no identical-pixel crop is on both sides of a category (train copies win,
    except that a normal crop identical to an anomalous one is dropped: its label is contradictory)."""
    drop: set[str] = set()
    for cat, crops in by_cat.items():
        by_pixels: dict[str, list[CropResult]] = defaultdict(list)
        for c in crops:
            by_pixels[c.pixel_sha256].append(c)
        for copies in by_pixels.values():
            if len({split_of[c.job.stem] for c in copies}) < 2:
                continue
            has_anomaly = any(c.job.defect != GOOD for c in copies)
            for c in sorted(copies, key=lambda c: c.job.stem):
                loses = (split_of[c.job.stem] == TRAIN) if has_anomaly else (split_of[c.job.stem] == TEST)
                if loses:
                    keep = next(o for o in sorted(copies, key=lambda o: o.job.stem) if split_of[o.job.stem] != split_of[c.job.stem])
                    problems.append(Problem(c.job.source, f"crop {c.file_name} has the same pixels as {keep.file_name} "
                                                          f"on the other side of {cat}; left out", c.job.label))
                    drop.add(c.job.stem)
    return drop


def _entry(c: CropResult, rel: str, split: str, mask: dict[str, Any] | None) -> dict[str, Any]:
    j = c.job
    return {
        "path": rel, "sha256": c.sha256, "pixel_sha256": c.pixel_sha256,
        "width": c.crop_box[2] - c.crop_box[0], "height": c.crop_box[3] - c.crop_box[1],
        "category": j.category, "defect": j.defect, "split": split, "group": c.group,
        "frame": c.frame, "frame_size": list(c.frame_size), "object_index": j.index,
        "annotation_id": j.annotation_id, "annotation_file": j.source, "raw_class": j.raw_class,
        "condition": j.condition, "box": list(c.object_box), "crop_box": list(c.crop_box), "mask": mask,
    }


def build_dataset(raw_dir: Path, out_dir: Path, options: BuildOptions | None = None) -> BuildReport:
    """Build the dataset; returns a :class:`BuildReport`. Raises :class:`BuildFailed` in strict mode
    when anything had to be skipped, and :class:`InspladError` when the input is unusable."""
    opts = options or BuildOptions()
    opts.check()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    inputs = {"RAW": raw_dir, "--masks": opts.masks, "--taxonomy": opts.taxonomy, "--cache-dir": opts.cache_dir,
              "--conditions": opts.conditions}
    ensure_disjoint(out_dir, inputs)  # before reading anything, so an overlap fails fast
    check_replaceable(out_dir, overwrite=opts.overwrite)
    taxonomy = load_taxonomy(opts.taxonomy)
    grouper = Grouper.create(opts.group_by, opts.group_regex)
    if not raw_dir.is_dir():
        raise InspladError(f"{raw_dir}: raw data folder does not exist")
    fmt = detect_format(raw_dir) if opts.fmt == "auto" else opts.fmt
    frames, problems = read_annotations(raw_dir, fmt, opts.duplicate_images)
    if opts.conditions is not None:
        frames = apply_conditions(frames, read_conditions(opts.conditions), taxonomy, opts.conditions)
    frames, unlabelled = resolve_missing(frames, taxonomy, opts.missing_condition, opts.conditions is not None)
    jobs, plan_problems = _plan(frames, taxonomy, grouper)
    problems += plan_problems
    mask_source = _open_masks(opts)
    name = opts.name or ("insplad-seg" if mask_source is not None else "insplad-fault")
    skipped: list[Problem] = list(unlabelled)

    with atomic_output_dir(out_dir, overwrite=opts.overwrite, command="insplad build-splits", inputs=inputs) as tmp:
        staging = tmp / STAGING
        staging.mkdir()
        worker = functools.partial(process_frame, pad=opts.pad, min_size=opts.min_size, staging=staging,
                                   keep_anomalous_pixels=mask_source is not None)
        crops: list[CropResult] = []
        for result in _run_frames(jobs, worker, opts.jobs, opts.progress):
            crops += result.crops
            problems += result.problems
            skipped += result.skipped

        masks: dict[str, dict[str, Any]] = {}
        if mask_source is not None:
            masks = _attach_masks(crops, mask_source, problems, opts.progress)
            with_masks = {c.job.category for c in crops if c.job.stem in masks}
            for cat in sorted({c.job.category for c in crops} - with_masks):
                problems.append(Problem(cat, "no anomalous crop of this category has a mask in the segmentation export; "
                                             "category left out of the segmentation dataset"))
            crops = [c for c in crops if c.job.category in with_masks and (c.job.defect == GOOD or c.job.stem in masks)]
            for c in crops:
                c.pixels = None

        splits = split_items([(c.job.category, c.group, c.job.defect != GOOD) for c in crops], opts.seed, opts.test_ratio)
        split_of = {c.job.stem: split for c, split in zip(crops, splits)}
        by_cat: dict[str, list[CropResult]] = defaultdict(list)
        for c in crops:
            by_cat[c.job.category].append(c)
        dropped = _drop_duplicates(by_cat, split_of, problems)

        entries: list[dict[str, Any]] = []
        for cat in sorted(by_cat):
            items = [c for c in by_cat[cat] if c.job.stem not in dropped]
            n_train = sum(1 for c in items if split_of[c.job.stem] == TRAIN)
            if n_train == 0 or n_train == len(items):
                missing = "train" if n_train == 0 else "test"
                problems.append(Problem(cat, f"no {missing} images after the split ({len(items)} crops from "
                                             f"{len({c.group for c in items})} group(s)); category left out"))
                continue
            for c in items:
                split = split_of[c.job.stem]
                rel = f"{cat}/{split}/{c.job.defect}/{c.file_name}"
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / c.file_name, dest)
                mask_entry = None
                if c.job.stem in masks:
                    m = masks[c.job.stem]
                    mask_rel = f"{cat}/ground_truth/{c.job.defect}/{c.job.stem}_mask.png"
                    (tmp / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / mask_rel).write_bytes(m["png"])
                    mask_entry = {"path": mask_rel, "sha256": sha256_bytes(m["png"]),
                                  "annotation_ids": m["annotation_ids"], "source": m["source"]}
                entries.append(_entry(c, rel, split, mask_entry))
        shutil.rmtree(staging)
        entries.sort(key=lambda e: e["path"])

        problem_lines = [str(p) for p in problems]
        skipped_lines = [str(p) for p in skipped]
        if opts.strict and problem_lines:
            raise BuildFailed(f"{len(problem_lines)} problem(s) in {raw_dir} with --strict; nothing was written",
                              problem_lines)
        if not entries:
            raise BuildFailed(f"{raw_dir}: no usable crops (frames read: {len(frames)}); nothing was written",
                              problem_lines)

        categories = sorted({e["category"] for e in entries})
        manifest = {
            "format": manifest_mod.FORMAT,
            "name": name,
            "tool": {"name": "insplad build-splits", "version": __version__},
            "arguments": {
                "format": fmt, "pad": opts.pad, "min_size": opts.min_size, "test_ratio": opts.test_ratio,
                "seed": opts.seed, "group_by": grouper.key, "group_regex": grouper.pattern,
                "conditions": None if opts.conditions is None else {
                    "file": Path(opts.conditions).name, "sha256": sha256_file(Path(opts.conditions))},
                "missing_condition": opts.missing_condition, "duplicate_images": opts.duplicate_images,
                "taxonomy": {"name": taxonomy.name, "sha256": taxonomy.digest,
                             "file": opts.taxonomy.name if opts.taxonomy else None},
                "masks": None if mask_source is None else {
                    "export": Path(opts.masks).name if opts.masks else None, "roboflow": opts.roboflow},
            },
            "source": {"frames": len(frames), "objects": sum(len(f.objects) for f in frames)},
            "categories": {cat: {"title": taxonomy.title(cat), "defects": list(taxonomy.categories[cat])}
                           for cat in categories},
            "files": entries,
            "problems": problem_lines,
            "skipped": skipped_lines,
        }
        text = manifest_mod.dumps(manifest)
        atomic_write_text(tmp / "manifest.json", text)
        rows = stats_mod.compute(entries, taxonomy.categories, taxonomy.titles)
        has_masks = mask_source is not None
        atomic_write_text(tmp / "stats.md", stats_mod.to_markdown(rows, name, has_masks))
        atomic_write_text(tmp / "stats.csv", stats_mod.to_csv(rows, has_masks))

    counts = {r.category: {"train_good": r.train_flawless, "test_good": r.test_flawless,
                           "test_anomalous": r.test_anomalous, "masks": r.masks} for r in rows}
    return BuildReport(out_dir, name, len(frames), counts, problem_lines, skipped_lines,
                       sha256_bytes(text.encode()))

