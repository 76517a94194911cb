"""``insplad link-crops``: find the InsPLAD-det frame and annotation every released crop was cut from.

The released InsPLAD-fault crops are sorted by condition but do not say where they came from; the
released InsPLAD-det annotations say where every object is but not its condition. Linking the two
gives each object its condition (a conditions file for ``build-splits --conditions``) and each crop
its provenance (frame, box, tower), which makes a leak-free re-split and a leakage audit possible.

How a crop is matched, never guessed:

1. Candidates are the boxes of the same asset category (through the taxonomy). A crop may have been
   cut with some padding around the box and rescaled, so every box is tried with each padding of
   ``pads`` (a fraction of the box on every side, clamped to the frame like build-splits does) and
   kept only when the padded region's aspect ratio fits the crop's (``aspect_tolerance`` in log
   space, widened by one pixel of rounding on small crops).
2. Crop and region are compared on ``thumb`` x ``thumb`` greyscale thumbnails (exact area averages,
   read off a summed-area table, so every padding of every box of a frame costs one vectorised
   lookup) by normalised cross-correlation, which ignores the brightness and contrast changes of
   re-encoding and rescaling; a box's score is its best padding.
3. The best box is accepted only when its score reaches ``min_score`` and beats the best *other*
   box by ``margin``; otherwise the crop is ``ambiguous`` (two boxes fit about equally, e.g. the
   same asset in consecutive frames) or ``unmatched`` (nothing fits). Two crops linked to one
   object with different conditions are both reported as ``conflict``.

Speed: each frame is decoded once, at the smallest JPEG draft scale (1/2, 1/4, 1/8, greyscale)
that still leaves its smallest candidate region ``thumb`` pixels or more; the scores are one matrix
product per category (in chunks of crops), so linking costs about one reduced decode per frame.
The default ``min_score`` 0.93 was calibrated on ``synth --layout insplad-det``: true sources scored
0.936-1.0 (1st percentile 0.965), crops whose frame was excluded never above 0.913 against any
other box; on real data read the score and margin columns of provenance.csv before trusting it.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from insplad_tools.dataset.imaging import EXIF_ORIENTATION, _TRANSPOSE, object_box, padded_box
from insplad_tools.dataset.sources import FrameRecord, read_annotations
from insplad_tools.dataset.taxonomy import Taxonomy, UnknownClassError, load_taxonomy
from insplad_tools.errors import InspladError
from insplad_tools.fsutil import atomic_output_dir, atomic_write_bytes, atomic_write_text
from insplad_tools.mvtec import CropImage, read_crop_folder
from insplad_tools.safety import check_replaceable, ensure_disjoint

DEFAULT_PADS: tuple[float, ...] = tuple(round(0.025 * i, 3) for i in range(13))   # 0 .. 0.3
STATUSES = ("matched", "ambiguous", "unmatched", "conflict", "skipped")
CONDITIONS_CSV, PROVENANCE_CSV, SCORES_PNG = "conditions.csv", "provenance.csv", "scores.png"
PROVENANCE_FIELDS = ("crop", "asset", "category", "condition", "split", "status", "frame", "frame_path",
                     "annotation_id", "x", "y", "width", "height", "pad", "score", "runner_up_frame",
                     "runner_up_annotation_id", "runner_up_score", "margin", "note")
CHUNK = 256


@dataclass(frozen=True)
class LinkOptions:
    """Matching knobs (see the module docstring)."""

    pads: tuple[float, ...] = DEFAULT_PADS
    thumb: int = 24
    min_score: float = 0.93
    margin: float = 0.02
    aspect_tolerance: float = 0.04
    duplicates: str = "exclude"
    fmt: str = "auto"
    taxonomy: Path | None = None
    progress: bool = True

    def check(self) -> None:
        if not self.pads or any(not 0.0 <= p <= 2.0 for p in self.pads):
            raise InspladError(f"--pads {','.join(map(str, self.pads))}: give fractions between 0 and 2")
        if not 8 <= self.thumb <= 128:
            raise InspladError(f"--thumb {self.thumb}: must be between 8 and 128 pixels")
        if not -1.0 <= self.min_score <= 1.0:
            raise InspladError(f"--min-score {self.min_score}: NCC lies in [-1, 1]")
        if not 0.0 <= self.margin <= 2.0:
            raise InspladError(f"--margin {self.margin}: must be between 0 and 2")
        if not 0.0 < self.aspect_tolerance < 1.0:
            raise InspladError(f"--aspect-tolerance {self.aspect_tolerance}: must be between 0 and 1")


@dataclass
class Link:
    """The outcome for one crop (one provenance row)."""

    crop: CropImage
    category: str | None
    status: str
    frame: FrameRecord | None = None
    annotation_id: str = ""
    box: tuple[float, float, float, float] | None = None
    pad: float | None = None
    score: float | None = None
    runner_up: tuple[str, str, float] | None = None   # frame, annotation id, score
    note: str = ""

    @property
    def margin(self) -> float | None:
        if self.score is None:
            return None
        return self.score - (self.runner_up[2] if self.runner_up else -1.0)


@dataclass
class LinkReport:
    out_dir: Path
    links: list[Link]
    frames: int
    problems: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(link.status for link in self.links)
        return {s: c.get(s, 0) for s in STATUSES}

    def summary(self) -> str:
        c = self.counts
        return (f"linked {len(self.links)} crops against {self.frames} frames -> {self.out_dir}: {c['matched']} matched, "
                f"{c['ambiguous']} ambiguous, {c['unmatched']} unmatched, {c['conflict']} conflict, {c['skipped']} skipped "
                f"(every crop listed in {PROVENANCE_CSV})")


def _normalise(rows: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm rows (a flat thumbnail becomes all zeros: it correlates with nothing)."""
    rows = rows - rows.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norm, out=np.zeros_like(rows), where=norm > 1e-6)


