"""FastFlow's torch model: frozen (SE-/CBAM-)ResNet features, per-stage LayerNorm and a 2-D FrEIA flow.

Training logic lives in :mod:`methods.fastflow.detector`; this module holds the networks and pure
tensor functions. Each feature stage (C, H, W) gets a trainable ``LayerNorm([C, H, W])`` and its own
fully convolutional flow of ``flow_steps`` FrEIA ``AllInOneBlock`` s (affine clamp 2.0, hard
permutation) whose subnets are conv k -> ReLU -> conv k with hidden width = ``hidden_ratio`` x the
subnet's input channels; k alternates 3x3 (even steps) and 1x1 (odd steps) unless ``conv3x3_only``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from FrEIA.framework import SequenceINN
from FrEIA.modules import AllInOneBlock
from torch import nn


def conv_subnet(kernel_size: int, hidden_ratio: float) -> Callable[[int, int], nn.Module]:
    """A FrEIA ``subnet_constructor``: conv k -> ReLU -> conv k ("same" padding)."""

    def build(channels_in: int, channels_out: int) -> nn.Module:
        hidden = max(1, int(channels_in * hidden_ratio))
        return nn.Sequential(nn.Conv2d(channels_in, hidden, kernel_size, padding=kernel_size // 2), nn.ReLU(),
                             nn.Conv2d(hidden, channels_out, kernel_size, padding=kernel_size // 2))

    return build


def fastflow_stage(shape: Sequence[int], flow_steps: int = 8, hidden_ratio: float = 1.0, conv3x3_only: bool = False,
                   clamp: float = 2.0) -> SequenceINN:
    """The flow of one feature stage of shape (C, H, W); ``flow(x)`` returns ``(z, log|det J|)``.

    ``AllInOneBlock(permute_soft=False)`` draws its channel permutation from numpy's global RNG, so
    the caller seeds numpy first (``Detector.fit`` does); the permutation is a buffer-like parameter
    saved with the state dict.
    """
    flow = SequenceINN(*shape)
    for step in range(flow_steps):
        kernel = 1 if step % 2 == 1 and not conv3x3_only else 3
        flow.append(AllInOneBlock, subnet_constructor=conv_subnet(kernel, hidden_ratio), affine_clamping=clamp,
                    permute_soft=False)
    return flow


class FastFlowModel(nn.Module):
    """Backbone stages -> LayerNorm -> one 2-D flow per stage; ``forward`` gives image scores and maps.

    ``backbone(images, layers)`` must return a dict of feature maps; ``shapes`` are their (C, H, W)
    at the training image size (the LayerNorms are shaped by them, as in the reference code).
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[str], shapes: Sequence[Sequence[int]],
                 flow_steps: int = 8, hidden_ratio: float = 1.0, conv3x3_only: bool = False,
                 clamp: float = 2.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = tuple(layers)
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.norms = nn.ModuleList(nn.LayerNorm(list(s), elementwise_affine=True) for s in self.shapes)
        self.flows = nn.ModuleList(fastflow_stage(s, flow_steps, hidden_ratio, conv3x3_only, clamp)
                                   for s in self.shapes)

    def attention_modules(self) -> list[nn.Module]:
        """SE/CBAM blocks inside the backbone (empty for a plain backbone)."""
        return [m for n, m in self.backbone.named_modules()
                if n.endswith(".attention") and not isinstance(m, nn.Identity)]

    def train(self, mode: bool = True) -> FastFlowModel:
        """Train mode for norms, flows and attention; the frozen trunk (and its BatchNorms) stays in eval."""
        super().train(mode)
        self.backbone.eval()
        if mode:
            for module in self.attention_modules():
                module.train()
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Raw backbone stages of a normalised batch (with gradients only when attention trains)."""
        trainable = any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            feats = self.backbone(images, self.layers)
        return [feats[name] for name in self.layers]

    def latents(self, features: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(z, log|det J|)`` of each stage after its LayerNorm."""
        return [flow(norm(f)) for f, norm, flow in zip(features, self.norms, self.flows)]

    @staticmethod
    def nll(latents: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """FastFlow's loss: sum over stages of the batch mean of 0.5 * sum z^2 - log|det J|."""
        return sum(torch.mean(0.5 * z.pow(2).flatten(1).sum(1) - logdet) for z, logdet in latents)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, H_img, W_img): mean over stages of -exp(-0.5 mean_c z^2)."""
        maps = anomaly_map([z for z, _ in self.latents(self.features(images))], images.shape[-2:])
        return maps.flatten(1).amax(dim=1), maps


def anomaly_map(latents: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """Per stage ``-exp(-0.5 * mean_c z^2)`` upsampled bilinearly to ``size``, averaged over stages: (B, H, W)."""
    maps = [F.interpolate(-torch.exp(-0.5 * z.pow(2).mean(dim=1, keepdim=True)), size=tuple(size), mode="bilinear",
                          align_corners=False) for z in latents]
    return torch.stack(maps, dim=-1).mean(dim=-1)[:, 0]
