"""Plane geometry for the generator: affine maps, convex clipping and shape outlines.

Coordinates are continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``), the convention
PIL uses for its affine transform, so a polygon mapped with the same matrix as its sprite lands
exactly on the pixels that were drawn.
"""

from __future__ import annotations

import functools
import math

import numpy as np

Polygon = np.ndarray  # float array of shape (n, 2)


def rotation_about(cx: float, cy: float, degrees: float) -> np.ndarray:
    """3x3 matrix rotating image points by ``degrees`` (counter-clockwise on screen) about (cx, cy)."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    # y points down in images, so a visually counter-clockwise turn uses this sign pattern.
    rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    return translation(cx, cy) @ rot @ translation(-cx, -cy)


def translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def apply(matrix: np.ndarray, points: Polygon) -> Polygon:
    """Map an (n, 2) array of points through a 3x3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:2, :2].T + matrix[:2, 2]


@functools.lru_cache(maxsize=64)
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> Polygon:
    """Polygon approximating an axis-aligned ellipse."""
    return _unit_circle(n) * (rx, ry) + (cx, cy)


def rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def blob(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, n: int = 18,
         roughness: float = 0.3) -> Polygon:
    """Irregular star-shaped outline: an ellipse whose radius wobbles smoothly."""
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    wobble = np.zeros(n)
    for k in (2, 3, 5):  # a few low harmonics keep the outline organic, not spiky
        wobble += rng.uniform(-1, 1) * np.cos(k * t + rng.uniform(0, 2 * math.pi)) / k
    radius = np.clip(1.0 + roughness * wobble, 0.45, 1.6)
    return np.stack([cx + rx * radius * np.cos(t), cy + ry * radius * np.sin(t)], axis=1)


def convex_hull(points: Polygon) -> Polygon:
    """Monotone-chain convex hull, counter-clockwise in a y-up sense."""
    pts = sorted(set(map(tuple, np.round(np.asarray(points, dtype=np.float64), 6))))
    if len(pts) <= 2:
        return np.array(pts, dtype=np.float64)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1], dtype=np.float64)


def clip_halfplane(poly: Polygon, a: float, b: float, c: float) -> Polygon:
    """Keep the part of ``poly`` where ``a*x + b*y + c >= 0`` (one Sutherland-Hodgman pass)."""
    if len(poly) == 0:
        return poly
    out: list = []
    n = len(poly)
    for i in range(n):
        p, q = poly[i], poly[(i + 1) % n]
        fp = a * p[0] + b * p[1] + c
        fq = a * q[0] + b * q[1] + c
        if fp >= 0:
            out.append(p)
        if (fp >= 0) != (fq >= 0):
            t = fp / (fp - fq)
            out.append(p + t * (q - p))
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def clip_convex(poly: Polygon, clip: Polygon) -> Polygon:
    """Intersect any simple polygon with a convex polygon (Sutherland-Hodgman)."""
    clip = np.asarray(clip, dtype=np.float64)
    if signed_area(clip) < 0:  # make the clip polygon counter-clockwise in a y-down sense
        clip = clip[::-1]
    out = np.asarray(poly, dtype=np.float64)
    n = len(clip)
    for i in range(n):
        p, q = clip[i], clip[(i + 1) % n]
        # Inside is to the left of p->q for a polygon with positive shoelace area.
        a, b = -(q[1] - p[1]), q[0] - p[0]
        c = -(a * p[0] + b * p[1])
        out = clip_halfplane(out, a, b, c)
        if len(out) == 0:
            break
    return out


def clip_box(poly: Polygon, x0: float, y0: float, x1: float, y1: float) -> Polygon:
    """Intersect a polygon with an axis-aligned box."""
    out = clip_halfplane(np.asarray(poly, dtype=np.float64), 1, 0, -x0)
    out = clip_halfplane(out, -1, 0, x1)
    out = clip_halfplane(out, 0, 1, -y0)
    return clip_halfplane(out, 0, -1, y1)


def signed_area(poly: Polygon) -> float:
    """Shoelace area; positive when the vertices run clockwise on screen (y down)."""
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def area(poly: Polygon) -> float:
    return abs(signed_area(poly))


def simplify(poly: Polygon, eps: float = 1e-3) -> Polygon:
    """Drop repeated and collinear vertices left behind by clipping."""
    pts = [p for i, p in enumerate(poly) if i == 0 or np.hypot(*(p - poly[i - 1])) > eps]
    if len(pts) > 1 and np.hypot(*(pts[0] - pts[-1])) <= eps:
        pts.pop()
    keep = []
    n = len(pts)
    for i in range(n):
        a, b, c = pts[i - 1], pts[i], pts[(i + 1) % n]
        cross = (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0])
        if abs(cross) > eps:
            keep.append(b)
    return np.array(keep, dtype=np.float64).reshape(-1, 2)


def rounded_rect(x0: float, y0: float, x1: float, y1: float, radius: float, n: int = 6) -> Polygon:
    """Rectangle with quarter-circle corners of ``radius``."""
    r = max(0.0, min(radius, (x1 - x0) / 2, (y1 - y0) / 2))
    pts = []
    for cx, cy, start in ((x1 - r, y0 + r, -90), (x1 - r, y1 - r, 0), (x0 + r, y1 - r, 90), (x0 + r, y0 + r, 180)):
        for t in np.linspace(math.radians(start), math.radians(start + 90), n):
            pts.append((cx + r * math.cos(t), cy + r * math.sin(t)))
    return np.array(pts, dtype=np.float64)
