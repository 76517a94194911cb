"""SimpleNet's torch modules: patch embedding, feature adaptor, discriminator, and the map post-processing.

Training logic lives in :mod:`methods.simplenet.detector`; this module holds only networks and
pure tensor functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from methods.backbones.resnet import CHANNELS, ResNet18Features


class PatchEmbedder(nn.Module):
    """Local 3x3 neighbourhood aggregation of several feature maps into one vector per layer-2 location.

    Each map is unfolded with a ``patch_size`` window (stride 1, same padding), coarser maps are
    resized bilinearly to the first map's grid, each layer's C*k*k vector is average-pooled to
    ``pretrain_dim`` and the stacked layers are pooled again to ``target_dim``.
    """

    def __init__(self, pretrain_dim: int, target_dim: int, patch_size: int = 3) -> None:
        super().__init__()
        self.pretrain_dim = pretrain_dim
        self.target_dim = target_dim
        self.patch_size = patch_size

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = tuple(features[0].shape[-2:])
        pooled = []
        for feat in features:
            b, c, h, w = feat.shape
            patches = F.unfold(feat, self.patch_size, padding=self.patch_size // 2).reshape(b, c * self.patch_size ** 2, h, w)
            if (h, w) != grid:
                patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
            vectors = patches.permute(0, 2, 3, 1).reshape(-1, 1, patches.shape[1])
            pooled.append(F.adaptive_avg_pool1d(vectors, self.pretrain_dim))
        stacked = torch.cat(pooled, dim=1).reshape(pooled[0].shape[0], 1, -1)
        return F.adaptive_avg_pool1d(stacked, self.target_dim).squeeze(1), grid  # (B*H*W, target_dim)


class Discriminator(nn.Module):
    """Linear -> BatchNorm -> LeakyReLU(0.2) -> Linear(no bias): a normality score per patch (high = normal)."""

    def __init__(self, dim: int, hidden: int = 1024) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2))
        self.tail = nn.Linear(hidden, 1, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(x)).squeeze(-1)


def make_adaptor(dim: int) -> nn.Linear:
    """The feature adaptor: one Linear d->d with bias and no activation (Xavier-normal init)."""
    layer = nn.Linear(dim, dim)
    nn.init.xavier_normal_(layer.weight)
    return layer


class SimpleNetModel(nn.Module):
    """Frozen (attention-)ResNet-18 (or another registry backbone) -> patch embedding -> adaptor -> discriminator."""

    layers = ("layer2", "layer3")

    def __init__(self, backbone: ResNet18Features | nn.Module, pretrain_dim: int = 1536, target_dim: int = 1536,
                 hidden: int = 1024, patch_size: int = 3, map_sigma: float = 4.0,
                 layers: Sequence[str] | None = None, channels: Sequence[int] | None = None) -> None:
        super().__init__()
        self.map_sigma = map_sigma
        self.backbone = backbone
        if layers is not None:  # another backbone's stride-8/16 pair (registry ``layers_at(8, 16)``)
            self.layers = tuple(layers)
        self._channels = list(channels) if channels is not None else [CHANNELS[name] for name in self.layers]
        for name, p in backbone.named_parameters():
            if ".attention." not in name:
                p.requires_grad_(False)
        self.embedder = PatchEmbedder(pretrain_dim, target_dim, patch_size)
        self.adaptor = make_adaptor(target_dim)
        self.discriminator = Discriminator(target_dim, hidden)

    @property
    def feature_channels(self) -> list[int]:
        return list(self._channels)

    def attention_modules(self) -> list[nn.Module]:
        """The SE/CBAM blocks inside the backbone (empty for the plain ResNet-18 and backbones without them)."""
        return [m.attention for m in self.backbone.modules()
                if isinstance(getattr(m, "attention", None), nn.Module) and not isinstance(m.attention, nn.Identity)]

    def attention_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.attention_modules() for p in m.parameters()]

    def train(self, mode: bool = True) -> SimpleNetModel:
        """Train mode for the heads and attention blocks; the pretrained trunk's BatchNorms stay frozen."""
        super().train(mode)
        self.backbone.eval()
        if mode:
            for module in self.attention_modules():
                module.train()
        return self

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embeddings (B*H*W, d) of a normalised image batch, and the grid (H, W)."""
        trainable = any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            feats = self.backbone(images, self.layers)
            return self.embedder([feats[name] for name in self.layers])

    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly score per patch, (B, H, W): minus the discriminator output."""
        emb, (h, w) = self.embed(images)
        return -self.discriminator(self.adaptor(emb)).reshape(images.shape[0], h, w)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, H_img, W_img)."""
        scores = self.patch_scores(images)
        return scores.flatten(1).amax(dim=1), upsample_and_blur(scores, images.shape[-2:], self.map_sigma)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of (B, H, W) maps, as ``scipy.ndimage.gaussian_filter`` (reflect, truncate 4)."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma).to(maps)
    radius = kernel.numel() // 2
    x = maps[:, None]
    for dim in (2, 3):
        x = _pad_symmetric(x, radius, dim)
        weight = kernel.view(1, 1, 1, -1) if dim == 3 else kernel.view(1, 1, -1, 1)
        x = F.conv2d(x, weight)
    return x[:, 0]


def _pad_symmetric(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Pad by mirroring with the edge sample repeated (scipy.ndimage ``reflect``), any radius."""
    while radius > 0:
        step = min(radius, x.shape[dim])
        head = x.narrow(dim, 0, step).flip(dim)
        tail = x.narrow(dim, x.shape[dim] - step, step).flip(dim)
        x = torch.cat([head, x, tail], dim=dim)
        radius -= step
    return x


def upsample_and_blur(scores: torch.Tensor, size: Sequence[int], sigma: float) -> torch.Tensor:
    """Patch grid -> bilinear to ``size`` -> Gaussian filter (SimpleNet's RescaleSegmentor)."""
    maps = F.interpolate(scores[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return gaussian_blur(maps, sigma)
