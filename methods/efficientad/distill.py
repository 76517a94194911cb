"""Distilling the EfficientAD teacher PDN, and reading teachers back (ours and the reference files).

The paper distils from WideResNet-101-2 (``--backbone wide_resnet101_2``); the default here is
ResNet-18, the project's choice for machines without those weights (seed 003 labels its EfficientAD
columns "RN18" but does not say what the teacher was distilled from). ResNet-18 target features:
layer2 (128 ch) and layer3 (256 ch) on the image at twice the PDN's input size, each 3x3 average-pooled (PatchCore-style
local aggregation), layer3 resized to the layer2 grid, concatenated to 384 channels and
standardised per channel. The PDN (with padding, so a 256 px input gives 64x64 = the layer2 grid at
512 px) regresses them with MSE; Adam 1e-4, weight decay 1e-5, batch 16, random grayscale 0.1.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from insplad_tools.errors import InspladError
from methods.augment import grayscale
from methods.backbones.registry import build_backbone
from methods.backbones.resnet import resnet18_extractor
from methods.base import unsafe_load_reason
from methods.data import load_rgb, to_tensor
from methods.efficientad.model import TEACHER_CHANNELS
from methods.efficientad.pdn import PDN, PDN_SIZES, build_pdn
from methods.optim import adam
from methods.precision import autocast, resolve_precision
from methods.simplenet.model import PatchEmbedder

TEACHER_FORMAT = "insplad-efficientad-teacher/1"
DISTILL_BACKBONES = ("resnet18", "wide_resnet101_2")
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
        self.augmentation = grayscale(grayscale_p)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = load_rgb(self.paths[index])
        if self.grayscale_p:  # RandomGrayscale as an albumentations pipeline, seeded from torch (per worker)
            self.augmentation.set_random_seed(int(torch.randint(2**31 - 1, (1,))))
            img = Image.fromarray(self.augmentation(image=np.asarray(img))["image"])
        return to_tensor(img, self.size), to_tensor(img.resize((2 * self.size,) * 2, Image.BILINEAR), None)


class FeatureTarget(nn.Module):
    """Layer2+layer3 of the distillation backbone on the layer2 grid, 384 channels.

    ResNet-18 (the project's default): each map 3x3-averaged, layer3 resized, concatenated (128+256).
    WideResNet-101-2 (the paper's, ``nelson1425`` ``pretraining.py``): PatchCore's aggregation of the
    3x3 neighbourhoods (512*9 and 1024*9 values) pooled per layer to 1024 and together to 384.
    """

    def __init__(self, backbone: nn.Module, name: str = "resnet18") -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.name = name
        self.embedder = PatchEmbedder(1024, TEACHER_CHANNELS, 3) if name != "resnet18" else None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(images, layers=("layer2", "layer3"))
        if self.embedder is not None:
            emb, (h, w) = self.embedder([feats["layer2"], feats["layer3"]])
            return emb.reshape(images.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
        l2 = F.avg_pool2d(feats["layer2"], 3, 1, 1)
        l3 = F.interpolate(F.avg_pool2d(feats["layer3"], 3, 1, 1), size=l2.shape[-2:], mode="bilinear")
        return torch.cat([l2, l3], dim=1)


def distill_teacher(paths: Sequence[Path], *, steps: int = 60_000, image_size: int = 256, batch_size: int = 16,
                    lr: float = 1e-4, weight_decay: float = 1e-5, device: str = "cpu", pretrained: bool = True,
                    weights: str | Path | None = None, seed: int = 0, workers: int = 0, stat_images: int = 1000,
                    progress: bool = True, backbone: str = "resnet18", model_size: str = "small",
                    precision: str = "fp32") -> dict[str, Any]:
    """Train a teacher PDN on ``paths``; returns the saveable payload (format, state_dict, config).

    ``precision`` (fp32 | bf16 | fp16 | auto) runs the forward passes under autocast; the loss and the
    feature statistics stay fp32, and fp16 scales the loss (GradScaler).

    ``backbone``: ``resnet18`` (default, the project's) or ``wide_resnet101_2`` (the paper's); ``model_size``
    small (EfficientAD-S) or medium (EfficientAD-M)."""
    if backbone not in DISTILL_BACKBONES:
        raise InspladError(f"--backbone {backbone!r}: choose one of {', '.join(DISTILL_BACKBONES)}")
    if model_size not in PDN_SIZES:
        raise InspladError(f"--model-size {model_size!r}: choose small or medium")
    if steps < 1:
        raise InspladError("--steps must be >= 1")
    if image_size < 64:
        raise InspladError(f"--image-size must be >= 64 (got {image_size})")
    precision = resolve_precision(precision, device)
    random.seed(seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    if backbone == "resnet18":
        net = resnet18_extractor("none", pretrained=pretrained, weights=weights, last_layer="layer3", progress=progress)
    else:
        net, _ = build_backbone(backbone, pretrained=pretrained, weights=weights, progress=progress, last_layer="layer3")
    target = FeatureTarget(net, backbone).to(dev)
    pdn = build_pdn(model_size, TEACHER_CHANNELS, padding=True).to(dev)
    data = _DistillImages(paths, image_size)

    # Per-channel statistics of the target features, over up to ``stat_images`` images.
    stat_loader = DataLoader(data, batch_size=batch_size, sampler=RandomSampler(data, replacement=True,
                             num_samples=min(stat_images, max(len(data), batch_size))), num_workers=workers)
    total, total_sq, count = 0.0, 0.0, 0
    for _, big in tqdm(stat_loader, desc="teacher feature stats", disable=not progress, leave=False):
        with autocast(dev, precision):
            f = target(big.to(dev)).float()
        total = total + f.sum(dim=(0, 2, 3))
        total_sq = total_sq + (f.double() ** 2).sum(dim=(0, 2, 3)).float()
        count += f.shape[0] * f.shape[2] * f.shape[3]
    mean = (total / count)[None, :, None, None]
    std = (total_sq / count - (total / count) ** 2).clamp_min(1e-12).sqrt()[None, :, None, None]

    optimiser = adam(pdn.parameters(), lr=lr, weight_decay=weight_decay)
    loader = DataLoader(data, batch_size=batch_size, sampler=RandomSampler(data, replacement=True,
                        num_samples=steps * batch_size), num_workers=workers)
    pdn.train()
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
    losses: list[float] = []
    bar = tqdm(loader, total=steps, desc="distill teacher", unit="step", disable=not progress, leave=False)
    for small, big in bar:
        with autocast(dev, precision):
            goal = (target(big.to(dev)).float() - mean) / std
            out = pdn(small.to(dev)).float()
        if goal.shape[-2:] != out.shape[-2:]:
            goal = F.interpolate(goal, size=out.shape[-2:], mode="bilinear")
        loss = ((out - goal) ** 2).mean()
        optimiser.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimiser.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    source = f"weights file {Path(weights).name}" if weights is not None else ("imagenet" if pretrained else "random")
    return {
        "format": TEACHER_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in pdn.state_dict().items()},
        "config": {"out_channels": TEACHER_CHANNELS, "width": pdn.width, "size": model_size, "image_size": image_size,
                   "steps": steps, "batch_size": batch_size, "backbone": backbone, "backbone_weights": source, "n_images": len(data),
                   "first_loss": losses[0], "last_loss": losses[-1], "precision": precision},
    }


# Plain state dicts of the reference teachers: nelson1425/EfficientAD (``teacher_small.pth``,
# ``teacher_medium.pth``: the PDN ``nn.Sequential``, keys by layer index) and anomalib's pretrained
# EfficientAd teachers (``pretrained_teacher_small.pth`` / ``_medium.pth``: keys ``conv1``...).
NELSON_LAYERS = {"small": ("0", "3", "6", "8"), "medium": ("0", "3", "6", "8", "10", "12")}
ANOMALIB_LAYERS = {"small": ("conv1", "conv2", "conv3", "conv4"),
                   "medium": ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6")}
REFERENCE_SOURCES = {"nelson": "nelson1425/EfficientAD", "anomalib": "anomalib"}


def _reference_layout(state: dict[str, Any]) -> tuple[str, str] | None:
    """(origin, size) when ``state`` has exactly the keys of a reference teacher, else None."""
    keys = set(state)
    for origin, table in (("nelson", NELSON_LAYERS), ("anomalib", ANOMALIB_LAYERS)):
        for size, layers in table.items():
            if keys == {f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")}:
                return origin, size
    return None


def _reference_teacher(path: Path, state: dict[str, Any]) -> tuple[PDN, dict[str, Any]]:
    layout = _reference_layout(state)
    if layout is None:
        shown = ", ".join(sorted(map(str, state))[:4])
        raise InspladError(f"{path}: neither an {TEACHER_FORMAT} file nor a reference EfficientAD teacher state dict "
                           f"(keys {shown}...; expected nelson1425's 0.weight..8.bias / 0..12 or anomalib's conv1..)")
    origin, size = layout
    rename = dict(zip(NELSON_LAYERS[size], ANOMALIB_LAYERS[size])) if origin == "nelson" else {}
    state = {f"{rename.get(k.split('.')[0], k.split('.')[0])}.{k.split('.')[1]}": v for k, v in state.items()}
    last = ANOMALIB_LAYERS[size][-1]
    out_channels, width = int(state[f"{last}.weight"].shape[0]), int(state["conv2.weight"].shape[0])
    pdn = build_pdn(size, out_channels, width=width)
    try:
        pdn.load_state_dict(state)
    except RuntimeError as exc:
        raise InspladError(f"{path}: teacher weights do not fit a PDN-{size} ({str(exc).splitlines()[0]})") from exc
    return pdn, {"out_channels": out_channels, "width": width, "size": size, "backbone": "wide_resnet101_2",
                 "backbone_weights": "imagenet", "source": f"{REFERENCE_SOURCES[origin]} {path.name}",
                 "steps": 60_000}


def load_teacher(path: str | Path) -> tuple[PDN, dict[str, Any]]:
    """Read a teacher (weights_only) as an unpadded PDN: an ``insplad distill-teacher`` file, or a reference
    teacher state dict (nelson1425/EfficientAD ``teacher_small.pth`` / ``teacher_medium.pth``, anomalib's
    ``pretrained_teacher_small.pth`` / ``_medium.pth``; both distilled from WideResNet-101-2)."""
    path = Path(path)
    if not path.is_file():
        raise InspladError(f"{path}: teacher file not found (place the teacher file there, or make one with "
                           "`insplad distill-teacher`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or unsafe file
        raise InspladError(f"{path}: not a readable teacher file ({unsafe_load_reason(exc)})") from exc
    if isinstance(payload, dict) and "format" not in payload and payload \
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        return _reference_teacher(path, payload)
    if not isinstance(payload, dict) or payload.get("format") != TEACHER_FORMAT:
        raise InspladError(f"{path}: not an {TEACHER_FORMAT} file (make one with `insplad distill-teacher`)")
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict):
        raise InspladError(f"{path}: malformed teacher: 'config' section missing or not a mapping")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InspladError(f"{path}: malformed teacher: 'state_dict' must map parameter names to tensors")
    for key, default in (("out_channels", None), ("width", 256)):
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise InspladError(f"{path}: malformed teacher: config.{key} must be an integer in 1..4096, got {value!r}")
    size = config.get("size", "small")
    if size not in PDN_SIZES:
        raise InspladError(f"{path}: malformed teacher: config.size must be small or medium, got {size!r}")
    pdn = build_pdn(size, config["out_channels"], width=config.get("width", 256))
    try:
        pdn.load_state_dict(state)
    except RuntimeError as exc:
        raise InspladError(f"{path}: teacher weights do not fit a PDN-{size} ({str(exc).splitlines()[0]})") from exc
    return pdn, dict(config)
