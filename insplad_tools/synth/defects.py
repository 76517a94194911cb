"""Defect painters: corrosion texture and bird nests, with their exact outlines.

Each painter modifies a sprite in place strictly inside the polygon it is given, so that polygon
is the defect's ground truth. (Missing caps are drawn by the glass-insulator drawer itself, since
a missing disc is an absence, not an overlay.)
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from insplad_tools.synth import geometry
from insplad_tools.synth.scene import value_noise


def polygon_mask(size: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    """Float mask in [0, 1] of shape (h, w) with the polygon filled."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in poly.tolist()], fill=255)
    return np.asarray(mask, dtype=np.float32) / 255.0


def rust_region(rng: np.random.Generator, parts: list[np.ndarray], easy: bool) -> np.ndarray:
    """Pick a metal part and an irregular patch on it; the patch clipped to the part is returned."""
    areas = np.array([geometry.area(p) for p in parts])
    if easy:
        order = np.argsort(-areas)  # big patch on the biggest part: unmistakable
        part = parts[int(order[0])]
    else:
        part = parts[int(rng.integers(len(parts)))]
    x0, y0 = part.min(0)
    x1, y1 = part.max(0)
    w, h = x1 - x0, y1 - y0
    for _ in range(12):
        if easy:
            rx, ry = w * rng.uniform(0.35, 0.6), h * rng.uniform(0.35, 0.6)
            cx, cy = x0 + w * rng.uniform(0.35, 0.65), y0 + h * rng.uniform(0.35, 0.65)
        else:
            size = math.sqrt(max(w * h, 1.0))
            rx = ry = size * rng.uniform(0.12, 0.2)
            rx, ry = min(rx, w * 0.4), min(ry, h * 0.4)
            cx, cy = x0 + w * rng.uniform(0.3, 0.7), y0 + h * rng.uniform(0.3, 0.7)
        patch = geometry.clip_convex(geometry.blob(rng, cx, cy, rx, ry, roughness=0.5), part)
        patch = geometry.simplify(patch)
        if len(patch) >= 3 and geometry.area(patch) >= 6.0:
            return patch
    return geometry.simplify(geometry.clip_convex(geometry.ellipse(x0 + w / 2, y0 + h / 2, w / 3, h / 3, 16), part))


def paint_rust(image: Image.Image, poly: np.ndarray, rng: np.random.Generator, easy: bool) -> Image.Image:
    """Rust texture inside ``poly``: orange-brown and saturated when easy, faint and dull when hard."""
    # Work on the polygon's bounding box only; the rest of the sprite is untouched.
    w, h = image.size
    x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int) + 1, [w, h])
    if x1 <= x0 or y1 <= y0:
        return image
    arr = np.asarray(image, dtype=np.float32)[y0:y1, x0:x1].copy()
    bw, bh = x1 - x0, y1 - y0
    mask = polygon_mask((bw, bh), poly - [x0, y0])
    noise = value_noise(rng, bw, bh, (max(3, bw // 10), 3))
    pits = value_noise(rng, bw, bh, (2,))
    if easy:
        light = np.array([186, 92, 34], np.float32)
        dark = np.array([96, 42, 18], np.float32)
        colour = dark + (light - dark) * noise[..., None]
        colour *= (0.75 + 0.35 * pits)[..., None]
        alpha = mask * (0.8 + 0.2 * noise)
    else:
        light = np.array([142, 118, 100], np.float32)
        dark = np.array([112, 96, 84], np.float32)
        colour = dark + (light - dark) * noise[..., None]
        alpha = mask * (0.22 + 0.18 * noise)
    # Keep the metal's own shading under the rust so the part stays three-dimensional.
    lum = arr[..., :3].mean(-1, keepdims=True) / 150.0
    rusty = np.clip(colour * (0.55 + 0.45 * lum), 0, 255)
    arr[..., :3] = arr[..., :3] * (1 - alpha[..., None]) + rusty * alpha[..., None]
    out = image.copy()
    out.paste(Image.fromarray(arr.astype(np.uint8), "RGBA"), (int(x0), int(y0)))
    return out


def nest_region(rng: np.random.Generator, cx: float, base_y: float, length: float, easy: bool) -> np.ndarray:
    """Outline of a nest sitting on a horizontal part whose top edge is at ``base_y``."""
    if easy:
        rx, ry = length * rng.uniform(0.24, 0.32), length * rng.uniform(0.12, 0.16)
    else:
        rx, ry = length * rng.uniform(0.08, 0.11), length * rng.uniform(0.045, 0.06)
    cx = cx + rng.uniform(-0.15, 0.15) * length
    return geometry.simplify(geometry.blob(rng, cx, base_y - ry * 0.35, rx, ry, n=22, roughness=0.35))


def paint_nest(image: Image.Image, poly: np.ndarray, rng: np.random.Generator, easy: bool) -> Image.Image:
    """A tangle of twigs filling ``poly``: dense and dark when easy, sparse and pale when hard."""
    w, h = image.size
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    base = (58, 42, 28, 255) if easy else (126, 114, 98, 150)
    draw.polygon([tuple(p) for p in poly.tolist()], fill=base)
    x0, y0 = poly.min(0)
    x1, y1 = poly.max(0)
    span = max(x1 - x0, y1 - y0)
    n_twigs = int((260 if easy else 30) * max(0.3, span / 80.0))
    palette = ([(150, 118, 70), (104, 78, 48), (182, 150, 96), (72, 54, 34)] if easy
               else [(140, 128, 112), (120, 112, 100)])
    starts = np.stack([rng.uniform(x0, x1, n_twigs), rng.uniform(y0, y1, n_twigs)], 1)
    angles = rng.uniform(-0.5, 0.5, n_twigs) + np.where(rng.random(n_twigs) < 0.8, 0.0, math.pi / 2)
    lengths = rng.uniform(0.15, 0.45, n_twigs) * span
    widths = np.maximum(1, (rng.uniform(0.6, 1.8, n_twigs) * span / 60.0)).astype(int)
    colours = rng.integers(0, len(palette), n_twigs)
    alpha = 255 if easy else 150
    for (sx, sy), a, ln, wd, ci in zip(starts, angles, lengths, widths, colours):
        ex, ey = sx + math.cos(a) * ln, sy + math.sin(a) * ln
        draw.line([(sx, sy), (ex, ey)], fill=palette[ci] + (alpha,), width=int(wd))
    # Clip the twigs to the outline so the polygon is exactly the nest.
    mask = polygon_mask((w, h), poly)
    la = np.asarray(layer).copy()
    la[..., 3] = (la[..., 3].astype(np.float32) * mask).astype(np.uint8)
    return Image.alpha_composite(image, Image.fromarray(la, "RGBA"))
