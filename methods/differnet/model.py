"""The DifferNet torch model: multi-scale pooled AlexNet features -> normalizing flow -> z.

Training logic lives in :mod:`methods.differnet.detector`; this module is only the computation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from methods.backbones.alexnet import OUT_CHANNELS, AlexNetFeatures
from methods.data import IMAGENET_MEAN, IMAGENET_STD
from methods.precision import full_precision

FEATURE_NORMS = ("none", "rms")


class DifferNetModel(nn.Module):
    """``features(x)`` gives the flow input (``n_scales * 256`` values); ``forward`` gives ``(z, log|det J|, features)``.

    ``feature_norm="rms"`` divides each scale's pooled 256-vector by its own root-mean-square, a fixed
    (non-learnable) normalisation: a trainable attention block can then no longer raise the
    likelihood by shrinking every feature towards zero.
    """

    def __init__(self, extractor: AlexNetFeatures, flow: nn.Module, n_scales: int = 3, feature_norm: str = "none") -> None:
        super().__init__()
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
        self.extractor = extractor
        self.flow = flow
        self.n_scales = n_scales
        self.feature_norm = feature_norm
        self.dims = OUT_CHANNELS * n_scales

    def features(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pooled = []
        for scale in range(self.n_scales):
            xs = x if scale == 0 else F.interpolate(x, size=(height // 2**scale, width // 2**scale))  # nearest, as DifferNet
            feat = self.extractor(xs).float().mean(dim=(2, 3))
            if self.feature_norm == "rms":
                feat = feat / feat.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-30)
            pooled.append(feat)
        return torch.cat(pooled, dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        with full_precision(feats.device):  # the flow's exp(s) overflows in half precision
            z, log_jac_det = self.flow(feats.float())
        return z, log_jac_det, feats


def nll_loss(z: torch.Tensor, log_jac_det: torch.Tensor) -> torch.Tensor:
    """DifferNet's loss: mean over the batch of ``0.5*||z||^2 - log|det J|``, per dimension (no Gaussian constant)."""
    return (0.5 * z.pow(2).sum(dim=1) - log_jac_det).mean() / z.shape[1]


def rotate_batch(images: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each image (B, C, H, W, values in [0, 1]) about its centre; nearest neighbour, black corners."""
    theta = angles_deg.to(images.device, torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(cos)
    # affine_grid maps output coordinates to input coordinates: rotate by -angle there.
    matrix = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
