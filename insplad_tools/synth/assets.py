"""One drawing function per asset class, producing an RGBA sprite and its defect outlines.

An :class:`AssetSpec` is one physical object on a tower. Its appearance comes only from its own
seed, so every frame of that tower shows the same insulator (at a different pose and light);
defect geometry comes from a second stream of the same seed, so :func:`draw_asset` with
``with_defect=False`` draws exactly the same object, intact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from insplad_tools.synth import defects as defect_painters
from insplad_tools.synth import geometry

GLASS = "glass-insulator"
LRS = "lightning-rod-suspension"
POLYMER = "polymer-insulator-upper-shackle"
VARI = "vari-grip"
YOKE = "yoke-suspension"
DAMPER = "damper"

FAULT_CLASSES: tuple[str, ...] = (GLASS, LRS, POLYMER, VARI, YOKE)
DISTRACTOR_CLASSES: tuple[str, ...] = (DAMPER,)

MISSING_CAP, CORROSION, BIRD_NEST, NORMAL = "missing-cap", "corrosion", "bird-nest", "normal"
DEFECT_TYPES: tuple[str, ...] = (MISSING_CAP, CORROSION, BIRD_NEST)
DEFECTS_BY_CLASS: dict[str, tuple[str, ...]] = {
    GLASS: (MISSING_CAP,),
    LRS: (CORROSION,),
    POLYMER: (CORROSION,),
    VARI: (BIRD_NEST, CORROSION),
    YOKE: (CORROSION,),
    DAMPER: (),
}

# Typical size (longest side, pixels) in a 1280-pixel-wide frame at the nominal flying distance.
REFERENCE_SIZE: dict[str, tuple[float, float]] = {
    GLASS: (260, 380), LRS: (150, 210), POLYMER: (160, 230), VARI: (170, 250), YOKE: (170, 240), DAMPER: (140, 200),
}


SUPERSAMPLE = 2
SUPERSAMPLE_BELOW = 260  # sprites longer than this (pixels) are drawn at 1x: their stair-steps are small


@dataclass(frozen=True)
class AssetSpec:
    """One physical asset: class, condition and the seed its looks and defect come from."""

    cls: str
    seed: int
    condition: str = NORMAL
    difficulty: str = "easy"

    @property
    def defective(self) -> bool:
        return self.condition != NORMAL


@dataclass
class Sprite:
    """A drawn asset: RGBA image plus defect outlines in the image's pixel coordinates."""

    image: Image.Image
    defects: list[tuple[str, np.ndarray]] = field(default_factory=list)
    # Conductors/members the object hangs on, to be continued across the frame behind it:
    # (two points in sprite pixels, both_ways, width in pixels, RGB).
    links: list[tuple[np.ndarray, bool, float, tuple[int, int, int]]] = field(default_factory=list)


