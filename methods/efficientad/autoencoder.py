"""EfficientAD's autoencoder: a strided-conv encoder to a 1x1 bottleneck and an upsampling conv decoder.

At 256 px it is exactly the reference network (1,096,320 parameters). For smaller inputs (tests) the
bottleneck conv spans the whole remaining grid (``image_size // 32``) and the decoder's upsampling
sizes scale with the input, so the output always matches the PDN output map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.efficientad.pdn import pdn_output_size

# Decoder upsampling sizes at 256 px input, scaled for other sizes.
_DECODER_SIZES_256 = (3, 8, 15, 32, 63, 127)


class AutoEncoder(nn.Module):
    def __init__(self, out_channels: int = 384, image_size: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        if image_size < 64:
            raise ValueError(f"EfficientAD needs images of at least 64 px (got {image_size})")
        bottleneck = image_size >> 5
        chans = (3, 32, 32, 64, 64, 64)
        self.encoder = nn.Sequential()
        for i in range(5):
            self.encoder.extend([nn.Conv2d(chans[i], chans[i + 1], 4, stride=2, padding=1), nn.ReLU(inplace=True)])
        self.encoder.append(nn.Conv2d(64, 64, bottleneck))
        self.sizes = tuple(max(1, round(s * image_size / 256)) for s in _DECODER_SIZES_256)
        self.output_size = pdn_output_size(image_size)
        self.decoder_convs = nn.ModuleList(nn.Conv2d(64, 64, 4, padding=2) for _ in self.sizes)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(64, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)
        for size, conv in zip(self.sizes, self.decoder_convs):
            x = F.interpolate(x, size=size, mode="bilinear")
            x = self.dropout(F.relu(conv(x)))
        x = F.interpolate(x, size=self.output_size, mode="bilinear")
        return self.head(x)
