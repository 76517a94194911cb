"""Distilling the EfficientAD teacher PDN from ResNet-18 features, and reading the result back.

Target features (as seed 003 does instead of WideResNet-101): ResNet-18 layer2 (128 ch) and layer3
(256 ch) on the image at twice the PDN's input size, each 3x3 average-pooled (PatchCore-style
local aggregation), layer3 resized to the layer2 grid, concatenated to 384 channels and
standardised per channel. The PDN (with padding, so a 256 px input gives 64x64 = the layer2 grid at
512 px) regresses them with MSE; Adam 1e-4, weight decay 1e-5, batch 16, random grayscale 0.1.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from insplad_tools.errors import InspladError
from methods.backbones.resnet import resnet18_extractor
from methods.base import unsafe_load_reason
from methods.data import load_rgb, to_tensor
from methods.efficientad.model import TEACHER_CHANNELS
from methods.efficientad.pdn import PDN, pdn_small

TEACHER_FORMAT = "insplad-efficientad-teacher/1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursively), sorted; an error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InspladError(f"{folder}: not a directory")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise InspladError(f"{folder}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


class _DistillImages(Dataset):
    """(PDN input at ``size``, extractor input at ``2*size``) from the same, sometimes grayscaled, image."""

    def __init__(self, paths: Sequence[Path], size: int, grayscale_p: float = 0.1) -> None:
        self.paths, self.size, self.grayscale_p = list(paths), size, grayscale_p

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = load_rgb(self.paths[index])
        if random.random() < self.grayscale_p:
            img = img.convert("L").convert("RGB")
        return to_tensor(img, self.size), to_tensor(img.resize((2 * self.size,) * 2, Image.BILINEAR), None)


class FeatureTarget(nn.Module):
    """ResNet-18 layer2+layer3, 3x3-averaged, aligned to the layer2 grid: 384 channels."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(images, ("layer2", "layer3"))
        l2 = F.avg_pool2d(feats["layer2"], 3, 1, 1)
        l3 = F.interpolate(F.avg_pool2d(feats["layer3"], 3, 1, 1), size=l2.shape[-2:], mode="bilinear")
        return torch.cat([l2, l3], dim=1)


def distill_teacher(paths: Sequence[Path], *, steps: int = 60_000, image_size: int = 256, batch_size: int = 16,
                    lr: float = 1e-4, weight_decay: float = 1e-5, device: str = "cpu", pretrained: bool = True,
                    weights: str | Path | None = None, seed: int = 0, workers: int = 0, stat_images: int = 1000,
                    progress: bool = True) -> dict[str, Any]:
    """Train a teacher PDN on ``paths``; returns the saveable payload (format, state_dict, config)."""
    if steps < 1:
        raise InspladError("--steps must be >= 1")
    if image_size < 64:
        raise InspladError(f"--image-size must be >= 64 (got {image_size})")
    random.seed(seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    backbone = resnet18_extractor("none", pretrained=pretrained, weights=weights, last_layer="layer3", progress=progress)
    target = FeatureTarget(backbone).to(dev)
    pdn = pdn_small(TEACHER_CHANNELS, padding=True).to(dev)
    data = _DistillImages(paths, image_size)

    # Per-channel statistics of the target features, over up to ``stat_images`` images.
    stat_loader = DataLoader(data, batch_size=batch_size, sampler=RandomSampler(data, replacement=True,
                             num_samples=min(stat_images, max(len(data), batch_size))), num_workers=workers)
    total, total_sq, count = 0.0, 0.0, 0
    for _, big in tqdm(stat_loader, desc="teacher feature stats", disable=not progress, leave=False):
        f = target(big.to(dev))
        total = total + f.sum(dim=(0, 2, 3))
        total_sq = total_sq + (f.double() ** 2).sum(dim=(0, 2, 3)).float()
        count += f.shape[0] * f.shape[2] * f.shape[3]
    mean = (total / count)[None, :, None, None]
    std = (total_sq / count - (total / count) ** 2).clamp_min(1e-12).sqrt()[None, :, None, None]

    optimiser = torch.optim.Adam(pdn.parameters(), lr=lr, weight_decay=weight_decay)
    loader = DataLoader(data, batch_size=batch_size, sampler=RandomSampler(data, replacement=True,
                        num_samples=steps * batch_size), num_workers=workers)
    pdn.train()
    losses: list[float] = []
    bar = tqdm(loader, total=steps, desc="distill teacher", unit="step", disable=not progress, leave=False)
    for small, big in bar:
        goal = (target(big.to(dev)) - mean) / std
        out = pdn(small.to(dev))
        if goal.shape[-2:] != out.shape[-2:]:
            goal = F.interpolate(goal, size=out.shape[-2:], mode="bilinear")
        loss = ((out - goal) ** 2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    source = f"weights file {Path(weights).name}" if weights is not None else ("imagenet" if pretrained else "random")
    return {
        "format": TEACHER_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in pdn.state_dict().items()},
        "config": {"out_channels": TEACHER_CHANNELS, "width": 256, "image_size": image_size, "steps": steps, "batch_size": batch_size,
                   "backbone": "resnet18", "backbone_weights": source, "n_images": len(data),
                   "first_loss": losses[0], "last_loss": losses[-1]},
    }


def load_teacher(path: str | Path) -> tuple[PDN, dict[str, Any]]:
    """Read a teacher written by ``insplad distill-teacher`` (weights_only) as an unpadded PDN."""
    path = Path(path)
    if not path.is_file():
        raise InspladError(f"{path}: teacher file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or unsafe file
        raise InspladError(f"{path}: not a readable teacher file ({unsafe_load_reason(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != TEACHER_FORMAT:
        raise InspladError(f"{path}: not an {TEACHER_FORMAT} file (make one with `insplad distill-teacher`)")
    pdn = pdn_small(int(payload["config"]["out_channels"]), width=int(payload["config"].get("width", 256)))
    try:
        pdn.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise InspladError(f"{path}: teacher weights do not fit a PDN-small ({exc})") from exc
    return pdn, dict(payload["config"])