def area_thumbnails(grey: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` box-filter thumbnails of many (fractional) boxes of one greyscale image at once.

    Each thumbnail pixel is the exact mean of the image over its footprint: the summed-area table
    is bilinear inside every pixel, so interpolating it at fractional corners integrates exactly.
    ``boxes`` is (N, 4) x0, y0, x1, y1 in pixel-edge coordinates; returns (N, size * size) float32.
    """
    h, w = grey.shape
    table = np.zeros((h + 1, w + 1), dtype=np.float64)
    table[1:, 1:] = grey.astype(np.float64).cumsum(0).cumsum(1)
    steps = np.linspace(0.0, 1.0, size + 1)
    xs = np.clip(boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps, 0, w)   # (N, size+1)
    ys = np.clip(boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps, 0, h)
    y0 = np.minimum(ys.astype(np.int64), h - 1)[:, :, None]
    x0 = np.minimum(xs.astype(np.int64), w - 1)[:, None, :]
    fy, fx = ys[:, :, None] - y0, xs[:, None, :] - x0
    corners = ((table[y0, x0] * (1 - fx) + table[y0, x0 + 1] * fx) * (1 - fy)
               + (table[y0 + 1, x0] * (1 - fx) + table[y0 + 1, x0 + 1] * fx) * fy)        # (N, size+1, size+1)
    sums = corners[:, 1:, 1:] - corners[:, :-1, 1:] - corners[:, 1:, :-1] + corners[:, :-1, :-1]
    area = np.diff(ys, axis=1)[:, :, None] * np.diff(xs, axis=1)[:, None, :]
    return np.divide(sums, area, out=np.zeros_like(sums), where=area > 0).reshape(len(boxes), -1).astype(np.float32)


def _open_crop(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            size_full = img.size
            img.draft("L", (2 * size, 2 * size))   # JPEG crops: decode at the smallest scale still >= 2x the thumbnail
            img.load()
            grey = img.convert("L")
    arr = np.asarray(grey)
    return area_thumbnails(arr, np.array([[0.0, 0.0, arr.shape[1], arr.shape[0]]]), size)[0], size_full


def _decode_reduced(path: Path, boxes_of: Callable[[int, int], list], thumb: int
                    ) -> tuple[Image.Image | None, float, list, tuple[int, int]]:
    """Open a frame once: its upright size gives the boxes (``boxes_of(width, height)``, each ending in an
    (x0, y0, x1, y1) box); then decode it upright and grey at the smallest JPEG draft scale keeping the
    smallest box >= ``thumb`` px. Returns (image or None when no box, scale, boxes, upright size)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            full_w, full_h = img.size
            size = (full_h, full_w) if orientation in (5, 6, 7, 8) else (full_w, full_h)
            boxes = boxes_of(*size)
            if not boxes:
                return None, 1.0, boxes, size
            min_side = min(min(b[-1][2] - b[-1][0], b[-1][3] - b[-1][1]) for b in boxes)
            reduce = 1
            while reduce < 8 and min_side / (reduce * 2) >= thumb:
                reduce *= 2
            if reduce > 1:
                img.draft("L", (math.ceil(full_w / reduce), math.ceil(full_h / reduce)))
            img.load()
            scale = img.size[0] / full_w
            grey = img.convert("L")
    if orientation in _TRANSPOSE:
        grey = grey.transpose(_TRANSPOSE[orientation])
    return grey, scale, boxes, size


@dataclass
class _Regions:
    """Candidate regions of one category: one row per (box, pad)."""

    rows: list[np.ndarray] = field(default_factory=list)
    log_aspect: list[float] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)        # index into boxes
    pad: list[float] = field(default_factory=list)
    boxes: list[tuple[FrameRecord, object]] = field(default_factory=list)   # (frame, ObjectRecord)


def _category(taxonomy: Taxonomy, name: str) -> str | None:
    try:
        return taxonomy.category_of(name)
    except UnknownClassError:
        return None


def _collect_regions(frames: list[FrameRecord], wanted: set[str], taxonomy: Taxonomy, opts: LinkOptions,
                     problems: list[str]) -> dict[str, _Regions]:
    regions: dict[str, _Regions] = defaultdict(_Regions)
    jobs = []
    for frame in frames:
        objs = [(o, c) for o in frame.objects if (c := _category(taxonomy, o.raw_class)) in wanted]
        if objs:
            jobs.append((frame, objs))
    for frame, objs in tqdm(jobs, desc="frames", unit="frame", disable=not opts.progress, leave=False):
        def boxes_of(width: int, height: int, objs: list = objs) -> list:
            return [(o, c, b) for o, c in objs if (b := object_box(o.box, width, height)) is not None]

        try:
            grey, scale, boxes, (width, height) = _decode_reduced(frame.path, boxes_of, opts.thumb)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            problems.append(f"{frame.path}: cannot decode frame ({exc}); its boxes are not candidates")
            continue
        if grey is None:
            continue
        todo = []   # (category, owner, pad, region in frame pixels)
        for obj, cat, box in boxes:
            reg = regions[cat]
            owner = len(reg.boxes)
            reg.boxes.append((frame, obj))
            seen = set()
            for pad in opts.pads:
                region = padded_box(box, pad, width, height)
                if region not in seen:
                    seen.add(region)
                    todo.append((cat, owner, pad, region))
        coords = np.array([r for _, _, _, r in todo], dtype=np.float64)
        thumbs = area_thumbnails(np.asarray(grey), coords * scale, opts.thumb)
        for (cat, owner, pad, (x0, y0, x1, y1)), row in zip(todo, thumbs):
            reg = regions[cat]
            reg.rows.append(row)
            reg.log_aspect.append(math.log((x1 - x0) / (y1 - y0)))
            reg.owner.append(owner)
            reg.pad.append(pad)
    return regions


def _match_category(crops: list[tuple[CropImage, np.ndarray, tuple[int, int]]], reg: _Regions, cat: str,
                    opts: LinkOptions) -> list[Link]:
    links = []
    if not reg.rows:
        return [Link(c, cat, "unmatched", note="no box of this category in the frames") for c, _, _ in crops]
    R = _normalise(np.stack(reg.rows))
    r_aspect = np.asarray(reg.log_aspect)
    owner = np.asarray(reg.owner)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])   # rows of one box are contiguous
    n_boxes = len(reg.boxes)
    for start in range(0, len(crops), CHUNK):
        chunk = crops[start:start + CHUNK]
        C = _normalise(np.stack([t for _, t, _ in chunk]))
        sizes = np.array([s for _, _, s in chunk], dtype=np.float64)
        tol = opts.aspect_tolerance + 1.0 / sizes.min(axis=1)
        fits_all = np.abs(r_aspect[None, :] - np.log(sizes[:, 0] / sizes[:, 1])[:, None]) <= tol[:, None]
        S = np.where(fits_all, C @ R.T, -np.inf)
        per_box_all = np.maximum.reduceat(S, starts, axis=1)
        for i, (crop, _, _) in enumerate(chunk):
            per_box = per_box_all[i]
            if n_boxes > 2:
                top = np.argpartition(-per_box, 1)[:2]
                order = top[np.argsort(-per_box[top], kind="stable")]
            else:
                order = np.argsort(-per_box, kind="stable")
            best = int(order[0])
            if not np.isfinite(per_box[best]):
                links.append(Link(crop, cat, "unmatched", note="no box of a fitting aspect ratio"))
                continue
            score = float(per_box[best])
            frame, obj = reg.boxes[best]
            first, stop = int(starts[best]), int(starts[best + 1]) if best + 1 < n_boxes else len(owner)
            pad = reg.pad[first + int(np.argmax(S[i, first:stop]))]
            runner = None
            if n_boxes > 1 and np.isfinite(per_box[order[1]]):
                f2, o2 = reg.boxes[int(order[1])]
                runner = (f2.name, o2.annotation_id, float(per_box[order[1]]))
            link = Link(crop, cat, "matched", frame, obj.annotation_id, obj.box, pad, score, runner)
            if score < opts.min_score:
                link.status, link.note = "unmatched", f"best score {score:.3f} < --min-score {opts.min_score}"
            elif link.margin is not None and link.margin < opts.margin:
                link.status, link.note = "ambiguous", f"margin {link.margin:.3f} over the runner-up < --margin {opts.margin}"
            links.append(link)
    return links


def _mark_conflicts(links: list[Link], taxonomy: Taxonomy) -> None:
    by_object: dict[tuple[str, str], list[Link]] = defaultdict(list)
    for link in links:
        if link.status == "matched":
            by_object[(link.frame.name, link.annotation_id)].append(link)  # type: ignore[union-attr]
    for (frame, ann), group in by_object.items():
        if len(group) < 2:
            continue
        conds = {taxonomy.normalize_condition(g.crop.condition) for g in group}
        others = ", ".join(g.crop.rel for g in group)
        for g in group:
            if len(conds) > 1:
                g.status, g.note = "conflict", f"crops {others} all match annotation {ann} of {frame} with different conditions"
            else:
                g.note = f"same object as {', '.join(o.crop.rel for o in group if o is not g)} (duplicate crop)"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def provenance_rows(links: list[Link]) -> list[dict[str, str]]:
    rows = []
    for link in sorted(links, key=lambda l: l.crop.rel):
        box = link.box
        rows.append({
            "crop": link.crop.rel, "asset": link.crop.asset, "category": link.category or "",
            "condition": link.crop.condition, "split": link.crop.split or "", "status": link.status,
            "frame": link.frame.name if link.frame else "",
            "frame_path": _frame_rel(link.frame) if link.frame else "",
            "annotation_id": link.annotation_id,
            "x": _fmt(box[0], 2) if box else "", "y": _fmt(box[1], 2) if box else "",
            "width": _fmt(box[2] - box[0], 2) if box else "", "height": _fmt(box[3] - box[1], 2) if box else "",
            "pad": _fmt(link.pad, 3), "score": _fmt(link.score),
            "runner_up_frame": link.runner_up[0] if link.runner_up else "",
            "runner_up_annotation_id": link.runner_up[1] if link.runner_up else "",
            "runner_up_score": _fmt(link.runner_up[2]) if link.runner_up else "",
            "margin": _fmt(link.margin), "note": link.note,
        })
    return rows


def _frame_rel(frame: FrameRecord) -> str:
    """The frame as ``<split folder>/<name>`` (its folder and name), enough to find it again under DET."""
    return f"{frame.path.parent.name}/{frame.name}"


def _csv(rows: list[dict[str, str]], fields: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def conditions_rows(links: list[Link]) -> list[dict[str, str]]:
    """One row per linked object (image, annotation_id, condition) for ``build-splits --conditions``."""
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for link in sorted(links, key=lambda l: l.crop.rel):
        if link.status != "matched":
            continue
        key = (link.frame.name, link.annotation_id)  # type: ignore[union-attr]
        seen.setdefault(key, {"image": key[0], "annotation_id": key[1], "condition": link.crop.condition,
                              "crop": link.crop.rel, "score": _fmt(link.score), "margin": _fmt(link.margin)})
    return [seen[k] for k in sorted(seen, key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else 0, k[1]))]


def scores_png(links: list[Link], opts: LinkOptions) -> bytes:
    """Histograms of every crop's best score and margin by status, with the acceptance thresholds:
    the picture to look at before trusting --min-score / --margin on new data."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    scored = [l for l in links if l.score is not None]
    for ax, what, limit in ((axes[0], "score", opts.min_score), (axes[1], "margin", opts.margin)):
        every = [getattr(l, what) for l in scored] + [limit]
        bins = np.linspace(min(every), max(every) + 1e-6, 41)
        for status in ("matched", "ambiguous", "unmatched", "conflict"):
            values = [getattr(l, what) for l in scored if l.status == status]
            if values:
                ax.hist(values, bins=bins, alpha=0.6, label=f"{status} ({len(values)})")
        ax.axvline(limit, color="k", linestyle="--", linewidth=1)
        ax.set_xlabel(f"best box {what}" if what == "score" else "margin over the runner-up box")
        ax.set_ylabel("crops")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"link-crops: {len(links)} crops (dashed: --min-score {opts.min_score}, --margin {opts.margin})",
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def link_crops(det_dir: Path, fault_dir: Path, out_dir: Path, opts: LinkOptions | None = None,
               *, overwrite: bool = False) -> LinkReport:
    """Link every crop of ``fault_dir`` to ``det_dir``; write ``conditions.csv`` and ``provenance.csv`` to ``out_dir``."""
    opts = opts or LinkOptions()
    opts.check()
    det_dir, fault_dir, out_dir = Path(det_dir), Path(fault_dir), Path(out_dir)
    inputs = {"DET": det_dir, "FAULT": fault_dir, "--taxonomy": opts.taxonomy}
    ensure_disjoint(out_dir, inputs)
    check_replaceable(out_dir, overwrite=overwrite)
    taxonomy = load_taxonomy(opts.taxonomy)
    frames, frame_problems = read_annotations(det_dir, opts.fmt, opts.duplicates)
    problems = [str(p) for p in frame_problems]
    crops = read_crop_folder(fault_dir)
    if not crops:
        raise InspladError(f"{fault_dir}: no crops found (expected <asset>/<condition>/* or <asset>/{{train,test}}/<condition>/*)")

    links: list[Link] = []
    by_cat: dict[str, list[tuple[CropImage, np.ndarray, tuple[int, int]]]] = defaultdict(list)
    for crop in tqdm(crops, desc="crops", unit="crop", disable=not opts.progress, leave=False):
        cat = _category(taxonomy, crop.asset)
        if cat is None:
            links.append(Link(crop, None, "skipped", note=f"asset folder {crop.asset!r} is not a category of taxonomy "
                                                          f"{taxonomy.name}"))
            continue
        try:
            taxonomy.defect_of(cat, crop.condition)
        except InspladError as exc:
            links.append(Link(crop, cat, "skipped", note=f"condition folder: {exc.message}"))
            continue
        try:
            thumb, size = _open_crop(fault_dir / crop.rel, opts.thumb)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            links.append(Link(crop, cat, "skipped", note=f"cannot decode crop ({exc})"))
            continue
        by_cat[cat].append((crop, thumb, size))
    for asset, n in sorted(Counter(l.crop.asset for l in links if l.status == "skipped").items()):
        problems.append(f"{fault_dir / asset}: {n} crop(s) skipped (see the note column of {PROVENANCE_CSV})")

    regions = _collect_regions(frames, set(by_cat), taxonomy, opts, problems)
    for cat in sorted(by_cat):
        links += _match_category(by_cat[cat], regions.get(cat, _Regions()), cat, opts)
    _mark_conflicts(links, taxonomy)

    with atomic_output_dir(out_dir, overwrite=overwrite, command="insplad link-crops", inputs=inputs) as tmp:
        atomic_write_text(tmp / CONDITIONS_CSV, _csv(conditions_rows(links),
                                                     ("image", "annotation_id", "condition", "crop", "score", "margin")))
        atomic_write_text(tmp / PROVENANCE_CSV, _csv(provenance_rows(links), PROVENANCE_FIELDS))
        if any(l.score is not None for l in links):
            atomic_write_bytes(tmp / SCORES_PNG, scores_png(links, opts))
    return LinkReport(out_dir, sorted(links, key=lambda l: l.crop.rel), len(frames), problems)
