"""Bilinear resizing of anomaly maps, in numpy (no torch needed to score)."""

from __future__ import annotations

import numpy as np


def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Half-pixel centres (align_corners=False), as torch.nn.functional.interpolate and cv2.resize use.
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo


def resize_bilinear(amap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D map to ``shape`` (rows, cols) by bilinear interpolation without antialiasing."""
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape == tuple(shape):
        return amap
    y0, y1, wy = _axis(amap.shape[0], shape[0])
    x0, x1, wx = _axis(amap.shape[1], shape[1])
    wx = wx.astype(np.float32)
    wy = wy.astype(np.float32)[:, None]
    top = amap[y0][:, x0] * (1 - wx) + amap[y0][:, x1] * wx
    bottom = amap[y1][:, x0] * (1 - wx) + amap[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy
