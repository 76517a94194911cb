"""Patch description networks (PDN-small and PDN-medium): the EfficientAD teacher and student.

small:  conv4x4 3->128, ReLU, avgpool 2 | conv4x4 128->256, ReLU, avgpool 2 | conv3x3 256->256, ReLU | conv4x4 256->C
medium: conv4x4 3->256, ReLU, avgpool 2 | conv4x4 256->512, ReLU, avgpool 2 | conv1x1 512->512, ReLU |
        conv3x3 512->512, ReLU | conv4x4 512->C, ReLU | conv1x1 C->C
(inner widths scale with ``width``: 256 small / 512 medium in the paper; the first conv has half).
Without padding a 256 px input gives a 56x56 map for both (in general ``in/4 - 8``); the teacher is
distilled with padding and used without, as in the reference code. Parameter names are anomalib's
(``conv1``...), so its teacher files load as they are; optional SE/CBAM blocks follow each inner
ReLU before pooling (small: 3 blocks at 128/256/256 channels; medium: 4 at 256/512/512/512, not
after conv5, whose ReLU output is the descriptor itself): the student's attention.
"""

from __future__ import annotations

import torch
from torch import nn

from methods.attention import ATTENTIONS, make_attention

# The student's CBAM follows AttentDifferNet's reading of the attention forks: r=16, a 49x49 spatial
# conv with bias, bias-free MLP, residual inside the block. SE: r=16, bias-free (the SE paper).
STUDENT_ATTENTION_KWARGS = {
    "se": {"reduction": 16, "bias": False},
    "cbam": {"reduction": 16, "kernel_size": 49, "mlp_bias": False, "spatial_bn": False, "residual": True},
}
PDN_SIZES = ("small", "medium")
DEFAULT_WIDTH = {"small": 256, "medium": 512}


class PDN(nn.Module):
    """PDN-small or PDN-medium with ``out_channels`` outputs and optional attention after the inner ReLUs."""

    def __init__(self, out_channels: int = 384, padding: bool = False, attention: str = "none",
                 attention_kwargs: dict | None = None, width: int | None = None, size: str = "small") -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}")
        if size not in PDN_SIZES:
            raise ValueError(f"unknown PDN size {size!r}; choose small or medium")
        kwargs = STUDENT_ATTENTION_KWARGS.get(attention, {}) if attention_kwargs is None else attention_kwargs
        width = DEFAULT_WIDTH[size] if width is None else width
        pad = 1 if padding else 0
        self.out_channels, self.padding, self.width, self.size = out_channels, padding, width, size
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 4, padding=3 * pad)
        self.att1 = make_attention(attention, half, **kwargs)
        self.pool1 = nn.AvgPool2d(2, 2, padding=pad)
        self.conv2 = nn.Conv2d(half, width, 4, padding=3 * pad)
        self.att2 = make_attention(attention, width, **kwargs)
        self.pool2 = nn.AvgPool2d(2, 2, padding=pad)
        if size == "small":
            self.conv3 = nn.Conv2d(width, width, 3, padding=pad)
            self.att3 = make_attention(attention, width, **kwargs)
            self.conv4 = nn.Conv2d(width, out_channels, 4)
        else:
            self.conv3 = nn.Conv2d(width, width, 1)
            self.att3 = make_attention(attention, width, **kwargs)
            self.conv4 = nn.Conv2d(width, width, 3, padding=pad)
            self.att4 = make_attention(attention, width, **kwargs)
            self.conv5 = nn.Conv2d(width, out_channels, 4)
            self.conv6 = nn.Conv2d(out_channels, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.att1(self.relu(self.conv1(x))))
        x = self.pool2(self.att2(self.relu(self.conv2(x))))
        x = self.att3(self.relu(self.conv3(x)))
        if self.size == "small":
            return self.conv4(x)
        x = self.att4(self.relu(self.conv4(x)))
        return self.conv6(self.relu(self.conv5(x)))


def pdn_output_size(image_size: int, padding: bool = False) -> int:
    """Side of the PDN output map for a square input (the same for small and medium)."""
    pad = 1 if padding else 0
    s = image_size + 6 * pad - 3
    s = (s + 2 * pad - 2) // 2 + 1
    s = s + 6 * pad - 3
    s = (s + 2 * pad - 2) // 2 + 1
    s = s + 2 * pad - 2
    return s - 3


def pdn_small(out_channels: int = 384, *, padding: bool = False, attention: str = "none", width: int = 256) -> PDN:
    """EfficientAD-S PDN: teacher with 384 outputs, student with 768 (teacher channels + AE-mimic channels).

    ``width`` (256 in the paper; the first conv has half) exists so tests can run a narrow network.
    """
    return PDN(out_channels, padding=padding, attention=attention, width=width, size="small")


def pdn_medium(out_channels: int = 384, *, padding: bool = False, attention: str = "none", width: int = 512) -> PDN:
    """EfficientAD-M PDN (student with 768 outputs: 11,615,488 parameters at width 512)."""
    return PDN(out_channels, padding=padding, attention=attention, width=width, size="medium")


def build_pdn(size: str, out_channels: int, *, padding: bool = False, attention: str = "none",
              width: int | None = None, attention_kwargs: dict | None = None) -> PDN:
    return PDN(out_channels, padding=padding, attention=attention, attention_kwargs=attention_kwargs, width=width,
               size=size)
