"""Image loading and the tensors methods train on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from insplad_tools.errors import InspladError
from insplad_tools.safety import image_size_guard

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: Path) -> Image.Image:
    """Open an image as 8-bit RGB, honouring EXIF orientation; one clear error when unreadable.

    Oversized images follow the one decompression-bomb policy of every command
    (:func:`insplad_tools.safety.image_size_guard`).
    """
    try:
        with image_size_guard(path), Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                top = arr.max() or 1.0
                img = Image.fromarray((arr * (255.0 / top)).astype(np.uint8))
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InspladError(f"{path}: cannot read image ({exc})") from exc


def to_tensor(img: Image.Image, size: int | None, *, normalize: bool = True) -> torch.Tensor:
    """Resize (bilinear, square) and convert to a CHW float tensor, ImageNet-normalised by default."""
    if size is not None:
        img = img.resize((size, size), Image.BILINEAR)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        arr = (arr - mean) / std
    return arr


class ImageDataset(Dataset):
    """Images from a list of paths, resized to ``size`` and turned into tensors by ``transform``."""

    def __init__(self, paths: Sequence[Path], size: int, transform: Callable[[Image.Image], torch.Tensor] | None = None):
        self.paths = list(paths)
        self.size = size
        self.transform = transform or (lambda img: to_tensor(img, size))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_rgb(self.paths[index]))


def load_images_uint8(paths: Sequence[Path], size: int, progress: bool = False, desc: str = "load") -> torch.Tensor:
    """Images resized to ``size`` as one (N, 3, size, size) uint8 tensor (compact for caching a train set)."""
    tensors = [(to_tensor(load_rgb(Path(p)), size, normalize=False) * 255).round().to(torch.uint8)
               for p in tqdm(paths, desc=desc, unit="img", disable=not progress, leave=False)]
    return torch.stack(tensors) if tensors else torch.empty(0, 3, size, size, dtype=torch.uint8)


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 1] float) batch -> ImageNet-normalised float batch on the same device."""
    x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def predict_score_maps(model: torch.nn.Module, paths: Sequence[Path], *, size: int, batch_size: int,
                       device: torch.device, progress: bool = False, desc: str = "predict") -> list[tuple[float, np.ndarray]]:
    """Run a model that maps a normalised batch to ``(scores (B,), maps (B, H, W))`` over image files."""
    model.eval()
    out: list[tuple[float, np.ndarray]] = []
    paths, bs = list(paths), max(1, batch_size)
    for start in tqdm(range(0, len(paths), bs), desc=desc, unit="batch", disable=not progress, leave=False):
        scores, maps = model(normalise(load_images_uint8(paths[start:start + bs], size).to(device)))
        out.extend((float(s), m.astype(np.float32)) for s, m in zip(scores.float().cpu().numpy(), maps.float().cpu().numpy()))
    return out