class _Pen:
    """Draws upright "local" geometry straight into a rotated, supersampled canvas.

    Drawers think in upright pixel coordinates of the asset (``width`` x ``height``); the pen maps
    every vertex through the pose, so the sprite needs no raster rotation and stays sharp, and
    drawing small sprites at ``SUPERSAMPLE``x then reducing gives anti-aliased edges cheaply. ``final`` maps
    local coordinates to the pixels of the finished sprite (used for the defect outlines).
    """

    def __init__(self, width: float, height: float, angle: float = 0.0):
        self.width, self.height = float(width), float(height)
        rot = geometry.rotation_about(width / 2, height / 2, angle)
        corners = geometry.apply(rot, geometry.rect(0, 0, width, height))
        lo = np.floor(corners.min(0)) - 2
        hi = np.ceil(corners.max(0)) + 2
        self.size = (max(4, int(hi[0] - lo[0])), max(4, int(hi[1] - lo[1])))
        self.final = geometry.translation(-lo[0], -lo[1]) @ rot
        self.ss = SUPERSAMPLE if max(width, height) < SUPERSAMPLE_BELOW else 1
        self.matrix = np.diag([self.ss, self.ss, 1.0]) @ self.final
        self.image = Image.new("RGBA", (self.size[0] * self.ss, self.size[1] * self.ss), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)
        self.parts: list[np.ndarray] = []  # rust-able metal pieces (convex, local coordinates)
        self.links: list[tuple[np.ndarray, bool, float, tuple[int, int, int]]] = []

    def link(self, x0: float, y0: float, x1: float, y1: float, width: float, colour: tuple,
             both_ways: bool = True) -> None:
        """Record a wire (both ways) or a hanger (from the first point through the second) to extend."""
        self.links.append((geometry.apply(self.final, np.array([[x0, y0], [x1, y1]])), both_ways, width,
                           tuple(int(c) for c in colour[:3])))

    def poly(self, pts: np.ndarray, fill: tuple, outline: tuple | None = None, part: bool = False) -> None:
        if len(pts) < 3:
            return
        mapped = geometry.apply(self.matrix, pts)
        self.draw.polygon(mapped.ravel().tolist(), fill=_rgba(fill), outline=_rgba(outline) if outline else None)
        if part:
            self.parts.append(np.asarray(pts, dtype=np.float64))

    def bar(self, x0: float, y0: float, x1: float, y1: float, colour: tuple, part: bool = False,
            vertical: bool = True) -> None:
        """A shaded cylinder-like bar: dark edges, a highlight a third of the way across."""
        self.poly(geometry.rect(x0, y0, x1, y1), _scale(colour, 0.62), part=part)
        bands = (0.12, 0.3, 0.45, 0.75, 0.9)
        gains = (0.85, 1.22, 1.05, 0.85)
        for i, g in enumerate(gains):
            if vertical:
                a, b = x0 + (x1 - x0) * bands[i], x0 + (x1 - x0) * bands[i + 1]
                self.poly(geometry.rect(a, y0, b, y1), _scale(colour, g))
            else:
                a, b = y0 + (y1 - y0) * bands[i], y0 + (y1 - y0) * bands[i + 1]
                self.poly(geometry.rect(x0, a, x1, b), _scale(colour, g))

    def circle(self, cx: float, cy: float, r: float, fill: tuple, outline: tuple | None = None) -> None:
        self.poly(geometry.ellipse(cx, cy, r, r, 20), fill, outline)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: tuple) -> None:
        self.poly(geometry.ellipse(cx, cy, rx, ry, 36), fill)

    def rounded(self, x0: float, y0: float, x1: float, y1: float, radius: float, fill: tuple) -> None:
        self.poly(geometry.rounded_rect(x0, y0, x1, y1, radius), fill)

    def line(self, pts: list, colour: tuple, width: float) -> None:
        mapped = geometry.apply(self.matrix, np.asarray(pts, dtype=np.float64))
        self.draw.line([tuple(p) for p in mapped.tolist()], fill=_rgba(colour),
                       width=max(1, int(round(width * self.ss))))

    def map(self, pts: np.ndarray) -> np.ndarray:
        """Local coordinates -> pixels of the finished sprite."""
        return geometry.apply(self.final, pts)

    def finish(self) -> Image.Image:
        return self.image.reduce(self.ss) if self.ss > 1 else self.image

    def sprite(self) -> "Sprite":
        return Sprite(self.finish(), links=list(self.links))


def _rgba(c: tuple) -> tuple:
    return tuple(int(v) for v in c) + ((255,) if len(c) == 3 else ())


def _scale(c: tuple, g: float) -> tuple:
    return tuple(int(min(255, max(0, v * g))) for v in c[:3]) + tuple(c[3:])


def _metal(rng: np.random.Generator, lo: int = 120, hi: int = 185) -> tuple[int, int, int]:
    v = int(rng.integers(lo, hi))
    warm = int(rng.integers(-6, 7))
    return (v + warm, v + 1, v - warm + 3)


# --- the five InsPLAD-fault classes ---------------------------------------------------------


_EXPOSED = (104, 80, 62)  # cap and pin left bare by a missing glass shell


