"""Which part of a test image a method's anomaly map covers: the whole image, or a centre crop.

A method that scores the whole image (the default everywhere) needs nothing from here. A method that
scores a resize-then-centre-crop view (SimpleNet's ``preprocess=crop``, its reference code's
``Resize(329)`` + ``CenterCrop(288)``) declares a :class:`CentreCrop`; the same object then
transforms its images (:meth:`CentreCrop.image`) and, at scoring time and in ``leaderboard check``,
the ground-truth masks (:meth:`CentreCrop.mask`), so pixel metrics compare each map with exactly the
region it was computed on. The crop travels in ``predictions.json`` and ``results.json`` as
``{"resize": R, "crop": C}``; without it a map covers the whole image.

Geometry as torchvision's ``Resize(int)`` then ``CenterCrop(int)``: the shorter side becomes ``resize``
(the longer one ``int(resize * long / short)``, aspect ratio kept), then the centred ``crop`` x ``crop``
square is kept (offsets ``round((side - crop) / 2)``). Images are resized bilinearly (PIL, as
torchvision does for PIL images), masks by nearest neighbour so they stay binary. (The reference
resizes masks bilinearly and keeps only pixels that stay exactly 1 through ``astype(int)``, which
erodes each region's border; nearest neither erodes nor grows it.) Numpy and PIL only, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

MAX_SIDE = 8192  # the largest crop or resize a file may declare (as predictions' MAX_MAP_PIXELS)


@dataclass(frozen=True)
class CentreCrop:
    """Resize so the shorter side is ``resize``, then keep the centred ``crop`` x ``crop`` square."""

    resize: int
    crop: int

    def __post_init__(self) -> None:
        for key in ("resize", "crop"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
                raise ValueError(f"{key} must be an integer in 1..{MAX_SIDE}, got {value!r}")
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize} (the crop must fit the shorter side)")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of every transformed image and mask."""
        return self.crop, self.crop

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) after the aspect-preserving resize (torchvision ``Resize(int)`` rounding)."""
        if height <= width:
            return self.resize, int(self.resize * width / height)
        return int(self.resize * height / width), self.resize

    def box(self, height: int, width: int) -> tuple[int, int]:
        """(top, left) of the crop in the resized image of an image of ``height`` x ``width``."""
        rows, cols = self.resized_shape(height, width)
        return int(round((rows - self.crop) / 2.0)), int(round((cols - self.crop) / 2.0))

    def image(self, img: Image.Image) -> Image.Image:
        """The crop of a PIL image: bilinear resize, then the centred square."""
        rows, cols = self.resized_shape(img.height, img.width)
        top, left = self.box(img.height, img.width)
        return img.resize((cols, rows), Image.BILINEAR).crop((left, top, left + self.crop, top + self.crop))

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """The crop of a 2-D boolean or uint8 mask: nearest-neighbour resize (PIL), then the same square."""
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.dtype not in (np.bool_, np.uint8):
            raise ValueError(f"mask must be a 2-D bool or uint8 array, got {mask.dtype} {mask.shape}")
        height, width = mask.shape
        rows, cols = self.resized_shape(height, width)
        top, left = self.box(height, width)
        img = Image.fromarray(mask.astype(np.uint8)).resize((cols, rows), Image.NEAREST)
        out = np.asarray(img.crop((left, top, left + self.crop, top + self.crop)))
        return out.astype(bool) if mask.dtype == np.bool_ else out

    def to_json(self) -> dict[str, int]:
        return {"resize": self.resize, "crop": self.crop}

    def describe(self) -> str:
        return f"resize {self.resize}, centre-crop {self.crop}"


def crop_from_json(value: Any) -> CentreCrop | None:
    """The crop a file declares (``None`` or absent: the whole image); ``ValueError`` naming the problem."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"resize", "crop"}:
        raise ValueError(f"crop must be null or {{\"resize\": R, \"crop\": C}}, got {value!r}")
    return CentreCrop(value["resize"], value["crop"])


def crop_json(crop: CentreCrop | None) -> dict[str, int] | None:
    """The JSON form written into predictions and results (``None`` for the whole image)."""
    return None if crop is None else crop.to_json()
