"""Channel and spatial attention blocks: Squeeze-and-Excitation (SE) and CBAM.

Both keep the input's shape, so they can be dropped after any convolution. Defaults follow the
original papers (SE: reduction 16, bias-free MLP; CBAM: reduction 16, 7x7 spatial conv).
AttentDifferNet's reading of the forks (SE r=2; CBAM r=16, k=49 with an internal residual) is
expressed through the constructor arguments, not separate classes.
"""

from __future__ import annotations

import torch
from torch import nn

ATTENTIONS = ("none", "se", "cbam")


class SE(nn.Module):
    """Squeeze (global average pool) -> excitation (C -> C/r -> C MLP, sigmoid) -> channel scaling."""

    def __init__(self, channels: int, reduction: int = 16, bias: bool = False) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=bias),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=bias),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class ChannelGate(nn.Module):
    """CBAM channel attention: a shared MLP over average- and max-pooled descriptors, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16, bias: bool = True) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden, bias=bias), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, channels, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return torch.sigmoid(logits)[:, :, None, None]


class SpatialGate(nn.Module):
    """CBAM spatial attention: a k x k conv over the channel-wise max and mean maps, sigmoid."""

    def __init__(self, kernel_size: int = 7, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel gate, then spatial gate.

    ``residual=True`` returns ``x + x*Mc*Ms`` (the AttentDifferNet forks' variant) instead of
    ``x*Mc*Ms`` (the CBAM paper).
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, *, mlp_bias: bool = True,
                 spatial_bn: bool = True, residual: bool = False) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction, bias=mlp_bias)
        self.spatial = SpatialGate(kernel_size, batch_norm=spatial_bn)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refined = x * self.channel(x)
        refined = refined * self.spatial(refined)
        return x + refined if self.residual else refined


def check_attention(kind: str) -> None:
    """Raise a one-line :class:`InspladError` for an unknown attention name."""
    from insplad_tools.errors import InspladError

    if kind not in ATTENTIONS:
        raise InspladError(f"unknown attention {kind!r}; choose one of {', '.join(ATTENTIONS)}")


def make_attention(kind: str, channels: int, **kwargs) -> nn.Module:
    """Build an attention block by name ("none" gives an identity)."""
    if kind == "none":
        return nn.Identity()
    if kind == "se":
        return SE(channels, **kwargs)
    if kind == "cbam":
        return CBAM(channels, **kwargs)
    raise ValueError(f"unknown attention {kind!r}; choose one of {', '.join(ATTENTIONS)}")
