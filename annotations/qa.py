"""Annotation QA of a Roboflow segmentation export, before a labelling lead accepts a batch.

Checks on the export alone:

====================== ======= ==============================================================
code                   level   meaning
====================== ======= ==============================================================
duplicate-id           error   an image/annotation/category id used twice in one JSON
unknown-image-id       error   an annotation points at an image that is not listed
unknown-category-id    error   an annotation's category id is not listed
bad-segmentation       error   segmentation is neither polygons nor RLE, or RLE cannot decode
empty-segmentation     error   an annotation without any polygon or RLE
degenerate-polygon     error   fewer than 3 points, an odd number of coordinates, or zero area
self-intersecting      error   a polygon whose edges cross or touch (not a simple polygon)
rle-size-mismatch      error   RLE ``size`` differs from the image's width/height
unknown-category       error   a category the taxonomy does not know, once per category with its
                               annotation count (warning: it exists but is unused)
foreign-taxonomy       warning none of the export's categories is known: said once, with how to
                               pass --taxonomy; the geometry checks still run
supercategory-label    error   an annotation labelled with Roboflow's workspace supercategory
normal-category        warning a category that means "normal" used for a defect mask
image-size-mismatch    error   the image file's size differs from the JSON's width/height (or it
                               cannot be decoded, or exceeds the decompression-bomb limit)
missing-image          error   an image listed in the JSON but absent beside it (once per JSON when
                               none of its images is there)
unlisted-image         warning an image file beside the JSON that the JSON does not list
too-complex            warning a polygon with more points than the self-intersection test takes
outside-image          warning polygon points more than a pixel outside the image
empty-mask             warning a valid polygon too thin to cover any pixel centre
duplicate-annotation   warning two annotations of one image with IoU >= 0.9
overlapping-annotations warning two annotations sharing >= 10% of the smaller one's pixels
====================== ======= ==============================================================

Cross-checks with the detection annotations (``--raw``, frame-drawn exports) or a built dataset
(``--data``: via its manifest for frame-drawn exports, by name/pixels for crop-drawn ones):

====================== ======= ==============================================================
mask-outside-object    error   less than half of a mask lies inside any annotated object's box
mask-on-normal         error   a mask on an object/crop annotated as normal
anomalous-without-mask error   an anomalous object/crop of a masked category with no mask
defect-mismatch        warning the mask's category differs from the object's condition
image-not-matched      warning an export image matching no raw frame / dataset crop
category-unmatched     error   (--raw) an export category none of whose masks lies on an object
mask-unused            warning (--data, frame-drawn) a mask that no crop of the dataset claims
====================== ======= ==============================================================

A category counts as *masked* when at least one mask in the export lies on one of its objects;
anomalous objects of other categories (InsPLAD-seg masks only three of five) are not reported.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from insplad_tools.errors import InspladError
from insplad_tools.safety import image_size_guard

from annotations.coco_export import MAX_PIXELS, MAX_SIDE, ExportAnnotation, ExportFile, ExportImage, RoboflowExport
from annotations.findings import ERROR, WARNING, Finding
from annotations.geometry import as_points, polygon_area, self_intersects
from annotations.matching import ThumbIndex, load_rgb, name_keys, thumbnail
from annotations.rasterize import decode_rle, rasterize_annotation

MAX_CHECKED_POINTS = 4000   # self-intersection is O(n^2): ~0.7 s at this size
DUPLICATE_IOU = 0.9
OVERLAP_SHARE = 0.1
INSIDE_FRACTION = 0.5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Report:
    export: str
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.level == ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.level == WARNING)

    def to_dict(self) -> dict[str, Any]:
        return {"export": self.export, "errors": self.errors, "warnings": self.warnings, "stats": self.stats,
                "findings": [f.to_dict() for f in self.findings]}


def _taxonomy_status(taxonomy: Any, name: str) -> str:
    """"defect", "normal" or "unknown" for a category name under the taxonomy."""
    try:
        return "normal" if taxonomy.normalize_condition(name) is None else "defect"
    except InspladError:
        return "unknown"


def _condition(taxonomy: Any, raw: str | None) -> str | None | bool:
    """Normalised condition, None for normal, False when the taxonomy does not know it."""
    if taxonomy is None:
        return raw
    try:
        return taxonomy.normalize_condition(raw)
    except InspladError:
        return False


# ----------------------------------------------------------------------------- single export

def _foreign_categories(export: RoboflowExport, taxonomy: Any) -> list[str]:
    """The used category names when the taxonomy knows none of them (another taxonomy's export), else []."""
    if taxonomy is None:
        return []
    names = {a.category for f in export.files for im in f.images for a in im.annotations if a.category}
    workspace = {c.name for f in export.files for c in f.categories.values() if c.is_workspace_entry}
    names -= workspace
    if names and all(_taxonomy_status(taxonomy, n) == "unknown" for n in names):
        return sorted(names)
    return []


def _check_categories(ef: ExportFile, taxonomy: Any, out: list[Finding], foreign: bool = False) -> None:
    """Category names against the taxonomy: one finding per unknown category (with its annotation count and
    first annotation), or a single one when the taxonomy knows none of them (another taxonomy's export)."""
    used = Counter(a.category_id for im in ef.images for a in im.annotations)
    status: dict[Any, str] = {}
    for cat in ef.categories.values():
        if cat.is_workspace_entry:
            status[cat.id] = "workspace"
        elif taxonomy is not None:
            status[cat.id] = _taxonomy_status(taxonomy, cat.name)
            if status[cat.id] == "unknown" and not used.get(cat.id) and not foreign:
                out.append(Finding(WARNING, "unknown-category", ef.rel,
                                   f"unused category {cat.name!r} (id {cat.id}) is not a condition of taxonomy "
                                   f"{getattr(taxonomy, 'name', '?')}"))
    known = ", ".join(getattr(taxonomy, "defect_types", []) or [])
    tax_name = getattr(taxonomy, "name", "?")
    reported: set[Any] = set()
    for image in ef.images:
        for ann in image.annotations:
            where = dict(image=image.file_name, annotation_id=ann.id)
            kind = status.get(ann.category_id)
            if kind == "workspace":
                out.append(Finding(ERROR, "supercategory-label", ef.rel,
                                   f"labelled with the workspace supercategory {ann.category!r}, which names no defect",
                                   **where))
            elif kind == "unknown" and not foreign and ann.category_id not in reported:
                reported.add(ann.category_id)
                out.append(Finding(ERROR, "unknown-category", ef.rel,
                                   f"category {ann.category!r} ({used[ann.category_id]} annotation(s), first shown) is "
                                   f"not a condition of taxonomy {tax_name} (defects: {known})", **where))
            elif kind == "normal":
                out.append(Finding(WARNING, "normal-category", ef.rel,
                                   f"category {ann.category!r} means a normal object, not a defect", **where))


def _check_image_file(ef: ExportFile, image: ExportImage, out: list[Finding], none_present: bool) -> None:
    if not image.path.is_file():
        if not none_present:  # when none is there, _check_file says so once
            out.append(Finding(ERROR, "missing-image", ef.rel, "image listed in the JSON but not in the export",
                               image=image.file_name))
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(image.path)
        with img:
            raw = img.size
            turned = ImageOps.exif_transpose(img).size if raw != (image.width, image.height) else raw
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        out.append(Finding(ERROR, "image-size-mismatch", ef.rel, f"image file cannot be read ({exc})",
                           image=image.file_name))
        return
    if raw != (image.width, image.height):
        extra = " (it matches after EXIF rotation)" if turned == (image.width, image.height) else ""
        out.append(Finding(ERROR, "image-size-mismatch", ef.rel,
                           f"image file is {raw[0]}x{raw[1]} but the JSON says {image.width}x{image.height}{extra}",
                           image=image.file_name))


def _check_geometry(ef: ExportFile, image: ExportImage, ann: ExportAnnotation, out: list[Finding]) -> bool:
    """Geometry checks of one annotation; returns False when it cannot be rasterised meaningfully."""
    where = dict(image=image.file_name, annotation_id=ann.id)
    if ann.kind == "empty":
        out.append(Finding(ERROR, "empty-segmentation", ef.rel, "annotation has no polygon or RLE", **where))
        return False
    if ann.kind == "invalid":
        return False  # reported while reading
    if ann.kind == "rle":
        size = [int(v) for v in ann.rle["size"]] if ann.rle else []
        if size != [image.height, image.width]:
            out.append(Finding(ERROR, "rle-size-mismatch", ef.rel,
                               f"RLE size {size} (h, w) differs from the image's {[image.height, image.width]}", **where))
            return False  # where it lies on the image is anyone's guess: keep it out of the overlap checks
        try:
            decode_rle(ann.rle)  # type: ignore[arg-type]
        except Exception as exc:  # pycocotools raises bare ValueError/TypeError on corrupt counts
            out.append(Finding(ERROR, "bad-segmentation", ef.rel, f"RLE cannot be decoded ({exc})", **where))
            return False
        return True
    usable = False
    for k, flat in enumerate(ann.polygons):
        label = f"polygon {k}" if len(ann.polygons) > 1 else "polygon"
        if not all(np.isfinite(flat)):
            out.append(Finding(ERROR, "degenerate-polygon", ef.rel, f"{label} has non-finite coordinates", **where))
            continue
        if len(flat) % 2:
            out.append(Finding(ERROR, "degenerate-polygon", ef.rel,
                               f"{label} has an odd number of coordinates ({len(flat)})", **where))
            continue
        pts = as_points(flat)
        if len(pts) < 3:
            out.append(Finding(ERROR, "degenerate-polygon", ef.rel,
                               f"{label} has {len(pts)} distinct point(s); at least 3 are needed", **where))
            continue
        # A bow tie has zero signed area, so self-intersection is tested first.
        if len(pts) > MAX_CHECKED_POINTS:
            out.append(Finding(WARNING, "too-complex", ef.rel, f"{label} has {len(pts)} points, too many to test for "
                                                                f"self-intersection (limit {MAX_CHECKED_POINTS})", **where))
            if polygon_area(pts) < 1e-6:
                out.append(Finding(ERROR, "degenerate-polygon", ef.rel, f"{label} has zero area", **where))
                continue
        elif self_intersects(pts):
            out.append(Finding(ERROR, "self-intersecting", ef.rel, f"{label} crosses or touches itself", **where))
        elif polygon_area(pts) < 1e-6:
            out.append(Finding(ERROR, "degenerate-polygon", ef.rel, f"{label} has zero area", **where))
            continue
        usable = True
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        if lo[0] < -1 or lo[1] < -1 or hi[0] > image.width + 1 or hi[1] > image.height + 1:
            out.append(Finding(WARNING, "outside-image", ef.rel,
                               f"{label} spans x {lo[0]:g}..{hi[0]:g}, y {lo[1]:g}..{hi[1]:g} on a "
                               f"{image.width}x{image.height} image", **where))
    return usable


def _check_overlaps(ef: ExportFile, image: ExportImage, masks: dict[Any, np.ndarray], out: list[Finding]) -> None:
    ids = list(masks)
    boxes = {}
    for a in ids:
        ys, xs = np.nonzero(masks[a].any(axis=1))[0], np.nonzero(masks[a].any(axis=0))[0]
        boxes[a] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            ba, bb = boxes[a], boxes[b]
            if ba[2] <= bb[0] or bb[2] <= ba[0] or ba[3] <= bb[1] or bb[3] <= ba[1]:
                continue
            inter = int((masks[a] & masks[b]).sum())
            if not inter:
                continue
            union = int((masks[a] | masks[b]).sum())
            smaller = min(int(masks[a].sum()), int(masks[b].sum()))
            iou = inter / union
            if iou >= DUPLICATE_IOU:
                out.append(Finding(WARNING, "duplicate-annotation", ef.rel,
                                   f"duplicates annotation {a} (IoU {iou:.2f})", image=image.file_name, annotation_id=b))
            elif inter >= OVERLAP_SHARE * smaller:
                out.append(Finding(WARNING, "overlapping-annotations", ef.rel,
                                   f"overlaps annotation {a} ({inter} px, {100 * inter / smaller:.0f}% of the smaller)",
                                   image=image.file_name, annotation_id=b))


def _check_unlisted(ef: ExportFile, out: list[Finding]) -> None:
    """Image files beside the JSON that it does not list (a copied JSON, a half-uploaded batch)."""
    listed = {im.path.resolve() for im in ef.images}
    folder = ef.path.parent
    for sub in (folder, folder / "images"):
        if not sub.is_dir():
            continue
        for path in sorted(sub.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and path.resolve() not in listed:
                out.append(Finding(WARNING, "unlisted-image", ef.rel, "image file beside the JSON is not listed in it",
                                   image=path.relative_to(folder).as_posix()))


def _check_file(ef: ExportFile, taxonomy: Any, out: list[Finding], progress: bool, foreign: bool = False) -> None:
    _check_categories(ef, taxonomy, out, foreign)
    _check_unlisted(ef, out)
    none_present = len(ef.images) > 1 and not any(im.path.is_file() for im in ef.images)
    if none_present:
        out.append(Finding(ERROR, "missing-image", ef.rel, f"none of the {len(ef.images)} images the JSON lists is "
                                                           f"beside it (first: {ef.images[0].file_name}); a JSON "
                                                           "copied from another split or export?"))
    # disable=None: a bar only on a terminal, so --json output and logs stay clean
    for image in tqdm(ef.images, desc=f"checking {ef.rel}", unit="image", leave=False,
                      disable=None if progress else True):
        _check_image_file(ef, image, out, none_present)
        masks: dict[Any, np.ndarray] = {}
        for ann in image.annotations:
            if not _check_geometry(ef, image, ann, out):
                continue
            mask = rasterize_annotation(ann, (image.width, image.height), (image.width, image.height))
            if not mask.any():
                out.append(Finding(WARNING, "empty-mask", ef.rel, "annotation covers no pixel when rasterised",
                                   image=image.file_name, annotation_id=ann.id))
                continue
            masks[ann.id] = mask
        _check_overlaps(ef, image, masks, out)


# ------------------------------------------------------------------------------ cross-checks

def _key_index(names: dict[str, Any]) -> list[dict[str, list[Any]]]:
    index: list[dict[str, list[Any]]] = [defaultdict(list) for _ in range(3)]
    for name, value in names.items():
        for level, key in enumerate(name_keys(name)):
            index[level][key].append(value)
    return index


def _lookup(index: list[dict[str, list[Any]]], name: str) -> list[Any]:
    for level, key in enumerate(name_keys(name)):
        if index[level].get(key):
            return index[level][key]
    return []


def _raw_cross_check(export: RoboflowExport, raw_dir: Path, taxonomy: Any, out: list[Finding],
                     stats: dict[str, Any]) -> None:
    """Frame-drawn exports against the detection annotations of RAW_DIR."""
    from insplad_tools.dataset.sources import read_annotations

    frames, _problems = read_annotations(Path(raw_dir))
    index = _key_index({f.name: f for f in frames})
    covered: dict[tuple[str, int], list] = defaultdict(list)  # (frame, object index) -> annotation ids
    seen_frames: set[str] = set()
    masked: set[str] = set()
    matched_images = 0
    matched_labels: Counter = Counter()   # export category name -> masks that landed on an anomalous object

    def category_of(obj: Any) -> str | None:
        try:
            return taxonomy.category_of(obj.raw_class)
        except InspladError:
            return None

    for image in export.images():
        frames_named = _lookup(index, image.original_name)
        if not frames_named:
            out.append(Finding(WARNING, "image-not-matched", image.json_file.rel,
                               f"no frame named {image.original_name} in {raw_dir}", image=image.file_name))
            continue
        frame = frames_named[0]
        matched_images += 1
        seen_frames.add(frame.name)
        size = frame.size
        if size is None or max(size) > MAX_SIDE or size[0] * size[1] > MAX_PIXELS:  # a declared size is only trusted within what C code can take
            with image_size_guard(frame.path), Image.open(frame.path) as img:
                size = ImageOps.exif_transpose(img).size
        objects = [o for o in frame.objects if category_of(o) is not None]
        boxes = [tuple(int(round(v)) for v in o.box) for o in objects]
        for ann in image.annotations:
            if ann.kind not in ("polygon", "rle"):
                continue
            mask = rasterize_annotation(ann, (image.width, image.height), size)
            area = int(mask.sum())
            if not area:
                continue
            shares = [int(mask[max(b[1], 0):b[3], max(b[0], 0):b[2]].sum()) / area for b in boxes]
            where = dict(image=image.file_name, annotation_id=ann.id)
            # Like the mask source: every object holding at least half of the mask gets it; boxes may nest.
            holders = [objects[i] for i, share in enumerate(shares) if share >= INSIDE_FRACTION]
            if not holders:
                top = f"{100 * max(shares):.0f}%" if shares else "no objects"
                out.append(Finding(ERROR, "mask-outside-object", image.json_file.rel,
                                   f"mask lies outside every object box of {frame.name} (best: {top} inside)", **where))
                continue
            anomalous = [o for o in holders if _condition(taxonomy, o.condition) is not None]
            if not anomalous:
                out.append(Finding(ERROR, "mask-on-normal", image.json_file.rel,
                                   f"mask lies on {holders[0].label} of {frame.name}, annotated normal", **where))
                continue
            matched_labels[ann.category] += 1
            for obj in anomalous:
                masked.add(category_of(obj))  # type: ignore[arg-type]
                covered[(frame.name, obj.index)].append(ann.id)
            obj = anomalous[0]
            cond = _condition(taxonomy, obj.condition)
            ann_cond = _condition(taxonomy, ann.category)
            if cond is not False and ann_cond not in (False, None) and ann_cond != cond:
                out.append(Finding(WARNING, "defect-mismatch", image.json_file.rel,
                                   f"mask labelled {ann.category!r} on {obj.label} of {frame.name}, "
                                   f"whose condition is {obj.condition!r}", **where))
    missing = 0
    for frame in frames:
        for obj in frame.objects:
            cat = category_of(obj)
            cond = _condition(taxonomy, obj.condition)
            if cat not in masked or cond in (None, False) or covered.get((frame.name, obj.index)):
                continue
            missing += 1
            why = "no mask lies on it" if frame.name in seen_frames else "its frame is not in the export"
            out.append(Finding(ERROR, "anomalous-without-mask", f"{Path(raw_dir).name}/{obj.source}",
                               f"{obj.label} ({cat}/{cond}) of {frame.name}: {why}", image=frame.name,
                               annotation_id=obj.annotation_id))
    label_totals = Counter(a.category for im in export.images() for a in im.annotations if a.kind in ("polygon", "rle"))
    for label, total in sorted(label_totals.items()):
        if not matched_labels.get(label):
            out.append(Finding(ERROR, "category-unmatched", export.label,
                               f"none of the {total} mask(s) of category {label!r} lies on an anomalous object of "
                               f"{raw_dir} (an export of other frames?)"))
    stats["raw"] = {"frames": len(frames), "raw_problems_skipped": len(_problems), "export_images_matched": matched_images,
                    "masked_categories": sorted(masked), "objects_with_mask": len(covered),
                    "anomalous_without_mask": missing}


def _data_cross_check(export: RoboflowExport, data_dir: Path, out: list[Finding], stats: dict[str, Any]) -> None:
    """The export against a built dataset: through its manifest (frame-drawn) and by name/pixels (crop-drawn)."""
    from insplad_tools.mvtec import MANIFEST, read_dataset

    from annotations.masks import MaskSource

    data_dir = Path(data_dir)
    dataset = read_dataset(data_dir)
    manifest: dict[str, dict] = {}
    if (data_dir / MANIFEST).is_file():
        from insplad_tools.dataset.manifest import load_manifest

        manifest = {e["path"]: e for e in load_manifest(data_dir)["files"] if e.get("crop_box") and e.get("frame")}
    frame_names = _key_index({e["frame"]: e["frame"] for e in manifest.values()})
    source = MaskSource(export)
    samples = [s for cat in dataset.values() for s in (*cat.train, *cat.test)]
    names = _key_index({s.path.name: s for s in samples})
    by_rel = {im.rel: im for im in export.images()}
    matched_images: set[str] = set()
    has_mask: dict[str, list] = {}

    # 1. crop-drawn: export images named like, or looking like, a dataset crop
    thumbs: ThumbIndex | None = None
    for image in export.images():
        if _lookup(frame_names, image.original_name):
            continue  # a frame: handled below through the manifest
        candidates = _lookup(names, image.original_name)
        sample = candidates[0] if len(candidates) == 1 else None
        if sample is None and image.path.is_file():
            if thumbs is None:
                thumbs = ThumbIndex.build([(s, thumbnail(load_rgb(s.path))) for s in samples])
            pool = thumbs
            if candidates:  # one base name in several categories: only those compete
                pool = ThumbIndex.build([(k, t) for k, t in zip(thumbs.keys, thumbs.thumbs) if k in candidates])
            sample = pool.nearest(thumbnail(load_rgb(image.path)))  # type: ignore[assignment]
        if sample is None:
            continue
        matched_images.add(image.rel)
        annotated = [a.id for a in image.annotations if a.kind in ("polygon", "rle")]
        if annotated:
            has_mask[sample.rel] = annotated
            if sample.label == 0:
                out.append(Finding(ERROR, "mask-on-normal", image.json_file.rel,
                                   f"mask drawn on {sample.rel}, a normal crop", image=image.file_name,
                                   annotation_id=annotated[0]))

    # 2. frame-drawn: ask the mask source what every crop of a frame in the export gets
    used: dict[str, set[str]] = defaultdict(set)
    frame_images: set[str] = set()
    for sample in samples:
        entry = manifest.get(sample.rel)
        if entry is None or sample.rel in has_mask:
            continue
        frames = source.images_named(entry["frame"])
        if not frames:
            continue
        matched_images.update(im.rel for im in frames)
        frame_images.update(im.rel for im in frames)
        result = source.mask_for_crop(frame_name=entry["frame"], frame_size=tuple(entry["frame_size"]),
                                      object_box=tuple(entry["box"]), crop_box=tuple(entry["crop_box"]),
                                      crop_pixels=load_rgb(sample.path), crop_name=sample.path.name)
        if result is None:
            continue
        has_mask[sample.rel] = result.annotation_ids
        used[result.source].update(map(str, result.annotation_ids))
        if sample.label == 0:
            image = by_rel[result.source]
            out.append(Finding(ERROR, "mask-on-normal", image.json_file.rel,
                               f"mask lies on {sample.rel}, a normal crop", image=image.file_name,
                               annotation_id=result.annotation_ids[0]))

    masked = {s.category for s in samples if s.rel in has_mask and s.label == 1}
    missing = 0
    for sample in samples:
        if sample.label == 1 and sample.category in masked and sample.rel not in has_mask:
            missing += 1
            out.append(Finding(ERROR, "anomalous-without-mask", f"{data_dir.name}/{sample.rel}",
                               f"anomalous crop {sample.rel} has no mask in the export", image=sample.rel))
    for rel in sorted(frame_images):
        image = by_rel[rel]
        for ann in image.annotations:
            if ann.kind in ("polygon", "rle") and str(ann.id) not in used[rel]:
                out.append(Finding(WARNING, "mask-unused", image.json_file.rel,
                                   "mask lies in no crop's object box of the dataset (outside every object, "
                                   "or on an object the build skipped; --raw tells which)",
                                   image=image.file_name, annotation_id=ann.id))
    for image in export.images():
        if image.rel not in matched_images and image.annotations:
            out.append(Finding(WARNING, "image-not-matched", image.json_file.rel,
                               f"matches no crop (by name or pixels) and no frame of {data_dir.name}'s manifest",
                               image=image.file_name))
    stats["data"] = {"crops": len(samples), "crops_with_mask": len(has_mask), "masked_categories": sorted(masked),
                     "anomalous_without_mask": missing}


def check_export(export: RoboflowExport, *, taxonomy: Any = None, raw_dir: Path | None = None,
                 data_dir: Path | None = None, progress: bool = False) -> Report:
    """Run every check; ``taxonomy`` (``load_taxonomy()``) enables the category checks.

    ``progress`` shows a bar per JSON file on stderr when it is a terminal.
    """
    report = Report(export=export.label)
    findings = list(export.findings)
    foreign = _foreign_categories(export, taxonomy)
    if foreign:
        findings.append(Finding(WARNING, "foreign-taxonomy", export.label,
                                f"taxonomy {getattr(taxonomy, 'name', '?')} knows none of the export's categories "
                                f"({', '.join(foreign)[:200]}); category checks skipped, geometry checked. Pass "
                                "--taxonomy FILE (a JSON naming these classes and defects, shaped like "
                                "insplad_tools/taxonomy/insplad.json) to check them"))
    for ef in export.files:
        _check_file(ef, taxonomy, findings, progress, bool(foreign))
    images = list(export.images())
    report.stats = {
        "files": len(export.files),
        "images": len(images),
        "images_without_annotations": sum(1 for im in images if not im.annotations),
        "annotations": sum(len(im.annotations) for im in images),
        "categories": sorted({c.name for f in export.files for c in f.categories.values() if not c.is_workspace_entry}),
    }
    if raw_dir is not None:
        if taxonomy is None:
            raise InspladError("--raw needs a taxonomy to know which objects are defective")
        _raw_cross_check(export, Path(raw_dir), taxonomy, findings, report.stats)
    if data_dir is not None:
        _data_cross_check(export, Path(data_dir), findings, report.stats)
    order = {ERROR: 0, WARNING: 1}
    report.findings = sorted(findings, key=lambda f: (order.get(f.level, 2), f.code, f.file, str(f.image),
                                                     str(f.annotation_id)))
    return report
