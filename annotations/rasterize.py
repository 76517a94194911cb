"""Polygons and RLE of an export, rasterised at any resolution.

Convention (COCO's, and pycocotools'): pixel ``(x, y)`` covers the square ``[x, x+1) x [y, y+1)``,
so a polygon drawn on an image exported at ``w x h`` is mapped to the original ``W x H`` by
scaling its vertices by ``W / w`` and ``H / h`` and rasterised there, which is the same mask one
gets by rasterising the original-resolution polygon directly. RLE masks are pixel grids already;
they are mapped with nearest-neighbour sampling at pixel centres. Polygons and RLE both go
through pycocotools, so a polygon and its RLE encoding give the same mask.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from annotations.coco_export import ExportAnnotation


def valid_polygons(polygons: list[list[float]]) -> list[list[float]]:
    """Polygons that can be rasterised: an even number of coordinates, at least 3 points."""
    return [p for p in polygons if len(p) >= 6 and len(p) % 2 == 0 and all(np.isfinite(p))]


def rasterize_polygons(polygons: list[list[float]], size: tuple[int, int],
                       scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Union of ``polygons`` (flat coordinate lists) as a bool ``(H, W)`` mask, ``size`` = (W, H).

    Coordinates are multiplied by ``scale`` = (sx, sy) first. Unusable polygons are skipped.
    """
    width, height = size
    polys = valid_polygons(polygons)
    if not polys:
        return np.zeros((height, width), dtype=bool)
    sx, sy = scale
    scaled = []
    for p in polys:
        arr = np.asarray(p, dtype=np.float64).reshape(-1, 2) * (sx, sy)
        scaled.append(arr.ravel().tolist())
    rles = mask_utils.frPyObjects(scaled, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def rle_counts(text: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string (the LEB128-like code of pycocotools' ``rleFrString``),
    decoded in Python so that they can be checked before C code trusts them."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("truncated run length")
            c = ord(text[pos]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {text[pos]!r} at {pos}")
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            pos += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
            if shift > 7:
                raise ValueError("run length too long")
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_rle(rle: dict) -> np.ndarray:
    """A COCO RLE (compressed string counts or uncompressed list counts) as a bool ``(h, w)`` mask."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        encoded = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        encoded = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(encoded).astype(bool)


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D mask to ``size`` = (W, H), sampling at pixel centres."""
    height, width = mask.shape
    out_w, out_h = size
    if (width, height) == (out_w, out_h):
        return mask
    xs = np.minimum(((np.arange(out_w) + 0.5) * width / out_w).astype(np.int64), width - 1)
    ys = np.minimum(((np.arange(out_h) + 0.5) * height / out_h).astype(np.int64), height - 1)
    return mask[ys[:, None], xs[None, :]]


def rasterize_annotation(ann: ExportAnnotation, export_size: tuple[int, int],
                         size: tuple[int, int]) -> np.ndarray:
    """Mask of one export annotation drawn on an image of ``export_size`` (W, H), at ``size`` (W, H)."""
    ew, eh = export_size
    width, height = size
    if ann.kind == "polygon":
        return rasterize_polygons(ann.polygons, size, (width / ew, height / eh))
    if ann.kind == "rle" and ann.rle is not None:
        return resize_nearest(decode_rle(ann.rle), size)
    return np.zeros((height, width), dtype=bool)
