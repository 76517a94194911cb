"""Per-crop defect masks from a Roboflow segmentation export: the API behind ``build-splits --masks``.

Two kinds of export are understood, and may even be mixed in one export:

**Masks drawn on the full UAV frame** (what ``insplad synth`` writes, and how one labels a whole
flight). The export image is found by the frame's file name (Roboflow's rewritten
``<stem>_<ext>.rf.<hash>.<ext>`` names and ``extra.name`` included); each annotation is
rasterised at the original frame size (polygons scaled back from the export's resized
resolution, see :mod:`annotations.rasterize`); an annotation belongs to an object when at least
``inside_fraction`` (default half) of its pixels lie inside the object's box; the union of those is
cut with the crop box.

**Masks drawn on the crop itself** (how InsPLAD-seg was labelled). Used when the frame is not in
the export. The export image is found by the crop's file name when given, else by its pixels: an
exact hash of the decoded pixels when the export kept size and lossless format, else the nearest
16x16 grey thumbnail (see :mod:`annotations.matching`; Roboflow re-encodes and resizes, so no
exact hash of the file survives). The annotations are rasterised at the crop's size.

Augmented exports: Roboflow applies augmentations to the ``train`` split only, writing several
altered copies of an image. When a frame or crop name matches several export images, those
outside ``train`` win; if several remain and their masks differ, an error asks for an export
without augmentations instead of guessing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from insplad_tools.errors import InspladError

from annotations.coco_export import ExportImage, RoboflowExport, open_export
from annotations.matching import ThumbIndex, load_rgb, name_keys, pixel_hash, thumbnail
from annotations.rasterize import rasterize_annotation, resize_nearest

Box = tuple[int, int, int, int]


@dataclass
class CropMask:
    mask: np.ndarray              # uint8 0/255, exactly the crop's (H, W)
    annotation_ids: list          # ids of the export annotations that made it
    source: str                   # which export file, relative (``train/x_jpg.rf.<hash>.jpg``)


@dataclass
class _Piece:
    """One annotation rasterised at a target size, kept as its tight bounding box."""

    ann_id: object
    x0: int
    y0: int
    sub: np.ndarray  # bool, the mask inside its tight box

    @property
    def area(self) -> int:
        return int(self.sub.sum())

    def area_in(self, box: Box) -> int:
        bx0, by0, bx1, by1 = box
        h, w = self.sub.shape
        x0, y0 = max(bx0 - self.x0, 0), max(by0 - self.y0, 0)
        x1, y1 = min(bx1 - self.x0, w), min(by1 - self.y0, h)
        if x1 <= x0 or y1 <= y0:
            return 0
        return int(self.sub[y0:y1, x0:x1].sum())

    def paint(self, canvas: np.ndarray, box: Box) -> None:
        """OR this piece into ``canvas``, whose pixel (0, 0) is ``box``'s top-left corner."""
        bx0, by0, bx1, by1 = box
        h, w = self.sub.shape
        x0, y0 = max(bx0, self.x0), max(by0, self.y0)
        x1, y1 = min(bx1, self.x0 + w), min(by1, self.y0 + h)
        if x1 <= x0 or y1 <= y0:
            return
        canvas[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0] |= self.sub[y0 - self.y0:y1 - self.y0, x0 - self.x0:x1 - self.x0]


def _pieces(image: ExportImage, size: tuple[int, int]) -> list[_Piece]:
    out = []
    for ann in image.annotations:
        full = rasterize_annotation(ann, (image.width, image.height), size)
        ys, xs = np.nonzero(full.any(axis=1))[0], np.nonzero(full.any(axis=0))[0]
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        out.append(_Piece(ann.id, x0, y0, full[y0:y1, x0:x1].copy()))
    return out


def _annotated(image: ExportImage) -> bool:
    return any(a.kind in ("polygon", "rle") for a in image.annotations)


