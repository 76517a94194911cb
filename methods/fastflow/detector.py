"""FastFlow behind the shared :class:`~methods.base.Detector` contract, with SE/CBAM-ResNet-18 as in seed 000.

Defaults follow the reference code (``gathierry/FastFlow``, ``configs/resnet18.yaml``; anomalib's
FastFlow agrees): ResNet-18 stages layer1-3 (64/128/256 channels at strides 4/8/16), frozen, each
with a trainable ``LayerNorm([C, H, W])``; 8 flow steps per stage (FrEIA ``AllInOneBlock``, affine
clamp 2.0, ``permute_soft=False``), conv subnets alternating 3x3 and 1x1 (``conv3x3_only=False``),
hidden ratio 1.0; 256 px ImageNet-normalised input; Adam lr 1e-3, weight decay 1e-5, batch 32,
500 epochs; loss = sum over stages of mean(0.5 sum z^2 - log|det J|). Map = mean over stages of
``-exp(-0.5 mean_c z^2)`` upsampled bilinearly; image score = max of the map (anomalib; the
reference code evaluates pixels only). The last epoch is reported (no test-set model selection).

Attention (seed 000's SE-RN18 / CBAM-RN18): the SE/CBAM blocks sit on every residual branch of the
shared ResNet-18 (:mod:`methods.backbones.resnet`). Its convolutions and BatchNorms keep their
ImageNet weights and stay frozen as in FastFlow; the attention blocks are new (random init) and,
by default, trained jointly with the LayerNorms and flows by the flow's NLL (gradients pass
through the frozen convs), in the same Adam optimiser. Unlike DifferNet, the per-stage LayerNorm
removes the feature scale, so attention cannot lower the NLL by shrinking the features.
``train_attention=false`` keeps them at random init. ``profile`` counts them when trained, so the
SE and CBAM variants count more parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from insplad_tools.errors import InspladError
from methods.base import MapDetector, RunConfig
from methods.data import load_images_uint8, normalise, to_device
from methods.fastflow.model import FastFlowModel
from methods.optim import adam
from methods.simplenet.detector import calibrate_batchnorm


@dataclass
class FastFlowOptions:
    backbone: str = "resnet18"  # feature extractor (the registry's names); seed 000 used ResNet-18
    attention: str = "none"  # none | se | cbam inside every ResNet-18 BasicBlock
    layers: tuple = ("layer1", "layer2", "layer3")  # backbone stages, one flow each
    flow_steps: int = 8
    hidden_ratio: float = 1.0
    conv3x3_only: bool = False
    clamp: float = 2.0
    lr: float = 1e-3
    weight_decay: float = 1e-5
    train_attention: bool = True
    feature_cache_mb: int = 2048  # cache train features when nothing before the flows trains (0 = never)


def flow_state(detector: Any) -> dict[str, Any]:
    """The checkpoint state the flow methods share: model weights, optimiser state, backbone source."""
    model = detector._ensure_model()
    return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimiser": detector.optimiser.state_dict() if detector.optimiser is not None else {},
            "backbone_source": detector.backbone_source}


def load_flow_state(detector: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`flow_state` returned."""
    detector._ensure_model().load_state_dict(state["model"])
    detector.backbone_source = str(state.get("backbone_source", "unknown"))
    if detector.optimiser is not None and state.get("optimiser"):
        detector.optimiser.load_state_dict(state["optimiser"])


def flow_backbone(name: str, attention: str, run: RunConfig, pretrained: bool,
                  layers: Sequence[str]) -> tuple[torch.nn.Module, str]:
    """A backbone of the shared registry built up to the deepest of ``layers``, and its weight source."""
    from methods.backbones.registry import build_backbone, get_backbone

    spec = get_backbone(name)  # one-line error for unknown names
    unknown = [layer for layer in layers if layer not in spec.layers]
    if unknown:
        raise InspladError(f"backbone {name} has no layer {unknown[0]!r}; choose from {', '.join(spec.layers)}")
    return build_backbone(name, attention=attention, pretrained=pretrained, weights=run.weights if pretrained else None,
                          progress=run.progress, last_layer=max(layers, key=list(spec.layers).index))


@torch.no_grad()
def feature_shapes(backbone: torch.nn.Module, layers: Sequence[str], image_size: int) -> list[tuple[int, int, int]]:
    """(C, H, W) of each stage for a square ``image_size`` input."""
    was_training = backbone.training
    backbone.eval()
    try:
        feats = backbone(torch.zeros(1, 3, image_size, image_size, device=next(backbone.parameters()).device), layers)
    finally:
        backbone.train(was_training)
    return [tuple(feats[name].shape[1:]) for name in layers]


