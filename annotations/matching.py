"""Finding the export image that shows a given frame or crop: by name, or by its pixels.

Names: Roboflow renames ``a.jpg`` to ``a_jpg.rf.<hash>.jpg`` (and keeps ``extra.name`` when it
knows the original). :func:`name_keys` gives progressively looser keys (exact, case-folded,
letters and digits only) so that names Roboflow sanitised (spaces, dots in the stem) still match.

Pixels: Roboflow re-encodes (JPEG) and usually resizes images on export, so the exported bytes
never hash like the crop. Two fingerprints are used instead:

- an exact hash of the decoded pixels, for exports that kept the size and a lossless format;
- a 16x16 grey thumbnail (box filter), compared by mean absolute difference. Thumbnails are
  taken after stretching both images to 16x16, which undoes Roboflow's stretch-resize; a match
  needs a distance below ``max_distance`` and clearly better than the runner-up.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

THUMB = 16
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def name_keys(name: str) -> list[str]:
    """Keys for ``name`` from strict to loose; two names match when they share a key level."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    folded = base.casefold()
    return [base, folded, _NON_ALNUM.sub("", folded)]


def pixel_hash(rgb: np.ndarray) -> str:
    """sha256 of the decoded pixels and their shape."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return hashlib.sha256(repr(rgb.shape).encode() + rgb.tobytes()).hexdigest()


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """16x16 float32 grey thumbnail of an HxWx3 (or HxW) uint8 image."""
    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("L")
    return np.asarray(img.resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float32)


def load_rgb(path) -> np.ndarray:
    """An image file as HxWx3 uint8, EXIF orientation applied; an unreadable or oversized file is one
    :class:`InspladError` naming it (the decompression-bomb policy of every command)."""
    from insplad_tools.errors import InspladError
    from insplad_tools.safety import image_size_guard

    try:
        with image_size_guard(path), Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise InspladError(f"{path}: cannot read image ({exc})") from None


@dataclass
class ThumbIndex:
    """Nearest-thumbnail lookup over a fixed set of keyed images."""

    keys: list
    thumbs: np.ndarray  # (N, 16, 16)

    @classmethod
    def build(cls, items: list[tuple[object, np.ndarray]]) -> "ThumbIndex":
        keys = [k for k, _ in items]
        thumbs = np.stack([t for _, t in items]) if items else np.zeros((0, THUMB, THUMB), np.float32)
        return cls(keys, thumbs)

    def nearest(self, thumb: np.ndarray, *, max_distance: float = 6.0, margin: float = 2.0) -> object | None:
        """Key of the closest thumbnail, or None if none is close enough or the match is ambiguous."""
        if not self.keys:
            return None
        dist = np.abs(self.thumbs - thumb[None]).mean(axis=(1, 2))
        order = np.argsort(dist)
        best = float(dist[order[0]])
        if best > max_distance:
            return None
        if len(order) > 1 and float(dist[order[1]]) < best * margin and float(dist[order[1]]) - best < 1.0:
            return None
        return self.keys[int(order[0])]