@dataclass
class MaskSource:
    """Answers "what is the defect mask of this crop?" from one export. Build with :func:`open_mask_source`."""

    export: RoboflowExport
    kind: str = "auto"                   # "auto", "frames" or "crops"
    inside_fraction: float = 0.5
    max_thumb_distance: float = 6.0
    max_name_distance: float = 12.0      # looser than pixel matching: a name already points at the image
    _by_key: list[dict[str, list[ExportImage]]] = field(default_factory=list, init=False, repr=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)
    _hashes: dict | None = field(default=None, init=False, repr=False)
    _thumbs: ThumbIndex | None = field(default=None, init=False, repr=False)
    _pixels: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "frames", "crops"):
            raise InspladError(f"unknown mask export kind {self.kind!r} (auto, frames or crops)")
        self._by_key = [defaultdict(list) for _ in range(3)]
        for image in self.export.images():
            names = {image.original_name, image.file_name}
            for name in names:
                for level, key in enumerate(name_keys(name)):
                    if image not in self._by_key[level][key]:
                        self._by_key[level][key].append(image)

    # -- lookup ---------------------------------------------------------------------------------
    def images_named(self, name: str) -> list[ExportImage]:
        """Export images whose original (or exported) name matches ``name``, strictest key first."""
        for level, key in enumerate(name_keys(name)):
            found = self._by_key[level].get(key)
            if found:
                return list(found)
        return []

    def _pick(self, images: list[ExportImage], size: tuple[int, int], what: str) -> ExportImage:
        """One image among several name matches (see the module doc on augmented exports)."""
        if len(images) == 1:
            return images[0]
        preferred = [im for im in images if im.split != "train"] or images
        first = preferred[0]
        reference = self._union(first, size)
        for other in preferred[1:]:
            if not np.array_equal(reference, self._union(other, size)):
                names = ", ".join(im.rel for im in preferred)
                raise InspladError(f"{self.export.label}: {what} appears {len(preferred)} times with different masks "
                                   f"({names}); export a version without augmentations")
        return first

    def _pieces(self, image: ExportImage, size: tuple[int, int]) -> list[_Piece]:
        key = (id(image), size)
        if key not in self._cache:
            if len(self._cache) > 64:  # frames come in order; keep memory flat on large exports
                self._cache.clear()
            self._cache[key] = _pieces(image, size)
        return self._cache[key]

    def _union(self, image: ExportImage, size: tuple[int, int]) -> np.ndarray:
        canvas = np.zeros((size[1], size[0]), dtype=bool)
        for piece in self._pieces(image, size):
            piece.paint(canvas, (0, 0, size[0], size[1]))
        return canvas

    def _pixel_indexes(self) -> tuple[dict, ThumbIndex]:
        if self._hashes is None or self._thumbs is None:
            hashes: dict[str, list[ExportImage]] = defaultdict(list)
            items = []
            for image in self.export.images():
                if not image.path.is_file():
                    continue
                rgb = load_rgb(image.path)
                hashes[pixel_hash(rgb)].append(image)
                items.append((image, thumbnail(rgb)))
            self._hashes, self._thumbs = dict(hashes), ThumbIndex.build(items)
        return self._hashes, self._thumbs

    def _export_pixels(self, image: ExportImage) -> np.ndarray | None:
        if id(image) not in self._pixels:
            if len(self._pixels) > 8:
                self._pixels.clear()
            self._pixels[id(image)] = load_rgb(image.path) if image.path.is_file() else None
        return self._pixels[id(image)]

    def verify_match(self, image: ExportImage, crop_pixels: np.ndarray, region: Box | None, frame_size: tuple[int, int],
                     what: str) -> None:
        """A name match must also agree on size and pixels: ``region`` of the export image (``crop_box`` in
        frame coordinates, None for a crop-drawn image) must look like ``crop_pixels``. An export that ships
        no image file cannot be checked and is trusted. :class:`InspladError` otherwise."""
        pixels = self._export_pixels(image)
        if pixels is None:
            return
        h, w = pixels.shape[:2]
        if (w, h) != (image.width, image.height):
            raise InspladError(f"{self.export.label}: {image.rel} is {w}x{h} but its JSON says "
                               f"{image.width}x{image.height}; cannot trust its masks for {what}")
        if region is not None:
            sx, sy = w / frame_size[0], h / frame_size[1]
            x0, y0 = int(region[0] * sx), int(region[1] * sy)
            x1, y1 = max(x0 + 1, int(np.ceil(region[2] * sx))), max(y0 + 1, int(np.ceil(region[3] * sy)))
            pixels = pixels[y0:y1, x0:x1]
        distance = float(np.abs(thumbnail(pixels) - thumbnail(crop_pixels)).mean())
        if distance > self.max_name_distance:
            raise InspladError(f"{self.export.label}: {image.rel} is named like {what} but shows other pixels (mean grey "
                               f"difference {distance:.1f} > {self.max_name_distance:g}): an export of another "
                               "flight or version? Masks are never attached by name alone")

    def find_crop_image(self, crop_pixels: np.ndarray, crop_name: str | None = None) -> ExportImage | None:
        """The export image showing this crop (by name, then exact pixels, then thumbnail), or None."""
        if crop_name:
            named = self.images_named(crop_name)
            if len(named) == 1:
                self.verify_match(named[0], crop_pixels, None, (1, 1), f"crop {crop_name}")
                return named[0]
            if len(named) > 1:  # the same base name in several categories: let the pixels decide
                thumb = thumbnail(crop_pixels)
                index = ThumbIndex.build([(im, thumbnail(load_rgb(im.path))) for im in named if im.path.is_file()])
                return index.nearest(thumb, max_distance=self.max_thumb_distance)  # type: ignore[return-value]
        hashes, thumbs = self._pixel_indexes()
        exact = hashes.get(pixel_hash(crop_pixels))
        if exact:
            return exact[0]
        return thumbs.nearest(thumbnail(crop_pixels), max_distance=self.max_thumb_distance)  # type: ignore[return-value]

    # -- the API ----------------------------------------------------------------------------------
    def mask_for_crop(self, *, frame_name: str, frame_size: tuple[int, int], object_box: Box, crop_box: Box,
                      crop_pixels: np.ndarray, crop_name: str | None = None) -> CropMask | None:
        """The defect mask of one crop, or None when the object has no mask annotation.

        ``frame_size`` is (W, H) after EXIF orientation; ``object_box`` and ``crop_box`` are
        (x0, y0, x1, y1), 0-based with exclusive x1/y1, in frame pixels; ``crop_pixels`` is the
        HxWx3 crop (its shape decides the mask's shape).
        """
        crop_h, crop_w = crop_pixels.shape[:2]
        frame_w, frame_h = (int(v) for v in frame_size)
        object_box = tuple(int(round(float(v))) for v in object_box)  # type: ignore[assignment]
        crop_box = tuple(int(round(float(v))) for v in crop_box)  # type: ignore[assignment]
        if self.kind != "crops":
            frames = self.images_named(frame_name)
            if frames:
                image = self._pick(frames, (frame_w, frame_h), f"frame {frame_name}")
                self.verify_match(image, crop_pixels, crop_box, (frame_w, frame_h), f"frame {frame_name}")
                return self._from_frame(image, (frame_w, frame_h), object_box, crop_box, (crop_w, crop_h))
            if self.kind == "frames":
                return None
        image = self.find_crop_image(crop_pixels, crop_name)
        if image is None or not _annotated(image):
            return None
        pieces = self._pieces(image, (crop_w, crop_h))
        if not pieces:
            return None
        canvas = np.zeros((crop_h, crop_w), dtype=bool)
        for piece in pieces:
            piece.paint(canvas, (0, 0, crop_w, crop_h))
        return CropMask(canvas.astype(np.uint8) * 255, [p.ann_id for p in pieces], image.rel)

    def _from_frame(self, image: ExportImage, frame_size: tuple[int, int], object_box: Box, crop_box: Box,
                    crop_size: tuple[int, int]) -> CropMask | None:
        kept = [p for p in self._pieces(image, frame_size)
                if p.area and p.area_in(object_box) >= self.inside_fraction * p.area]
        if not kept:
            return None
        x0, y0, x1, y1 = (int(v) for v in crop_box)
        if x1 <= x0 or y1 <= y0:
            raise InspladError(f"empty crop box {crop_box} for frame {image.original_name}")
        canvas = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        for piece in kept:
            piece.paint(canvas, (x0, y0, x1, y1))
        if canvas.shape != (crop_size[1], crop_size[0]):  # the crop was resized after cutting
            canvas = resize_nearest(canvas, crop_size)
        if not canvas.any():
            return None
        return CropMask(canvas.astype(np.uint8) * 255, [p.ann_id for p in kept], image.rel)

    def close(self) -> None:
        self.export.close()

    def __enter__(self) -> "MaskSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_mask_source(export: Path | None = None, *, roboflow: str | None = None, cache_dir: Path | None = None,
                     kind: str = "auto") -> MaskSource:
    """Open an export folder/zip (``export``) or download ``WORKSPACE/PROJECT/VERSION`` (``roboflow``).

    Downloads need ``ROBOFLOW_API_KEY`` and are cached under ``cache_dir`` (default
    ``$INSPLAD_CACHE/roboflow`` or ``~/.cache/insplad/roboflow``).
    """
    if (export is None) == (roboflow is None):
        raise InspladError("give exactly one of a mask export (folder or .zip) and --roboflow WORKSPACE/PROJECT/VERSION")
    if roboflow is not None:
        from annotations.download import download_export

        folder = download_export(roboflow, cache_dir=cache_dir)
        return MaskSource(open_export(folder, label=roboflow), kind=kind)
    return MaskSource(open_export(Path(export)), kind=kind)
