"""PatchCore's torch model: frozen backbone patch features, a memory bank, nearest-neighbour scoring.

Fitting logic (feature collection, coreset) lives in :mod:`methods.patchcore.detector`; this module
holds the network and pure tensor functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from methods.backbones.resnet import CHANNELS, ResNet18Features
from methods.patchcore.coreset import nearest_neighbours
from methods.simplenet.model import gaussian_blur


class PatchCoreModel(nn.Module):
    """Backbone stride-8 + stride-16 stages -> 3x3 average aggregation -> patches -> NN distance to the bank.

    Without ``layers``/``channels`` it expects a (SE-/CBAM-)ResNet-18 (layer2 + layer3: 384-d patches)."""

    layers = ("layer2", "layer3")

    def __init__(self, backbone: ResNet18Features | nn.Module, num_neighbors: int = 9, map_sigma: float = 4.0,
                 upsample: str = "bilinear", layers: Sequence[str] | None = None,
                 channels: Sequence[int] | None = None) -> None:
        super().__init__()
        if layers is not None:  # another backbone's stride-8/16 pair (registry ``layers_at(8, 16)``)
            self.layers = tuple(layers)
        self._channels = list(channels) if channels is not None else [CHANNELS[name] for name in self.layers]
        self.backbone = backbone.eval()
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.num_neighbors = num_neighbors
        self.map_sigma = map_sigma
        self.upsample = upsample
        self.register_buffer("memory_bank", torch.empty(0, self.feature_dim))

    @property
    def feature_dim(self) -> int:
        return sum(self._channels)

    def train(self, mode: bool = True) -> PatchCoreModel:
        """Nothing trains: the backbone (and its BatchNorms) always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features (B, H*W, 384) of a normalised batch and the layer-2 grid (H, W)."""
        feats = self.backbone(images, self.layers)
        grid = tuple(feats[self.layers[0]].shape[-2:])
        maps = []
        for name in self.layers:
            f = F.avg_pool2d(feats[name], 3, stride=1, padding=1)
            if tuple(f.shape[-2:]) != grid:
                f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            maps.append(f)
        emb = torch.cat(maps, dim=1)
        return emb.flatten(2).transpose(1, 2).contiguous(), grid

    def set_memory_bank(self, bank: torch.Tensor) -> None:
        self.memory_bank = bank.detach().to(self.memory_bank.device, torch.float32).contiguous()

    @torch.no_grad()
    def image_scores(self, emb: torch.Tensor, patch_scores: torch.Tensor, nn_index: torch.Tensor) -> torch.Tensor:
        """Max patch score, reweighted as in PatchCore: s* * (1 - softmax(d(m*, N_k(m)))[0]).

        m* is the most anomalous patch, m its nearest bank entry and N_k(m) the k bank entries
        nearest to m (m itself first); k = 1 gives the plain maximum.
        """
        b = torch.arange(emb.shape[0], device=emb.device)
        best = patch_scores.argmax(dim=1)
        top = patch_scores[b, best]
        if self.num_neighbors <= 1:
            return top
        bank = self.memory_bank
        _, support = nearest_neighbours(bank[nn_index[b, best]], bank, k=self.num_neighbors)
        dist = torch.linalg.vector_norm(emb[b, best][:, None, :] - bank[support], dim=-1)
        return (1.0 - torch.softmax(dist, dim=1)[:, 0]) * top

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, H_img, W_img)."""
        if self.memory_bank.shape[0] == 0:
            raise RuntimeError("PatchCore memory bank is empty: fit the model first")
        emb, (h, w) = self.embed(images)
        bsz, n, d = emb.shape
        dist, idx = nearest_neighbours(emb.reshape(-1, d), self.memory_bank)
        patch_scores, nn_index = dist[:, 0].reshape(bsz, n), idx[:, 0].reshape(bsz, n)
        scores = self.image_scores(emb, patch_scores, nn_index)
        grid = patch_scores.reshape(bsz, 1, h, w)
        if self.upsample == "nearest":
            maps = F.interpolate(grid, size=tuple(images.shape[-2:]), mode="nearest")
        else:
            maps = F.interpolate(grid, size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)
        return scores, gaussian_blur(maps[:, 0], self.map_sigma)
