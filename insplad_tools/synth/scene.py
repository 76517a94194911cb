"""Backgrounds of the synthetic UAV frames: sky, clouds, ground, lattice steel and conductors.

Everything expensive is computed at a quarter of the frame resolution and upsampled by PIL (a
defocused background is what a drone camera focused on the hardware sees anyway); only a shared
grain tile and line drawing touch full-resolution pixels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

GRAIN_MAX = 24  # the grain's amplitude; drawn colours keep this much headroom at both ends


@dataclass(frozen=True)
class TowerLook:
    """What every photo of one tower shares: its steel, its surroundings, the weather."""

    steel: tuple[int, int, int]
    sky_top: tuple[int, int, int]
    sky_horizon: tuple[int, int, int]
    ground: tuple[int, int, int]
    ground_alt: tuple[int, int, int]
    cloudiness: float
    looking_down: float  # probability that a frame shows mostly ground
    sun_angle: float  # direction of the key light on the assets, degrees


def random_look(rng: np.random.Generator) -> TowerLook:
    steel_v = int(rng.integers(95, 175))
    tint = rng.integers(-8, 9)
    blue = rng.uniform(0.0, 1.0)
    sky_top = (int(70 + 60 * (1 - blue)), int(120 + 40 * (1 - blue)), int(190 + 30 * (1 - blue)))
    green = rng.uniform(0.0, 1.0)
    ground = (int(62 + 50 * (1 - green)), int(82 + 22 * green), int(42 + 22 * (1 - green)))
    dry = (int(rng.integers(120, 170)), int(rng.integers(100, 140)), int(rng.integers(65, 95)))
    return TowerLook(
        steel=(steel_v + int(tint), steel_v + 2, steel_v - int(tint)),
        sky_top=sky_top,
        sky_horizon=(int(rng.integers(195, 235)),) * 2 + (int(rng.integers(215, 245)),),
        ground=ground,
        ground_alt=dry,
        cloudiness=float(rng.uniform(0.0, 0.8)),
        looking_down=float(rng.uniform(0.2, 0.8)),
        sun_angle=float(rng.uniform(0, 360)),
    )


@functools.lru_cache(maxsize=4)
def _grain_tile(size: int = 256) -> np.ndarray:
    """A fixed tile of smoothed noise (int16, zero mean) reused by every frame for fine texture."""
    rng = np.random.default_rng(20240607)
    raw = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    # A little smoothing so the grain looks like foliage/sensor texture rather than salt-and-pepper.
    smooth = (raw + np.roll(raw, 1, 0) + np.roll(raw, 1, 1) + np.roll(np.roll(raw, 1, 0), 1, 1)) / 2.0
    return np.clip(smooth * 5.0, -GRAIN_MAX, GRAIN_MAX).astype(np.int16)


def value_noise(rng: np.random.Generator, width: int, height: int, cells: tuple[int, ...]) -> np.ndarray:
    """Fractal value noise in [0, 1] of shape (height, width): sum of upsampled random grids."""
    total = np.zeros((height, width), dtype=np.float32)
    weight = 0.0
    for i, cell in enumerate(cells):
        gw, gh = max(2, width // cell + 2), max(2, height // cell + 2)
        grid = (rng.random((gh, gw)) * 255).astype(np.uint8)
        up = Image.fromarray(grid).resize((width, height), Image.BICUBIC)
        amp = 0.55 ** i
        total += np.asarray(up, dtype=np.float32) * amp
        weight += amp
    return total / (255.0 * weight)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = (b - a) * t[..., None]
    out += a
    return out


_LOW = 8  # the background is computed at 1/_LOW of the frame size (cell sizes below are in those pixels)


def _upscale(img: Image.Image, width: int, height: int) -> Image.Image:
    """Smooth upscaling at half the cost: bilinear to half size, then pixel doubling (hidden by the grain)."""
    half = img.resize(((width + 1) // 2, (height + 1) // 2), Image.BILINEAR)
    return half.resize((width, height), Image.NEAREST)


def render_background(rng: np.random.Generator, width: int, height: int, look: TowerLook,
                      cast: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Image.Image:
    """Sky with clouds and/or defocused ground, seen by a tilted drone camera."""
    lw, lh = max(8, width // _LOW), max(8, height // _LOW)
    ys, xs = np.mgrid[0:lh, 0:lw].astype(np.float32)
    u, v = xs / lw, ys / lh
    # The horizon is a tilted line; frames that look down put it above the top edge.
    if rng.random() < look.looking_down:
        horizon = rng.uniform(-0.6, 0.25)
    else:
        horizon = rng.uniform(0.35, 1.3)
    tilt = math.tan(math.radians(rng.uniform(-12, 12)))
    dist = v - (horizon + tilt * (u - 0.5))  # >0 below the horizon

    sky_t = np.clip(-dist / 0.8, 0, 1) ** 0.6  # 0 at the horizon, 1 high up
    sky = _mix(np.array(look.sky_horizon, np.float32)[None, None], np.array(look.sky_top, np.float32)[None, None],
               sky_t)
    if look.cloudiness > 0.05:
        clouds = value_noise(rng, lw, lh, (30, 8))
        cover = np.clip((clouds - (1.0 - look.cloudiness) * 0.75) * 3.0, 0, 1)
        shade = 0.82 + 0.18 * value_noise(rng, lw, lh, (10,))
        sky = _mix(sky, np.stack([shade * 245, shade * 246, shade * 250], -1), cover)

    field = value_noise(rng, lw, lh, (19, 5, 2))
    patches = value_noise(rng, lw, lh, (38,))
    ground = _mix(np.array(look.ground, np.float32)[None, None], np.array(look.ground_alt, np.float32)[None, None],
                  np.clip((patches - 0.45) * 3.0, 0, 1))
    ground = ground * (0.62 + 0.6 * field)[..., None]
    # Aerial haze lightens the ground towards the horizon.
    haze = np.clip(1.0 - dist / 0.35, 0, 1) ** 2 * 0.6
    ground = _mix(ground, np.array(look.sky_horizon, np.float32)[None, None], haze)

    below = np.clip(dist * lh / 2.0 + 0.5, 0, 1)
    low = _mix(sky, ground, below)
    low = low * np.asarray(cast, np.float32)
    # Keep GRAIN_MAX of headroom on both ends so the grain can be added modulo 256 without wrapping.
    return _upscale(Image.fromarray(np.clip(low, GRAIN_MAX, 255 - GRAIN_MAX).astype(np.uint8)), width, height)


def add_grain(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Sensor grain over the finished frame: one of a few cached grain images, added in one C loop.

    Everything drawn into a frame stays within ``[GRAIN_MAX, 255 - GRAIN_MAX]`` (see :func:`safe`),
    so adding modulo 256 is exact and several times faster than a saturating add.
    """
    grain = _grain_images(*image.size)[int(rng.integers(0, _GRAIN_VARIANTS))]
    return ImageChops.add_modulo(image, grain)