class FastFlowDetector(MapDetector):
    """FastFlow on (SE-/CBAM-)ResNet-18 stages; image scores and pixel maps."""

    name = "fastflow"
    Options = FastFlowOptions
    default_epochs = 500
    default_batch_size = 32
    default_image_size = 256

    def __init__(self, options: FastFlowOptions, run: RunConfig) -> None:
        super().__init__(options, run)
        if options.flow_steps < 1:
            raise InspladError("option flow_steps must be >= 1")
        if not (options.hidden_ratio > 0 and options.clamp > 0 and options.lr > 0 and options.weight_decay >= 0):
            raise InspladError("options hidden_ratio, clamp and lr must be > 0 and weight_decay >= 0")
        if not options.layers or len(set(options.layers)) != len(options.layers):
            raise InspladError("option layers must name one or more distinct backbone stages")
        if options.feature_cache_mb < 0:
            raise InspladError("option feature_cache_mb must be >= 0")
        self.model: FastFlowModel | None = None
        self.backbone_source = "unset"
        self.optimiser: torch.optim.Optimizer | None = None
        self.train_data: torch.Tensor | None = None
        self.cache: list[torch.Tensor] | None = None

    # -- construction ---------------------------------------------------------------------------
    def _build(self, pretrained: bool) -> FastFlowModel:
        o = self.options
        backbone, self.backbone_source = flow_backbone(o.backbone, o.attention, self.run, pretrained, o.layers)
        backbone = backbone.to(self.device)
        for p in backbone.parameters():
            p.requires_grad_(False)
        attention = [p for n, p in backbone.named_parameters() if ".attention." in n]
        for p in attention:
            p.requires_grad_(o.train_attention)
        shapes = feature_shapes(backbone, o.layers, self.run.image_size)
        if any(h < 1 or w < 1 for _, h, w in shapes):
            raise InspladError(f"image size {self.run.image_size} is too small for layers {', '.join(o.layers)}")
        return FastFlowModel(backbone, o.layers, shapes, o.flow_steps, o.hidden_ratio, o.conv3x3_only,
                             o.clamp).to(self.device)

    def _ensure_model(self) -> FastFlowModel:
        """The model; built untrained (random backbone) for profiling when neither trained nor loaded."""
        if self.model is None:
            self.model = self._build(pretrained=False)
        return self.model

    # -- Detector API ---------------------------------------------------------------------------
    def setup(self, train_images: Sequence[Path]) -> None:
        if len(train_images) < 1:
            raise InspladError("FastFlow needs at least one training image")
        self.model = self._build(pretrained=self.run.pretrained or self.run.weights is not None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimiser = adam(params, lr=self.options.lr, weight_decay=self.options.weight_decay)
        self.train_data = load_images_uint8(train_images, self.run.image_size, self.run.progress, "fastflow load", run=self.run)
        if self.backbone_source == "random":
            calibrate_batchnorm(self.model.backbone, self.train_data, self.run.batch_size, self.device,
                                layers=self.options.layers)
        self.cache = self._cache_features()

    @torch.no_grad()
    def _cache_features(self) -> list[torch.Tensor] | None:
        """Backbone features of all train images when the backbone is frozen and they fit the budget."""
        assert self.model is not None and self.train_data is not None
        if any(p.requires_grad for p in self.model.backbone.parameters()):
            return None
        n = self.train_data.shape[0]
        per_image = sum(c * h * w for c, h, w in self.model.shapes) * 4
        if n * per_image > self.options.feature_cache_mb * 2**20:
            return None
        self.model.eval()
        chunks: list[list[torch.Tensor]] = []
        for start in range(0, n, max(1, self.run.batch_size)):
            batch = to_device(self.train_data[start:start + self.run.batch_size], self.device)
            chunks.append(self.model.features(normalise(batch)))
        return [torch.cat([c[i] for c in chunks]) for i in range(len(self.model.layers))]

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
            loss = model.nll(model.latents(feats))
            if not torch.isfinite(loss):
                raise InspladError(f"fastflow: the flow's loss became {float(loss)} at epoch {epoch + 1}, "
                                   f"batch {steps + 1} (try a lower lr or clamp)")
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
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
        model = self._ensure_model()
        modules: list[torch.nn.Module] = [model.norms, model.flows]
        if self.options.train_attention:
            modules.extend(model.attention_modules())
        return modules

    def variant(self) -> dict[str, Any]:
        o = self.options
        return {"backbone": o.backbone, "attention": o.attention, "layers": list(o.layers),
                "flow_steps": o.flow_steps, "hidden_ratio": o.hidden_ratio, "conv3x3_only": o.conv3x3_only,
                "clamp": o.clamp, "attention_training": ("none" if o.attention == "none" else
                                                         "joint with the flows, backbone convs frozen"
                                                         if o.train_attention else "frozen at random init")}

    @property
    def notes(self) -> list[str]:
        """Caveats for the results file (read by ``insplad benchmark``)."""
        notes = []
        if self.backbone_source == "random":
            notes.append(f"{self.options.backbone} backbone randomly initialised (--no-pretrained): "
                         "not comparable to ImageNet runs")
        if self.options.attention != "none":
            notes.append(f"{self.options.attention.upper()} blocks " + (
                "trained from scratch by the flow's NLL (backbone convs frozen)" if self.options.train_attention
                else "frozen at random init"))
        notes.append("image score = max of the FastFlow map (anomalib); last epoch reported, no test-set selection")
        return notes