def _glass_insulator(rng: np.random.Generator, drng: np.random.Generator, k: float, spec: AssetSpec,
                     with_defect: bool, angle: float) -> Sprite:
    length = rng.uniform(*REFERENCE_SIZE[GLASS]) * k
    n = int(rng.integers(7, 12))
    fit = length * 0.06
    spacing = (length - 2 * fit) / (n + 0.6)
    d = spacing * rng.uniform(2.1, 2.6)
    tilt = rng.uniform(0.28, 0.45)
    palette = [(64, 128, 112), (78, 140, 150), (104, 148, 150), (70, 112, 96), (126, 158, 168), (92, 132, 84)]
    glass = palette[int(rng.integers(len(palette)))]
    metal = _metal(rng, 110, 170)
    pen = _Pen(d * 1.06, length, angle)
    cx = pen.width / 2
    ry = d * tilt / 2
    # Pin/rod through the string, then the end fittings.
    pen.bar(cx - d * 0.045, fit * 0.5, cx + d * 0.045, length - fit * 0.5, _scale(metal, 0.7))
    pen.bar(cx - d * 0.12, 0, cx + d * 0.12, fit * 1.1, metal)
    pen.link(cx, fit * 0.5, cx, -1.0, d * 0.09, _scale(metal, 0.8), both_ways=False)
    pen.bar(cx - d * 0.12, length - fit * 1.1, cx + d * 0.12, length - 1, metal)
    centres = [fit + spacing * (i + 0.5) + ry * 0.3 for i in range(n)]

    missing: set[int] = set()
    broken: int | None = None
    cut: tuple[float, float, float] | None = None
    region: np.ndarray | None = None
    if spec.condition == MISSING_CAP:
        if spec.difficulty == "easy":
            m = min(int(drng.integers(2, 5)), n - 3)  # several discs gone: a gap nobody can miss
            start = int(drng.integers(1, max(2, n - m)))
            missing = set(range(start, min(n - 1, start + m)))
        else:
            broken = int(drng.integers(1, n - 1))
            side = 1 if drng.random() < 0.5 else -1
            depth = d * drng.uniform(0.22, 0.32)  # how far the chip reaches in from the rim
            ang = math.radians(drng.uniform(-25, 25))
            # Keep a*x + b*y + c >= 0: the part of the disc that is still there.
            a, b = -side * math.cos(ang), -side * math.sin(ang)
            px, py = cx + side * (d / 2 - depth), centres[broken]
            cut = (a, b, -(a * px + b * py))

    def outline(i: int) -> np.ndarray:
        y = centres[i]
        return geometry.convex_hull(np.vstack([geometry.ellipse(cx, y, d / 2, ry, 32),
                                               geometry.ellipse(cx, y + ry * 0.45, d / 2 * 0.97, ry, 32)]))

    for i in reversed(range(n)):  # the camera is above: upper discs hide the ones below
        y = centres[i]
        cap = geometry.rect(cx - d * 0.11, y - ry * 1.05, cx + d * 0.11, y - ry * 0.2)
        if i in missing and with_defect:
            # The cap and pin stay when the glass shell is gone, weathered dark without its cover.
            pen.bar(cx - d * 0.05, y - ry, cx + d * 0.05, y + ry * 1.4, _EXPOSED)
            pen.poly(geometry.rect(cx - d * 0.11, y - ry * 0.95, cx + d * 0.11, y - ry * 0.2), _scale(_EXPOSED, 1.15))
            continue
        shapes = [
            (geometry.ellipse(cx, y + ry * 0.45, d / 2 * 0.97, ry, 40), _scale(glass, 0.55)),
            (geometry.ellipse(cx, y, d / 2, ry, 40), glass),
            (geometry.ellipse(cx - d * 0.06, y - ry * 0.12, d * 0.33, ry * 0.55, 32), _scale(glass, 1.28)),
            (geometry.ellipse(cx - d * 0.22, y - ry * 0.2, d * 0.1, ry * 0.18, 16), _scale(glass, 1.75)),
        ]
        for shape, colour in shapes:
            if i == broken and with_defect and cut is not None:
                # A chipped shell: the broken-off piece shows slightly duller glass, nothing more.
                a, b, c = cut
                pen.poly(geometry.clip_halfplane(shape, *cut), colour)
                pen.poly(geometry.clip_halfplane(shape, -a, -b, -c), _scale(colour, 0.84))
            else:
                pen.poly(shape, colour)
        pen.poly(cap, metal)

    sprite = pen.sprite()
    if spec.condition == MISSING_CAP:
        if missing:
            region = geometry.convex_hull(np.vstack([outline(i) for i in sorted(missing)]))
        elif broken is not None and cut is not None:
            a, b, c = cut
            region = geometry.simplify(geometry.clip_halfplane(outline(broken), -a, -b, -c))
        if region is not None and with_defect:
            sprite.defects.append((MISSING_CAP, pen.map(region)))
    return sprite