def safe(colour: tuple) -> tuple:
    """Clamp an RGB colour into the range that leaves room for the grain."""
    return tuple(int(min(255 - GRAIN_MAX, max(GRAIN_MAX, c))) for c in colour)


_GRAIN_VARIANTS = 4


@functools.lru_cache(maxsize=2)
def _grain_images(width: int, height: int) -> tuple[Image.Image, ...]:
    """A few frame-sized grain images (the shared tile at different offsets), stored modulo 256."""
    tile = _grain_tile()
    th, tw = tile.shape
    big = np.tile(tile, (height // th + 2, width // tw + 2))
    out = []
    for i in range(_GRAIN_VARIANTS):
        oy, ox = (i * 97) % th, (i * 61) % tw
        lum = Image.fromarray((big[oy:oy + height, ox:ox + width] % 256).astype(np.uint8))
        out.append(Image.merge("RGB", (lum, lum, lum)))
    return tuple(out)


def _angle_iron(draw: ImageDraw.ImageDraw, p0: tuple, p1: tuple, width: int, colour: tuple) -> None:
    """An angle-steel member: a lit flange and a shadowed one side by side."""
    dark = tuple(int(c * 0.58) for c in colour)
    draw.line([p0, p1], fill=safe(dark), width=width)
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    norm = math.hypot(dx, dy) or 1.0
    off = width * 0.22
    ox, oy = -dy / norm * off, dx / norm * off
    draw.line([(p0[0] + ox, p0[1] + oy), (p1[0] + ox, p1[1] + oy)], fill=safe(colour), width=max(1, width // 2))


def draw_lattice(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int,
                 look: TowerLook, scale: float) -> None:
    """Steel of the tower: a tapering lattice section (two legs with zig-zag bracing) and/or loose members."""
    steel = np.array(look.steel, dtype=np.float64)

    def tone(lo: float, hi: float) -> tuple:
        return tuple(int(c) for c in np.clip(steel * rng.uniform(lo, hi), 0, 255))

    size = math.hypot(width, height)
    if rng.random() < 0.75:
        theta = math.radians(rng.uniform(60, 120) if rng.random() < 0.6 else rng.uniform(-25, 25))
        u = np.array([math.cos(theta), math.sin(theta)])
        n = np.array([-u[1], u[0]])
        centre = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height])
        half = rng.uniform(0.12, 0.35) * width
        taper = rng.uniform(0.0, 0.35) / size
        step = half * rng.uniform(0.7, 1.3)
        leg_w = max(2, int(rng.uniform(12, 26) * scale))
        brace_w = max(2, int(leg_w * rng.uniform(0.4, 0.6)))
        ts = np.arange(-size, size + step, step)

        def side(t: float, sign: int) -> tuple:
            p = centre + u * t + sign * n * half * (1.0 - taper * t)
            return float(p[0]), float(p[1])

        brace = tone(0.75, 1.0)
        for k in range(len(ts) - 1):
            a, b = ts[k], ts[k + 1]
            _angle_iron(draw, side(a, -1 if k % 2 else 1), side(b, 1 if k % 2 else -1), brace_w, brace)
            if rng.random() < 0.35:  # some panels are X-braced
                _angle_iron(draw, side(a, 1 if k % 2 else -1), side(b, -1 if k % 2 else 1), brace_w, brace)
        legs = tone(0.85, 1.1)
        for sign in (-1, 1):
            _angle_iron(draw, side(-size, sign), side(size, sign), leg_w, legs)
    for _ in range(int(rng.integers(0, 3))):  # loose members of a neighbouring panel or crossarm
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        ang = math.radians(rng.uniform(0, 180))
        x1, y1 = x0 + math.cos(ang) * size, y0 + math.sin(ang) * size
        x0, y0 = x0 - math.cos(ang) * size, y0 - math.sin(ang) * size
        _angle_iron(draw, (x0, y0), (x1, y1), max(2, int(rng.uniform(6, 18) * scale)), tone(0.6, 1.0))


def draw_conductors(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int,
                    scale: float) -> None:
    """Sagging conductors (bundled pairs sometimes) running across the frame."""
    n = int(rng.integers(1, 5))
    for _ in range(n):
        y_left, y_right = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * height
        sag = rng.uniform(0.02, 0.15) * height
        xs = np.linspace(-20, width + 20, 24)
        t = (xs + 20) / (width + 40)
        ys = y_left + (y_right - y_left) * t + sag * 4 * t * (1 - t)
        tone = int(rng.integers(35, 90))
        w = max(1, int(rng.uniform(2, 6) * scale))
        bundle = 2 if rng.random() < 0.3 else 1
        gap = rng.uniform(8, 20) * scale
        for b in range(bundle):
            pts = list(zip(xs.tolist(), (ys + b * gap).tolist()))
            draw.line(pts, fill=safe((tone, tone, tone + 4)), width=w)
            if w >= 3:
                hi = min(255, tone + 70)
                draw.line([(x, y - w / 3) for x, y in pts], fill=safe((hi, hi, hi)), width=1)
