"""PaDiM's torch model: frozen multi-layer features, a Gaussian per feature-map position, Mahalanobis maps.

Fitting (accumulating the per-position statistics) lives in :mod:`methods.padim.detector`; this
module holds the network and pure tensor functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from methods.precision import full_precision
from methods.simplenet.model import gaussian_blur


def random_channel_index(total: int, keep: int, seed: int) -> torch.Tensor:
    """``keep`` distinct channel indices out of ``total``, drawn as the reference code does.

    The reference (and anomalib) call Python's ``random.sample(range(total), keep)``; with the
    reference's seed 1024 this gives the very same subset.
    """
    import random

    return torch.tensor(random.Random(seed).sample(range(total), keep), dtype=torch.long)


class PadimModel(nn.Module):
    """Backbone layers 1-3 -> nearest-upsampled to the layer-1 grid -> d random channels -> Mahalanobis map.

    ``mean`` (P, d) and ``inv_covariance`` (P, d, d) hold one Gaussian per layer-1 position (P = H*W).
    """

    def __init__(self, backbone: nn.Module, channels: Sequence[int], channel_index: torch.Tensor,
                 layers: Sequence[str] = ("layer1", "layer2", "layer3"), map_sigma: float = 4.0) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.layers = tuple(layers)
        self.map_sigma = map_sigma
        bounds = torch.tensor([0, *channels]).cumsum(0)
        index = channel_index.sort().values
        # per layer: which of its own channels are kept (a concat-then-select split up per layer)
        self._per_layer = [index[(index >= lo) & (index < hi)] - lo for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.register_buffer("channel_index", channel_index.clone())
        self.register_buffer("mean", torch.empty(0, len(channel_index)))
        self.register_buffer("inv_covariance", torch.empty(0, len(channel_index), len(channel_index)))
        self._order = torch.argsort(torch.argsort(channel_index))  # sorted selection -> the drawn order

    @property
    def n_features(self) -> int:
        return int(self.channel_index.numel())

    def train(self, mode: bool = True) -> PadimModel:
        """Nothing trains: the backbone (and its BatchNorms) always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, d, H, W) on the first layer's grid of a normalised batch."""
        feats = self.backbone(images, self.layers)
        grid = tuple(feats[self.layers[0]].shape[-2:])
        parts = []
        for name, keep in zip(self.layers, self._per_layer):
            if keep.numel() == 0:
                continue
            f = feats[name].index_select(1, keep.to(images.device))
            if tuple(f.shape[-2:]) != grid:
                f = F.interpolate(f, size=grid, mode="nearest")
            parts.append(f)
        emb = torch.cat(parts, dim=1)
        return emb.index_select(1, self._order.to(images.device))

    def set_statistics(self, mean: torch.Tensor, inv_covariance: torch.Tensor) -> None:
        self.mean = mean.detach().to(self.channel_index.device, torch.float32).contiguous()
        self.inv_covariance = inv_covariance.detach().to(self.channel_index.device, torch.float32).contiguous()

    @torch.no_grad()
    def distances(self, emb: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance (B, H, W) of every position's embedding to that position's Gaussian."""
        b, d, h, w = emb.shape
        if self.mean.shape[0] != h * w:
            raise RuntimeError(f"PaDiM statistics cover {self.mean.shape[0]} positions, the input gives {h * w}: "
                               "predict at the image size the model was fitted at")
        # (P, B, d), made contiguous: a strided batch makes CPU bmm about 20x slower
        with full_precision(emb.device):  # Mahalanobis in fp32 under any --precision
            delta = (emb.float().reshape(b, d, h * w).permute(2, 0, 1) - self.mean[:, None, :]).contiguous()
            squared = (torch.bmm(delta, self.inv_covariance) * delta).sum(-1)  # (P, B)
        return squared.clamp_min(0).sqrt().transpose(0, 1).reshape(b, h, w)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) = max of the maps, and anomaly maps (B, H_img, W_img)."""
        if self.mean.shape[0] == 0:
            raise RuntimeError("PaDiM has no statistics: fit the model first")
        dist = self.distances(self.embed(images))
        maps = F.interpolate(dist[:, None], size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps[:, 0], self.map_sigma)
        return maps.flatten(1).amax(1), maps


def gaussian_statistics(total: torch.Tensor, outer: torch.Tensor, shift: torch.Tensor, n: int,
                        regularisation: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (P, d) and inverse covariance (P, d, d) from shifted sums.

    ``total`` = Σ(x − shift), ``outer`` = Σ(x − shift)(x − shift)ᵀ over ``n`` samples per position;
    covariance is the unbiased estimate plus ``regularisation``·I, as in PaDiM.
    """
    if n < 2:
        raise ValueError("need at least two samples per position for a covariance")
    total, outer = total.double(), outer.double()
    centred_mean = total / n
    cov = (outer - n * centred_mean[:, :, None] * centred_mean[:, None, :]) / (n - 1)
    cov = cov + regularisation * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return (centred_mean + shift.double()), torch.cholesky_inverse(torch.linalg.cholesky(cov))
