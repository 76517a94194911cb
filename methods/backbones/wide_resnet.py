"""Wide ResNet-50-2 / -101-2 trunks from torchvision (PatchCore's and EfficientAD's paper backbones).

torchvision builds the network; this module keeps the stem and ``layer1..last_layer`` (no pooling or
classifier) under torchvision's own parameter names, so its ImageNet weights load unchanged.
No attention variants: SE/CBAM blocks exist for ResNet-18 and AlexNet only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from insplad_tools.errors import InspladError

LAYERS = ("layer1", "layer2", "layer3", "layer4")
CHANNELS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


class WideResNetFeatures(nn.Module):
    """Stem + ``layer1..last_layer`` of a torchvision Wide ResNet; ``forward`` returns named feature maps."""

    def __init__(self, depth: int = 50, last_layer: str = "layer4") -> None:
        super().__init__()
        from torchvision.models import wide_resnet50_2, wide_resnet101_2

        if last_layer not in LAYERS:
            raise InspladError(f"unknown Wide ResNet layer {last_layer!r}; choose one of {', '.join(LAYERS)}")
        builders = {50: wide_resnet50_2, 101: wide_resnet101_2}
        if depth not in builders:
            raise InspladError(f"Wide ResNet depth must be 50 or 101, got {depth}")
        net = builders[depth](weights=None)
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer_names = LAYERS[: LAYERS.index(last_layer) + 1]
        for name in self.layer_names:
            self.add_module(name, getattr(net, name))

    def forward(self, x: torch.Tensor, layers: Sequence[str] = ("layer2", "layer3")) -> dict[str, torch.Tensor]:
        unknown = [name for name in layers if name not in self.layer_names]
        if unknown:
            raise InspladError(f"Wide ResNet-{self.depth}-2 features stop at {self.layer_names[-1]}; cannot give {unknown}")
        out: dict[str, torch.Tensor] = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.layer_names:
            x = getattr(self, name)(x)
            if name in layers:
                out[name] = x
                if len(out) == len(layers):
                    break
        return out

    def load_pretrained(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a torchvision Wide ResNet state dict (the classifier and later layers are ignored)."""
        own = self.state_dict()
        wanted = {k: v for k, v in state.items() if k in own}
        missing = [k for k in own if k not in wanted]
        if missing:
            raise InspladError(f"{source}: not a Wide ResNet-{self.depth}-2 state dict (missing "
                               f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
        bad = [k for k, v in wanted.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise InspladError(f"{source}: shape mismatch for {', '.join(bad[:3])}")
        self.load_state_dict(wanted, strict=True)
