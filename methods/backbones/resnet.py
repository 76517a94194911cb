"""ResNet-18 feature extractor with optional SE or CBAM attention in every BasicBlock.

The attention sits on the residual branch, after ``bn2`` and before the addition (SE-ResNet and
CBAM-ResNet placement). Parameter names match torchvision's ``resnet18`` so its ImageNet weights load
directly; only the attention keys (``layerX.Y.attention.*``) are new and start from random init.
Extra parameters over the plain network: SE (r=16, no bias) 87,040; CBAM (official style) 89,880.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from insplad_tools.errors import InspladError
from methods.attention import check_attention, make_attention
from methods.weights import load_state_dict

LAYERS = ("layer1", "layer2", "layer3", "layer4")
CHANNELS = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn -> attention -> + identity -> relu."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, attention: str = "none") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attention = make_attention(attention, planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attention(self.bn2(self.conv2(out)))
        return self.relu(out + identity)


class ResNet18Features(nn.Module):
    """ResNet-18 trunk up to ``last_layer`` (no pooling/classifier); ``forward`` returns named feature maps."""

    def __init__(self, attention: str = "none", last_layer: str = "layer4") -> None:
        super().__init__()
        check_attention(attention)
        if last_layer not in LAYERS:
            raise InspladError(f"unknown ResNet-18 layer {last_layer!r}; choose one of {', '.join(LAYERS)}")
        self.attention = attention
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer_names = LAYERS[: LAYERS.index(last_layer) + 1]
        inplanes = 64
        for name in self.layer_names:
            planes = CHANNELS[name]
            stride = 1 if name == "layer1" else 2
            self.add_module(name, nn.Sequential(BasicBlock(inplanes, planes, stride, attention),
                                                BasicBlock(planes, planes, 1, attention)))
            inplanes = planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.out_channels > 1:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, layers: Sequence[str] = ("layer2", "layer3")) -> dict[str, torch.Tensor]:
        unknown = [name for name in layers if name not in self.layer_names]
        if unknown:
            raise InspladError(f"ResNet-18 features stop at {self.layer_names[-1]}; cannot give {unknown}")
        out: dict[str, torch.Tensor] = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.layer_names:
            x = getattr(self, name)(x)
            if name in layers:
                out[name] = x
            if len(out) == len(layers):
                break
        return out

    def attention_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".attention." in n]

    def conv_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".attention." not in n]

    def load_pretrained(self, state: dict[str, torch.Tensor], source: str = "weights") -> None:
        """Load a torchvision ResNet-18 state dict; only attention keys may be missing."""
        own = self.state_dict()
        wanted = {k: v for k, v in state.items() if k in own}
        missing = [k for k in own if k not in wanted and ".attention." not in k]
        if missing:
            raise InspladError(f"{source}: not a ResNet-18 state dict (missing {', '.join(missing[:4])}"
                               f"{' ...' if len(missing) > 4 else ''})")
        bad = [k for k, v in wanted.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise InspladError(f"{source}: shape mismatch for {', '.join(bad[:4])}")
        result = self.load_state_dict(wanted, strict=False)
        assert all(".attention." in k for k in result.missing_keys)


def resnet18_extractor(attention: str = "none", *, pretrained: bool = True, weights: str | Path | None = None,
                       last_layer: str = "layer4", progress: bool = False) -> ResNet18Features:
    """Build (SE-/CBAM-)ResNet-18 features with torchvision ImageNet weights (``weights`` = a file instead).

    With ``pretrained=False`` and no ``weights`` everything is randomly initialised. Attention blocks
    are always new (random init) and meant to be trained.
    """
    from torchvision.models import ResNet18_Weights

    model = ResNet18Features(attention, last_layer)
    state = load_state_dict(ResNet18_Weights.IMAGENET1K_V1, pretrained=pretrained, path=weights, progress=progress)
    if state is not None:
        model.load_pretrained(state, source=str(weights) if weights is not None else "torchvision resnet18")
    return model


def resnet18_for_run(attention: str, *, pretrained: bool, weights: str | None, progress: bool = False,
                     last_layer: str = "layer3") -> tuple[ResNet18Features, str]:
    """A (SE-/CBAM-)ResNet-18 trunk for a run, and where its weights came from (for results notes).

    Same as ``build_backbone("resnet18", ...)`` from :mod:`methods.backbones.registry`.
    """
    from methods.backbones.registry import build_backbone

    backbone, source = build_backbone("resnet18", attention=attention, pretrained=pretrained, weights=weights,
                                      progress=progress, last_layer=last_layer)
    assert isinstance(backbone, ResNet18Features)
    return backbone, source
