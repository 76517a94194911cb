"""Polygon validity tests for annotation QA (shapely-free): area and self-intersection."""

from __future__ import annotations

import numpy as np


def as_points(flat: list[float]) -> np.ndarray:
    """Flat ``[x0, y0, x1, y1, ...]`` -> ``(N, 2)`` float array, closing duplicates and repeats removed."""
    pts = np.asarray(flat[: len(flat) // 2 * 2], dtype=np.float64).reshape(-1, 2)
    if len(pts) > 1:
        keep = np.ones(len(pts), dtype=bool)
        keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
        pts = pts[keep]
    if len(pts) > 1 and np.array_equal(pts[0], pts[-1]):
        pts = pts[:-1]
    return pts


def polygon_area(pts: np.ndarray) -> float:
    """Absolute shoelace area."""
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _orient(ax, ay, bx, by, cx, cy):
    """Sign of the turn a -> b -> c (broadcasting): +1 left, -1 right, 0 collinear."""
    return np.sign((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))


def _within(a, b, c):
    """c lies between a and b (inclusive), per coordinate."""
    return (np.minimum(a, b) <= c) & (c <= np.maximum(a, b))


def self_intersects(pts: np.ndarray, chunk: int = 256) -> bool:
    """True when two non-adjacent edges of the closed polygon touch or cross.

    Every pair of edges is tested with orientation signs (rows in chunks, to bound memory on
    polygons with thousands of points); collinear overlaps and an edge passing through another's
    vertex count as intersections (the polygon is not simple).
    """
    n = len(pts)
    if n < 4:
        return False  # a triangle (or less) cannot cross itself
    nxt = np.roll(pts, -1, axis=0)
    cx, cy, dx, dy = pts[:, 0][None], pts[:, 1][None], nxt[:, 0][None], nxt[:, 1][None]
    cols = np.arange(n)[None]
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))[:, None]
        ax, ay, bx, by = pts[rows, 0], pts[rows, 1], nxt[rows, 0], nxt[rows, 1]
        d1 = _orient(cx, cy, dx, dy, ax, ay)
        d2 = _orient(cx, cy, dx, dy, bx, by)
        d3 = _orient(ax, ay, bx, by, cx, cy)
        d4 = _orient(ax, ay, bx, by, dx, dy)
        hit = (d1 * d2 < 0) & (d3 * d4 < 0)
        # Touching cases: an endpoint collinear with, and within, the other segment.
        hit |= (d1 == 0) & _within(cx, dx, ax) & _within(cy, dy, ay)
        hit |= (d2 == 0) & _within(cx, dx, bx) & _within(cy, dy, by)
        hit |= (d3 == 0) & _within(ax, bx, cx) & _within(ay, by, cy)
        hit |= (d4 == 0) & _within(ax, bx, dx) & _within(ay, by, dy)
        # Only pairs of non-adjacent edges: j >= i + 2, and not the (first, last) pair.
        hit &= cols >= rows + 2
        hit &= ~((rows == 0) & (cols == n - 1))
        if hit.any():
            return True
    return False
