"""Render one UAV frame: background, tower steel, conductors and posed assets.

A frame depends only on its :class:`FrameJob` (which carries its own seed), so frames can be
rendered in any order or in parallel processes and the output is the same.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from insplad_tools.synth import geometry
from insplad_tools.synth.assets import DISTRACTOR_CLASSES, NORMAL, AssetSpec, draw_asset
from insplad_tools.synth.scene import (GRAIN_MAX, TowerLook, add_grain, draw_conductors, draw_lattice,
                                       render_background, safe)

REFERENCE_WIDTH = 1280
ROBOFLOW_SIZE = (640, 480)
JPEG_QUALITY = 90
ALPHA_VISIBLE = 64  # a pixel belongs to the object's box when its coverage is above a quarter


@dataclass(frozen=True)
class FrameJob:
    """Everything needed to render one frame."""

    index: int
    name: str  # file name, e.g. flight01_tower003_002.jpg
    flight: int
    tower: int
    seed: int
    width: int
    height: int
    look: TowerLook
    assets: tuple[AssetSpec, ...]
    roboflow_split: str | None = None


@dataclass
class PlacedObject:
    cls: str
    condition: str
    asset_seed: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1: 0-based, exclusive
    defects: list[tuple[str, list[float]]] = field(default_factory=list)  # (type, flat polygon)


@dataclass
class FrameRecord:
    job: FrameJob
    objects: list[PlacedObject]
    roboflow_name: str | None = None


def _boxes_clash(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]], pad: float) -> bool:
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in placed:
        if x0 < a1 + pad and a0 < x1 + pad and y0 < b1 + pad and b0 < y1 + pad:
            return True
    return False


def _light(sprite: Image.Image, gain: float, sun: float, contrast: float,
           cast: tuple[float, float, float]) -> Image.Image:
    """Directional light across the sprite, exposure, contrast and white balance (RGB only, C loops)."""
    w, h = sprite.size
    t = math.radians(sun)
    ramp_x = (np.arange(w, dtype=np.float32) / max(1, w - 1) - 0.5) * math.cos(t)
    ramp_y = (np.arange(h, dtype=np.float32) / max(1, h - 1) - 0.5) * math.sin(t)
    # Light in [0.65, 1.35] stored as L = light / HEADROOM * 255, undone by the lookup table below.
    light = (1.0 + 0.35 * (ramp_y[:, None] + ramp_x[None, :])) * (255.0 / _HEADROOM)
    light_img = Image.fromarray(light.astype(np.uint8))
    rgb = ImageChops.multiply(sprite.convert("RGB"), Image.merge("RGB", (light_img,) * 3))
    lut = []
    for c in cast:
        v = np.arange(256, dtype=np.float32) * _HEADROOM
        v = ((v - 128.0) * contrast + 128.0) * gain * c
        lut.extend(np.clip(v, GRAIN_MAX, 255 - GRAIN_MAX).astype(np.uint8).tolist())  # room for the grain
    out = rgb.point(lut)
    out.putalpha(sprite.getchannel("A"))
    return out


_HEADROOM = 1.5


def render(job: FrameJob) -> tuple[Image.Image, list[PlacedObject]]:
    """Draw the frame of ``job``; returns the RGB image and its objects in frame coordinates."""
    rng = np.random.default_rng([job.seed, 2, job.index])
    w, h = job.width, job.height
    frame_scale = w / REFERENCE_WIDTH
    cast = tuple(float(c) for c in rng.uniform(0.94, 1.06, 3))  # camera white balance
    image = render_background(rng, w, h, job.look, cast)
    draw = ImageDraw.Draw(image)
    draw_lattice(draw, rng, w, h, job.look, frame_scale)
    draw_conductors(draw, rng, w, h, frame_scale)

    exposure = rng.uniform(0.8, 1.12)
    sun = job.look.sun_angle + rng.uniform(-30, 30)
    frame_blur = rng.uniform(0.0, 0.9) if rng.random() < 0.5 else 0.0
    order = rng.permutation(len(job.assets))
    visible = [job.assets[i] for i in order if rng.random() < 0.7 or job.assets[i].defective]
    placed: list[tuple[int, int, int, int]] = []
    objects: list[PlacedObject] = []
    pastes: list[tuple[Image.Image, int, int, list]] = []
    for spec in visible:
        distance = rng.uniform(0.7, 1.3)
        horizontal = spec.cls in ("vari-grip", "damper")
        angle = float(np.clip(rng.normal(0, 12 if horizontal else 16), -40, 40))
        scale = frame_scale * distance
        sprite = draw_asset(spec, scale, angle)
        limit = 0.8 * min(w, h)
        if max(sprite.image.size) > limit:  # tiny frames: shrink the asset to fit
            sprite = draw_asset(spec, scale * limit / max(sprite.image.size), angle)
        posed = _light(sprite.image, exposure * rng.uniform(0.9, 1.1), sun, rng.uniform(0.85, 1.1), cast)
        sigma = frame_blur + (rng.uniform(0.2, 1.2) if rng.random() < 0.3 else 0.0)
        if sigma > 0.15:
            posed = posed.filter(ImageFilter.BoxBlur(sigma * max(0.5, frame_scale)))  # ~ lens defocus
        alpha = np.asarray(posed.getchannel("A"))
        ys, xs = np.nonzero(alpha > ALPHA_VISIBLE)
        if len(xs) == 0:
            continue
        bx0, by0, bx1, by1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        spot = None
        for _ in range(25):
            ox = int(rng.integers(-bx0, max(-bx0 + 1, w - bx1 + 1)))
            oy = int(rng.integers(-by0, max(-by0 + 1, h - by1 + 1)))
            box = (ox + bx0, oy + by0, ox + bx1, oy + by1)
            if box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
                continue
            if not _boxes_clash(box, placed, pad=6 * frame_scale):
                spot = (ox, oy, box)
                break
        if spot is None:
            continue
        ox, oy, box = spot
        pastes.append((posed, ox, oy, sprite.links))
        placed.append(box)
        obj = PlacedObject(spec.cls, spec.condition if spec.cls not in DISTRACTOR_CLASSES else NORMAL, spec.seed, box)
        for kind, poly in sprite.defects:
            frame_poly = poly + [ox, oy]
            frame_poly = geometry.simplify(geometry.clip_box(frame_poly, *box))
            if len(frame_poly) >= 3 and geometry.area(frame_poly) > 0.5:
                obj.defects.append((kind, [round(float(v), 2) for v in frame_poly.ravel()]))
        if spec.defective and not obj.defects:
            continue  # cannot happen with the drawers' geometry, but never emit an unexplained defect
        objects.append(obj)

    # Wires and hangers first, so every object sits on its conductor and hangs from the steel above.
    reach = 2.0 * (w + h)
    for _, ox, oy, links in pastes:
        for (p0, p1), both_ways, width, colour in links:
            d = p1 - p0
            d = d / max(1e-9, float(np.hypot(*d)))
            a = p0 - d * reach if both_ways else p0
            b = p1 + d * reach
            tone = safe(tuple(c * exposure for c in colour))
            draw.line([(a[0] + ox, a[1] + oy), (b[0] + ox, b[1] + oy)], fill=tone, width=max(1, int(round(width))))
    for posed, ox, oy, _ in pastes:
        image.paste(posed, (ox, oy), posed)
    return add_grain(image, rng), objects


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def render_to_disk(job: FrameJob, out_dir: str) -> FrameRecord:
    """Render a frame, write its JPEG (and its Roboflow copy) under ``out_dir``; return the record."""
    image, objects = render(job)
    root = Path(out_dir)
    (root / "images" / job.name).write_bytes(encode_jpeg(image))
    record = FrameRecord(job, objects)
    if job.roboflow_split is not None:
        if (job.width, job.height) == (ROBOFLOW_SIZE[0] * 2, ROBOFLOW_SIZE[1] * 2):
            resized = image.reduce(2)  # same stretch as a resize, a tenth of the time
        else:
            resized = image.resize(ROBOFLOW_SIZE, Image.BILINEAR)
        small = encode_jpeg(resized, quality=85)
        stem = Path(job.name).stem
        record.roboflow_name = f"{stem}_jpg.rf.{hashlib.md5(small).hexdigest()}.jpg"
        (root / "roboflow" / job.roboflow_split / record.roboflow_name).write_bytes(small)
    return record
