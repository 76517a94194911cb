"""AlexNet feature extractor with optional attention blocks AB1/AB2/AB3 (AttentDifferNet, seed 000 Fig. 2).

The blocks sit after the ReLU of conv1 (64 ch), conv2 (192 ch) and conv5 (256 ch), each before the
max-pool that follows it. Convolutions come from torchvision's ``alexnet().features``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import AlexNet_Weights

from insplad_tools.errors import InspladError
from methods.attention import check_attention, make_attention
from methods.weights import load_state_dict

# block number -> (index in alexnet().features after which it is applied, channels there)
BLOCK_POSITIONS: dict[int, tuple[int, int]] = {1: (1, 64), 2: (4, 192), 3: (11, 256)}
OUT_CHANNELS = 256


def alexnet_features() -> nn.Sequential:
    """The layers of torchvision's ``alexnet().features`` (same indices and state-dict keys), built
    without the 58M-parameter classifier that ``alexnet()`` would also initialise."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
    )


class AlexNetFeatures(nn.Module):
    """``alexnet().features`` with attention blocks inserted at the chosen positions."""

    def __init__(self, attention: str = "none", blocks: Iterable[int] = (1, 2, 3), **attention_kwargs: Any) -> None:
        super().__init__()
        check_attention(attention)
        blocks = tuple(sorted(set(int(b) for b in blocks)))
        bad = [b for b in blocks if b not in BLOCK_POSITIONS]
        if bad:
            raise InspladError(f"attention blocks must be among 1, 2, 3 (AB1..AB3); got {bad}")
        self.features = alexnet_features()
        self.attention_kind = attention
        self.blocks = blocks if attention != "none" else ()
        self.attention = nn.ModuleDict({
            str(b): make_attention(attention, BLOCK_POSITIONS[b][1], **attention_kwargs) for b in self.blocks
        })
        self._after = {BLOCK_POSITIONS[b][0]: str(b) for b in self.blocks}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.features):
            x = layer(x)
            key = self._after.get(index)
            if key is not None:
                x = self.attention[key](x)
        return x

    def conv_parameters(self) -> list[nn.Parameter]:
        return list(self.features.parameters())

    def attention_parameters(self) -> list[nn.Parameter]:
        return list(self.attention.parameters())


# named outputs (after the ReLU, after any attention block) -> index in alexnet().features, channels, stride
LAYER_INDEX: dict[str, tuple[int, int, int]] = {
    "conv1": (1, 64, 4), "conv2": (4, 192, 8), "conv3": (7, 384, 16), "conv4": (9, 256, 16),
    "conv5": (11, 256, 16), "pool5": (12, 256, 32),
}


class AlexNetLayers(nn.Module):
    """:class:`AlexNetFeatures` whose ``forward(x, layers)`` returns named outputs, like the other backbones."""

    def __init__(self, net: AlexNetFeatures, last_layer: str = "pool5") -> None:
        super().__init__()
        if last_layer not in LAYER_INDEX:
            raise InspladError(f"unknown AlexNet layer {last_layer!r}; choose one of {', '.join(LAYER_INDEX)}")
        self.net = net
        self.layer_names = tuple(LAYER_INDEX)[: tuple(LAYER_INDEX).index(last_layer) + 1]
        self._names = {LAYER_INDEX[name][0]: name for name in self.layer_names}

    def forward(self, x: torch.Tensor, layers: Sequence[str] = ("conv5",)) -> dict[str, torch.Tensor]:
        unknown = [name for name in layers if name not in self.layer_names]
        if unknown:
            raise InspladError(f"AlexNet features stop at {self.layer_names[-1]}; cannot give {unknown}")
        out: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(self.net.features):
            x = layer(x)
            key = self.net._after.get(index)
            if key is not None:
                x = self.net.attention[key](x)
            name = self._names.get(index)
            if name in layers:
                out[name] = x
                if len(out) == len(layers):
                    break
        return out


def alexnet_extractor(attention: str = "none", blocks: Iterable[int] = (1, 2, 3), *, pretrained: bool = False,
                      weights: str | Path | None = None, progress: bool = False, **attention_kwargs: Any) -> AlexNetFeatures:
    """Build the extractor; convs from ImageNet (``pretrained``) or a state dict file (``weights``).

    Attention blocks always start from their own random initialisation.
    """
    model = AlexNetFeatures(attention, blocks, **attention_kwargs)
    state = load_state_dict(AlexNet_Weights.IMAGENET1K_V1, pretrained=pretrained, path=weights, progress=progress)
    if state is not None:
        conv_state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        if not conv_state:  # a file holding just the features' own state dict
            conv_state = dict(state)
        try:
            model.features.load_state_dict(conv_state, strict=True)
        except RuntimeError as exc:
            source = weights if weights is not None else "ImageNet weights"
            raise InspladError(f"{source}: does not fit AlexNet features ({str(exc).splitlines()[0]})") from exc
    return model
