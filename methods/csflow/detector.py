"""CS-Flow behind the shared :class:`~methods.base.Detector` contract.

Defaults follow the reference code (``marco-rudolph/cs-flow``, ``config.py``/``train.py``): frozen
EfficientNet-B5 features after block 35 (304 channels, stride 32) of the image at 768, 384 and
192 px (nearest-neighbour downscaling), i.e. 24x24, 12x12 and 6x6 maps; 4 cross-scale coupling
blocks, clamp 3 (atan soft clamp), cross-convolution subnets with 1024 hidden channels and kernel
sizes 3, 3, 3, 5, LeakyReLU 0.1, output gains initialised at 0; Adam lr 2e-4, eps 1e-4, weight
decay 1e-5, gradient-norm clip 1; batch 16; 240 epochs (4 meta-epochs x 60); loss = mean(0.5 sum
z^2 - log|det J|) / dimension. Image score = mean of z^2 / 2 over every latent element. The reference
evaluates images only; the map is anomalib's (product over scales of the bilinearly upsampled
channel mean of z^2). The last epoch is reported.

Backbone: ``efficientnet_b5`` is torchvision's EfficientNet-B5 (its ImageNet weights, from the
torchvision cache or ``--weights``), where the reference used the ``efficientnet_pytorch`` port of
the same TensorFlow network; ``--option backbone=NAME --option layer=STAGE`` uses another backbone
of the shared registry (e.g. ``resnet18``, ``layer=layer3``) instead. No attention: seed 000 ran
CS-Flow without it, and SE/CBAM blocks on its frozen backbone would stay untrained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from insplad_tools.errors import InspladError
from methods.base import MapDetector, RunConfig
from methods.csflow.model import CSFlowModel, EfficientNetB5Features
from methods.data import load_images_uint8, normalise, to_device
from methods.fastflow.detector import feature_shapes, flow_backbone, flow_state, load_flow_state
from methods.optim import adam
from methods.simplenet.detector import calibrate_batchnorm
from methods.weights import load_state_dict


@dataclass
class CSFlowOptions:
    attention: str = "none"  # only none: seed 000 ran CS-Flow without attention
    backbone: str = "efficientnet_b5"
    layer: str = ""  # backbone stage; "" = block35 of EfficientNet-B5 (required for other backbones)
    coupling_blocks: int = 4
    clamp: float = 3.0
    hidden: int = 1024  # hidden channels of the cross convolutions
    kernel_sizes: tuple = (3, 3, 3, 5)  # one per coupling block
    lr: float = 2e-4
    eps: float = 1e-4
    weight_decay: float = 1e-5
    max_grad_norm: float = 1.0
    feature_cache_mb: int = 2048  # cache the train set's backbone features when they fit (0 = never)


def efficientnet_b5_for_run(run: RunConfig, pretrained: bool) -> tuple[torch.nn.Module, str]:
    """EfficientNet-B5 up to block 35 with torchvision's ImageNet weights (or ``--weights``, or random)."""
    from torchvision.models import EfficientNet_B5_Weights

    model = EfficientNetB5Features()
    state = load_state_dict(EfficientNet_B5_Weights.IMAGENET1K_V1, pretrained=pretrained,
                            path=run.weights if pretrained else None, progress=run.progress)
    if state is None:
        return model, "random"
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing or any(tuple(state[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise InspladError(f"{run.weights or 'torchvision efficientnet_b5'}: not an EfficientNet-B5 state dict "
                           f"({'missing ' + missing[0] if missing else 'shape mismatch'})")
    model.load_state_dict({k: state[k] for k in own})
    return model, f"weights file {Path(run.weights).name}" if run.weights else "imagenet"


class CSFlowDetector(MapDetector):
    """CS-Flow: a cross-scale normalizing flow on frozen multi-scale features; image scores and maps."""

    name = "csflow"
    Options = CSFlowOptions
    default_epochs = 240
    default_batch_size = 16
    default_image_size = 768

    def __init__(self, options: CSFlowOptions, run: RunConfig) -> None:
        super().__init__(options, run)
        if options.attention != "none":
            raise InspladError(f"CS-Flow has no {options.attention} variant (seed 000 ran it without attention; "
                               "SE/CBAM on its frozen backbone would stay untrained)")
        for key in ("coupling_blocks", "hidden"):
            if getattr(options, key) < 1:
                raise InspladError(f"option {key} must be >= 1")
        kernels = options.kernel_sizes
        if len(kernels) < options.coupling_blocks or any(k < 1 or k % 2 == 0 for k in kernels):
            raise InspladError("option kernel_sizes needs one odd size per coupling block")
        if not (options.clamp > 0 and options.lr > 0 and options.eps > 0 and options.max_grad_norm > 0):
            raise InspladError("options clamp, lr, eps and max_grad_norm must be > 0")
        if options.weight_decay < 0 or options.feature_cache_mb < 0:
            raise InspladError("options weight_decay and feature_cache_mb must be >= 0")
        if options.backbone != "efficientnet_b5" and not options.layer:
            raise InspladError(f"backbone {options.backbone} needs --option layer=STAGE (e.g. layer3 for resnet18)")
        self.model: CSFlowModel | None = None
        self.backbone_source = "unset"
        self.optimiser: torch.optim.Optimizer | None = None
        self.train_data: torch.Tensor | None = None
        self.cache: list[torch.Tensor] | None = None

    @property
    def layer(self) -> str:
        return self.options.layer or "block35"

    # -- construction ---------------------------------------------------------------------------
    def _build(self, pretrained: bool) -> CSFlowModel:
        o, size = self.options, self.run.image_size
        if o.backbone == "efficientnet_b5":
            if self.layer != "block35":
                raise InspladError("backbone efficientnet_b5 offers only layer block35")
            backbone, self.backbone_source = efficientnet_b5_for_run(self.run, pretrained)
        else:
            backbone, self.backbone_source = flow_backbone(o.backbone, "none", self.run, pretrained, (self.layer,))
        backbone = backbone.to(self.device)
        if size // 4 < 1:
            raise InspladError(f"image size {size} is too small for three scales (1, 1/2, 1/4)")
        shapes = [feature_shapes(backbone, (self.layer,), size // 2**s)[0] for s in range(3)]
        if any(h < 1 or w < 1 for _, h, w in shapes):
            raise InspladError(f"image size {size} is too small for three scales of {o.backbone} {self.layer}")
        return CSFlowModel(backbone, self.layer, shapes, o.coupling_blocks, o.clamp, o.hidden,
                           o.kernel_sizes).to(self.device)

    def _ensure_model(self) -> CSFlowModel:
        if self.model is None:
            self.model = self._build(pretrained=False)
        return self.model

    # -- Detector API ---------------------------------------------------------------------------
    def setup(self, train_images: Sequence[Path]) -> None:
        if len(train_images) < 1:
            raise InspladError("CS-Flow needs at least one training image")
        o = self.options
        self.model = self._build(pretrained=self.run.pretrained or self.run.weights is not None)
        self.optimiser = adam(self.model.flow.parameters(), lr=o.lr, eps=o.eps, weight_decay=o.weight_decay)
        self.train_data = load_images_uint8(train_images, self.run.image_size, self.run.progress, "csflow load", run=self.run)
        if self.backbone_source == "random":
            calibrate_batchnorm(self.model.backbone, self.train_data, self.run.batch_size, self.device,
                                layers=(self.layer,))
        self.cache = self._cache_features()

    @torch.no_grad()
    def _cache_features(self) -> list[torch.Tensor] | None:
        assert self.model is not None and self.train_data is not None
        n, bs = self.train_data.shape[0], max(1, self.run.batch_size)
        if n * sum(c * h * w for c, h, w in self.model.shapes) * 4 > self.options.feature_cache_mb * 2**20:
            return None
        chunks = [self.model.features(normalise(to_device(self.train_data[s:s + bs], self.device))) for s in range(0, n, bs)]
        return [torch.cat([c[i] for c in chunks]) for i in range(3)]

    def train_epoch(self, epoch: int) -> dict[str, float]:
        assert self.model is not None and self.optimiser is not None and self.train_data is not None, "setup() first"
        model = self.model
        model.train()
        n = self.train_data.shape[0]
        order = torch.randperm(n)
        total, steps = 0.0, 0
        for start in range(0, n, max(1, self.run.batch_size)):
            idx = order[start:start + self.run.batch_size]
            if self.cache is not None:
                feats = [f[idx.to(f.device)] for f in self.cache]
            else:
                feats = model.features(normalise(to_device(self.train_data[idx], self.device)))
            loss = model.nll(*model.latents(feats))
            if not torch.isfinite(loss):
                raise InspladError(f"csflow: the flow's loss became {float(loss)} at epoch {epoch + 1}, "
                                   f"batch {steps + 1} (try a lower lr)")
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.flow.parameters(), self.options.max_grad_norm)
            self.optimiser.step()
            total += float(loss.detach())
            steps += 1
        return {"loss": total / max(steps, 1)}

    def finish_training(self) -> None:
        self.train_data = self.cache = None

    def state(self) -> dict[str, Any]:
        return flow_state(self)

    def load_state(self, state: dict[str, Any]) -> None:
        load_flow_state(self, state)

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self._ensure_model().flow]

    def variant(self) -> dict[str, Any]:
        o = self.options
        return {"backbone": o.backbone, "attention": "none", "layer": self.layer, "coupling_blocks": o.coupling_blocks,
                "clamp": o.clamp, "hidden": o.hidden, "kernel_sizes": list(o.kernel_sizes)}

    @property
    def notes(self) -> list[str]:
        notes = []
        if self.backbone_source == "random":
            notes.append(f"{self.options.backbone} backbone randomly initialised (--no-pretrained): "
                         "not comparable to ImageNet runs")
        if self.options.backbone != "efficientnet_b5":
            notes.append(f"{self.options.backbone} {self.layer} features "
                         "(the CS-Flow paper uses EfficientNet-B5 block 35)")
        if self.run.image_size != 768:
            notes.append(f"{self.run.image_size} px input (the CS-Flow paper uses 768 px)")
        notes.append("map = product over scales of the upsampled mean z^2 (anomalib); the reference scores images only")
        return notes