def _lightning_rod_suspension(rng: np.random.Generator, drng: np.random.Generator, k: float, spec: AssetSpec,
                              with_defect: bool, angle: float) -> Sprite:
    length = rng.uniform(*REFERENCE_SIZE[LRS]) * k
    width = length * rng.uniform(0.65, 0.8)
    metal = _metal(rng, 105, 165)
    pen = _Pen(width, length, angle)
    cx = width / 2
    # Tower-side plate with its bolt.
    plate = geometry.rect(cx - length * 0.11, 0, cx + length * 0.11, length * 0.16)
    pen.poly(plate, metal, outline=_scale(metal, 0.6), part=True)
    pen.circle(cx, length * 0.07, length * 0.03, _scale(metal, 0.5))
    # Two straps of the hanging link.
    gap = length * rng.uniform(0.05, 0.08)
    sw = length * 0.045
    for side in (-1, 1):
        x = cx + side * gap
        pen.bar(x - sw / 2, length * 0.12, x + sw / 2, length * 0.56, metal, part=True)
    pen.bar(cx - gap - sw, length * 0.5, cx + gap + sw, length * 0.55, _scale(metal, 0.9), vertical=False)
    for y in (length * 0.16, length * 0.52):
        pen.circle(cx, y, length * 0.028, _scale(metal, 1.15), outline=_scale(metal, 0.5))
    # The shield wire and the trough clamp holding it.
    wire_y = length * 0.8
    pen.bar(0, wire_y - length * 0.025, width, wire_y + length * 0.025, (70, 70, 74), vertical=False)
    pen.link(0, wire_y, width, wire_y, length * 0.05, (70, 70, 74))
    pen.link(cx, length * 0.05, cx, -1.0, length * 0.12, _scale(metal, 0.75), both_ways=False)
    clamp = np.array([[cx - width * 0.36, wire_y - length * 0.1], [cx + width * 0.36, wire_y - length * 0.1],
                      [cx + width * 0.26, wire_y + length * 0.12], [cx - width * 0.26, wire_y + length * 0.12]])
    pen.poly(clamp, metal, outline=_scale(metal, 0.55), part=True)
    pen.poly(np.array([[cx - width * 0.3, wire_y - length * 0.1], [cx + width * 0.3, wire_y - length * 0.1],
                       [cx + width * 0.25, wire_y - length * 0.04], [cx - width * 0.25, wire_y - length * 0.04]]),
             _scale(metal, 1.2))
    pen.bar(cx - length * 0.05, length * 0.55, cx + length * 0.05, wire_y - length * 0.09, metal)
    for side in (-1, 1):  # U-bolt nuts
        pen.circle(cx + side * width * 0.22, wire_y + length * 0.06, length * 0.028, _scale(metal, 0.8))
    return _finish_metal(pen, drng, spec, with_defect)


def _polymer_upper_shackle(rng: np.random.Generator, drng: np.random.Generator, k: float, spec: AssetSpec,
                           with_defect: bool, angle: float) -> Sprite:
    length = rng.uniform(*REFERENCE_SIZE[POLYMER]) * k
    width = length * rng.uniform(0.6, 0.72)
    metal = _metal(rng, 120, 180)
    rubber = [(105, 108, 112), (128, 130, 132), (150, 80, 62), (84, 86, 90)][int(rng.integers(4))]
    pen = _Pen(width, length, angle)
    cx = width / 2
    # Shackle: two legs joined by a bow at the top, a bolt across the legs.
    leg = length * 0.06
    half = length * rng.uniform(0.09, 0.12)
    bow_top = length * 0.02
    pen.link(cx, bow_top + leg, cx, -1.0, leg * 1.2, _scale(metal, 0.7), both_ways=False)
    pen.ellipse(cx, bow_top + half + leg, half + leg, half + leg, _scale(metal, 0.75))
    pen.ellipse(cx, bow_top + leg + half, half, half, (0, 0, 0, 0))
    leg_top = bow_top + half + leg
    for side in (-1, 1):
        x = cx + side * (half + leg / 2)
        pen.bar(x - leg / 2, leg_top, x + leg / 2, length * 0.36, metal, part=True)
    pen.bar(cx - half - leg * 1.6, length * 0.3, cx + half + leg * 1.6, length * 0.34, _scale(metal, 1.05),
            vertical=False)
    for side in (-1, 1):
        pen.circle(cx + side * (half + leg * 1.7), length * 0.32, leg * 0.7, _scale(metal, 0.65))
    # Tongue and crimped end fitting.
    pen.bar(cx - half * 0.55, length * 0.25, cx + half * 0.55, length * 0.42, metal)
    fit_w = length * rng.uniform(0.1, 0.13)
    pen.bar(cx - fit_w, length * 0.4, cx + fit_w, length * 0.62, metal, part=True)
    pen.bar(cx - fit_w * 1.08, length * 0.5, cx + fit_w * 1.08, length * 0.53, _scale(metal, 0.8), vertical=False)
    # Polymer core and the first sheds, cut by the crop's lower edge.
    pen.bar(cx - length * 0.04, length * 0.6, cx + length * 0.04, length, rubber)
    shed_r = width * rng.uniform(0.38, 0.47)
    for j, y in enumerate(np.arange(length * 0.7, length * 1.05, length * 0.13)):
        r = shed_r if j % 2 == 0 else shed_r * 0.8
        pen.poly(geometry.ellipse(cx, y + length * 0.02, r, length * 0.045, 36), _scale(rubber, 0.6))
        pen.poly(geometry.ellipse(cx, y, r, length * 0.045, 36), rubber)
        pen.poly(geometry.ellipse(cx - r * 0.25, y - length * 0.01, r * 0.45, length * 0.016, 20),
                 _scale(rubber, 1.3))
    return _finish_metal(pen, drng, spec, with_defect)


