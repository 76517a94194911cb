"""Frame decoding and cropping: EXIF orientation, any mode to 8-bit RGB, padded clamped boxes, PNG."""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
PNG_OPTIONS = {"compress_level": 6}


class DecodeError(Exception):
    """A frame that cannot be decoded (corrupt, truncated, not an image)."""


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit grey scaled by 1/257, CMYK/P/L/LA converted, alpha dropped."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.int64)
        arr = ((np.clip(arr, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(np.repeat(arr[:, :, None], 3, axis=2))
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(arr[:, :, None], 3, axis=2))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def decode_frame(path: Path) -> Image.Image:
    """Decode a frame fully, upright (EXIF orientation applied) and as 8-bit RGB; :class:`DecodeError` if unreadable."""
    try:
        with warnings.catch_warnings():
            # Large UAV frames (45-100 MP) trip Pillow's bomb warning; only its hard limit is an error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # No `with`: closing would free the pixels; PIL closes a single-frame file after load().
            img = Image.open(path)
            img.load()
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            frame = to_rgb8(img)
            if orientation in _TRANSPOSE:
                frame = frame.transpose(_TRANSPOSE[orientation])
            if frame is not img:
                img.close()
            return frame
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DecodeError(f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def object_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The annotated box rounded outwards to whole pixels and clamped; ``None`` when it misses the frame."""
    x0, y0, x1, y1 = box
    x0i, y0i = max(0, math.floor(x0)), max(0, math.floor(y0))
    x1i, y1i = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    if x1i <= x0i or y1i <= y0i:
        return None
    return x0i, y0i, x1i, y1i


def padded_box(box: tuple[int, int, int, int], pad: float, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` grown by ``pad`` times its width/height on every side, rounded outwards, clamped to the frame."""
    x0, y0, x1, y1 = box
    px, py = pad * (x1 - x0), pad * (y1 - y0)
    return (max(0, math.floor(x0 - px)), max(0, math.floor(y0 - py)),
            min(width, math.ceil(x1 + px)), min(height, math.ceil(y1 + py)))


def encode_png(img: Image.Image) -> bytes:
    """Lossless, deterministic PNG bytes (no timestamps or text chunks)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", **PNG_OPTIONS)
    return buf.getvalue()


def pixel_digest(img: Image.Image) -> str:
    """sha256 of the decoded 8-bit RGB pixels and their shape: equal for identical-looking crops."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:RGB:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def file_pixel_digest(path: Path) -> tuple[str, tuple[int, int]]:
    """Pixel digest and (W, H) of an image file as stored (no EXIF handling: crops carry none)."""
    with Image.open(path) as img:
        return pixel_digest(to_rgb8(img)), img.size
