"""Input checks shared by the metrics: one clear ``ValueError`` per kind of bad input."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def labels_and_scores(labels: Sequence, scores: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Validate image-level inputs: 0/1 labels with both classes, finite scores of the same length."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    y = binary(y, "labels")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    both_classes(y, "labels")
    return y, s


def binary(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as a boolean array; they must be bool or numbers equal to 0 or 1."""
    if values.dtype == bool:
        return values
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise ValueError(f"{what} must be boolean or 0/1 numbers, got dtype {values.dtype}")
    ok = (values == 0) | (values == 1)
    if not ok.all():
        bad = values[~ok].flat[0]
        raise ValueError(f"{what} must contain only 0 and 1, found {bad!r}")
    return values == 1


def both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        kind = "anomalous" if n_pos == 0 else "normal"
        raise ValueError(f"{what} hold a single class (no {kind} samples): the metric is undefined")


def score_dtype(maps: Sequence[np.ndarray]) -> np.dtype:
    """float32 for float16/float32 maps (no precision lost), float64 when any map is float64 or integer."""
    dtypes = {np.asarray(m).dtype for m in maps}
    if all(d in (np.float16, np.float32) for d in dtypes):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def masks_and_maps(masks: Sequence, maps: Sequence) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate pixel-level inputs: equal counts, 2-D pairs of equal shapes, 0/1 masks, finite maps."""
    if len(masks) != len(maps):
        raise ValueError(f"got {len(masks)} masks but {len(maps)} maps")
    if len(masks) == 0:
        raise ValueError("no masks/maps given")
    dtype = score_dtype(maps)
    out_masks, out_maps = [], []
    for i, (mask, amap) in enumerate(zip(masks, maps)):
        mask, amap = np.asarray(mask), np.asarray(amap)
        if mask.ndim != 2 or amap.ndim != 2:
            raise ValueError(f"image {i}: masks and maps must be 2-D, got shapes {mask.shape} and {amap.shape}")
        if mask.shape != amap.shape:
            raise ValueError(f"image {i}: mask shape {mask.shape} differs from map shape {amap.shape}")
        amap = amap.astype(dtype, copy=False)
        if not np.isfinite(amap).all():
            raise ValueError(f"image {i}: map contains NaN or inf")
        out_masks.append(binary(mask, f"mask {i}"))
        out_maps.append(amap)
    return out_masks, out_maps