def _vari_grip(rng: np.random.Generator, drng: np.random.Generator, k: float, spec: AssetSpec,
               with_defect: bool, angle: float) -> Sprite:
    length = rng.uniform(*REFERENCE_SIZE[VARI]) * k
    height = length * 0.72
    alu = _metal(rng, 165, 205)
    pen = _Pen(length, height, angle)
    cx = length / 2
    body_top, body_bot = height * 0.56, height * 0.8
    wire_y = (body_top + body_bot) / 2
    # Upper link and bracket.
    pen.bar(cx - length * 0.03, 0, cx + length * 0.03, height * 0.3, _scale(alu, 0.85))
    bracket = np.array([[cx - length * 0.07, height * 0.26], [cx + length * 0.07, height * 0.26],
                        [cx + length * 0.16, body_top + 2], [cx - length * 0.16, body_top + 2]])
    pen.poly(bracket, _scale(alu, 0.95), outline=_scale(alu, 0.6), part=True)
    pen.circle(cx, height * 0.34, length * 0.025, (40, 40, 42))
    # Conductor through the grip and the grip body with its ribs and rubber ends.
    pen.bar(0, wire_y - height * 0.035, length, wire_y + height * 0.035, (60, 60, 64), vertical=False)
    pen.link(0, wire_y, length, wire_y, height * 0.07, (60, 60, 64))
    pen.link(cx, height * 0.05, cx, -1.0, length * 0.05, _scale(alu, 0.7), both_ways=False)
    x0, x1 = length * 0.12, length * 0.88
    pen.rounded(x0, body_top, x1, body_bot, (body_bot - body_top) * 0.45, _scale(alu, 0.7))
    pen.bar(x0 + 3, body_top + 1, x1 - 3, body_bot - 2, alu, vertical=False)
    pen.parts.append(geometry.rect(x0 + (body_bot - body_top) * 0.4, body_top + 1,
                                   x1 - (body_bot - body_top) * 0.4, body_bot - 2))
    for x in np.arange(x0 + length * 0.08, x1 - length * 0.04, length * 0.055):
        pen.line([(x, body_top + 2), (x, body_bot - 3)], _scale(alu, 0.72), max(1, length * 0.008))
    for side in (-1, 1):
        pen.poly(geometry.rect(cx + side * length * 0.42 - length * 0.03, wire_y - height * 0.06,
                               cx + side * length * 0.42 + length * 0.03, wire_y + height * 0.06), (28, 28, 30))
        pen.circle(cx + side * length * 0.2, body_bot - 4, length * 0.02, _scale(alu, 0.6))
    sprite = _finish_metal(pen, drng, spec, with_defect)
    if spec.condition == BIRD_NEST:
        region = defect_painters.nest_region(drng, cx, body_top + 2, length, spec.difficulty == "easy")
        # The nest sits on the grip: keep its outline inside the sprite.
        region = pen.map(geometry.simplify(geometry.clip_box(region, 0, 0, pen.width, pen.height)))
        if with_defect:
            sprite.image = defect_painters.paint_nest(sprite.image, region, drng, spec.difficulty == "easy")
            sprite.defects.append((BIRD_NEST, region))
    return sprite


