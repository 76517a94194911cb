"""Train-time augmentation as albumentations pipelines, applied per image and serialised into results.

Every method that augments builds its pipeline here, so ``results.json`` can state exactly what ran
(``variant.augmentation``: the pipelines as ``albumentations.to_dict``). Randomness comes from the
pipeline's own seeded generators, reseeded per batch from (run seed, epoch or step, batch), so a
resumed run draws exactly what an uninterrupted one draws.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch

NEAREST, BORDER_CONSTANT = 0, 0  # OpenCV's INTER_NEAREST and BORDER_CONSTANT (albumentations takes OpenCV flags)


def differnet_train(rotation: float = 180.0, brightness: float = 0.0, contrast: float = 0.0,
                    saturation: float = 0.0) -> A.Compose:
    """DifferNet's train transform: ``RandomRotation(180)`` (nearest, black corners) after optional colour
    jitter (the official config's brightness/contrast/saturation, all 0 = off by default)."""
    steps: list[A.BasicTransform] = []
    if brightness or contrast or saturation:
        steps.append(A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=0.0, p=1.0))
    if rotation:
        steps.append(A.Rotate(limit=rotation, interpolation=NEAREST, border_mode=BORDER_CONSTANT, fill=0, p=1.0))
    return A.Compose(steps)


def colour_augmentation(low: float = 0.8, high: float = 1.2) -> A.Compose:
    """EfficientAD's autoencoder-branch augmentation: one of brightness, contrast or saturation, factor ~U(low, high)."""
    factor = (low, high)
    return A.Compose([A.OneOf([
        A.ColorJitter(brightness=factor, contrast=0.0, saturation=0.0, hue=0.0, p=1.0),
        A.ColorJitter(brightness=0.0, contrast=factor, saturation=0.0, hue=0.0, p=1.0),
        A.ColorJitter(brightness=0.0, contrast=0.0, saturation=factor, hue=0.0, p=1.0),
    ], p=1.0)])


def penalty_transform(size: int) -> A.Compose:
    """EfficientAD's ImageNet-penalty images: resize to 2*size, grayscale with p=0.3, centre crop to size."""
    return A.Compose([A.Resize(2 * size, 2 * size), A.ToGray(p=0.3), A.CenterCrop(size, size)])


def grayscale(p: float) -> A.Compose:
    """Random grayscale (the teacher distillation's ``RandomGrayscale(0.1)``)."""
    return A.Compose([A.ToGray(p=p)])


def serialise(pipeline: A.Compose) -> dict[str, Any]:
    """The pipeline as plain JSON data (albumentations' own serialisation)."""
    import json

    return json.loads(json.dumps(A.to_dict(pipeline), default=list))


def apply(pipeline: A.Compose, images: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply ``pipeline`` to each image of a (B, 3, H, W) batch, uint8 (fastest) or float in [0, 1];
    returns float [0, 1] on CPU. The pipeline is reseeded with ``seed`` first, so the same call draws the
    same parameters."""
    pipeline.set_random_seed(seed)
    batch = images.detach().cpu()
    if batch.dtype != torch.uint8:
        batch = batch.float()
    arrays = np.ascontiguousarray(batch.permute(0, 2, 3, 1).numpy())
    out = torch.from_numpy(np.stack([pipeline(image=img)["image"] for img in arrays])).permute(0, 3, 1, 2)
    out = out.float() / 255.0 if out.dtype == torch.uint8 else out.float().clamp(0.0, 1.0)
    return out.contiguous()