def _yoke_suspension(rng: np.random.Generator, drng: np.random.Generator, k: float, spec: AssetSpec,
                     with_defect: bool, angle: float) -> Sprite:
    width = rng.uniform(*REFERENCE_SIZE[YOKE]) * k
    height = width * rng.uniform(0.8, 0.95)
    metal = _metal(rng, 110, 175)
    pen = _Pen(width, height, angle)
    cx = width / 2
    apex_y, base_y = height * 0.22, height * 0.62
    spread = width * rng.uniform(0.4, 0.46)
    # Top clevis straps to the tower.
    pen.link(cx, height * 0.05, cx, -1.0, width * 0.09, _scale(metal, 0.75), both_ways=False)
    for side in (-1, 1):
        pen.bar(cx + side * width * 0.035 - width * 0.02, 0, cx + side * width * 0.035 + width * 0.02,
                apex_y + height * 0.06, metal, part=True)
    plate = np.array([[cx, apex_y - height * 0.05], [cx + spread, base_y], [cx + spread * 0.9, base_y + height * 0.08],
                      [cx - spread * 0.9, base_y + height * 0.08], [cx - spread, base_y]])
    pen.poly(plate + [0, height * 0.02], _scale(metal, 0.5))
    pen.poly(plate, metal, outline=_scale(metal, 0.6), part=True)
    pen.poly(np.array([[cx, apex_y], [cx + spread * 0.55, base_y - height * 0.06],
                       [cx - spread * 0.55, base_y - height * 0.06]]), _scale(metal, 1.12))
    for hx in np.linspace(-spread * 0.6, spread * 0.6, int(rng.integers(3, 6))):
        pen.circle(cx + hx, base_y + height * 0.01, width * 0.018, (36, 36, 38))
    pen.circle(cx, apex_y + height * 0.05, width * 0.022, (36, 36, 38))
    # Two links down to the insulator strings, with the top of each string's fitting.
    for side in (-1, 1):
        x = cx + side * spread * 0.8
        pen.bar(x - width * 0.025, base_y, x + width * 0.025, height * 0.9, metal, part=True)
        pen.circle(x, height * 0.92, width * 0.04, _scale(metal, 0.8))
    return _finish_metal(pen, drng, spec, with_defect)


def _damper(rng: np.random.Generator, drng: np.random.Generator, k: float, spec: AssetSpec,
            with_defect: bool, angle: float) -> Sprite:
    """A Stockbridge damper on its conductor: a distractor that InsPLAD-fault does not use."""
    length = rng.uniform(*REFERENCE_SIZE[DAMPER]) * k
    height = length * 0.42
    metal = _metal(rng, 95, 150)
    pen = _Pen(length, height, angle)
    cx = length / 2
    pen.bar(0, height * 0.1, length, height * 0.2, (60, 60, 64), vertical=False)
    pen.link(0, height * 0.15, length, height * 0.15, height * 0.1, (60, 60, 64))
    pen.bar(cx - length * 0.04, height * 0.12, cx + length * 0.04, height * 0.62, metal)
    pen.bar(length * 0.1, height * 0.56, length * 0.9, height * 0.64, _scale(metal, 0.85), vertical=False)
    for side in (-1, 1):
        x = cx + side * length * 0.33
        pen.rounded(x - length * 0.15, height * 0.48, x + length * 0.15, height * 0.9, height * 0.18,
                    _scale(metal, 0.7))
        pen.bar(x - length * 0.13, height * 0.5, x + length * 0.13, height * 0.86, metal, vertical=False)
    return pen.sprite()


def _finish_metal(pen: _Pen, drng: np.random.Generator, spec: AssetSpec, with_defect: bool) -> Sprite:
    """Add corrosion to a metal asset when its spec says so."""
    sprite = pen.sprite()
    if spec.condition == CORROSION and pen.parts:
        easy = spec.difficulty == "easy"
        region = pen.map(defect_painters.rust_region(drng, pen.parts, easy))
        if with_defect:
            sprite.image = defect_painters.paint_rust(sprite.image, region, drng, easy)
            sprite.defects.append((CORROSION, region))
    return sprite


DRAWERS: dict[str, Callable[..., Sprite]] = {
    GLASS: _glass_insulator,
    LRS: _lightning_rod_suspension,
    POLYMER: _polymer_upper_shackle,
    VARI: _vari_grip,
    YOKE: _yoke_suspension,
    DAMPER: _damper,
}


def draw_asset(spec: AssetSpec, scale: float, angle: float = 0.0, *, with_defect: bool = True) -> Sprite:
    """Draw ``spec`` at ``scale`` (1.0 = nominal size in a 1280-pixel-wide frame), turned by ``angle``
    degrees (counter-clockwise on screen). Defect outlines are in the returned sprite's pixels.

    ``with_defect=False`` draws the same object intact (used to measure how visible a defect is).
    """
    rng = np.random.default_rng([spec.seed, 0])
    drng = np.random.default_rng([spec.seed, 1])
    return DRAWERS[spec.cls](rng, drng, scale, spec, with_defect, angle)
