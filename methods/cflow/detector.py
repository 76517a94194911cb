"""CFLOW-AD behind the shared :class:`~methods.base.Detector` contract.

Defaults follow the reference code (``gudovskiy/cflow-ad``, ``config.py``/``train.py``): frozen
WRN-50-2 (``--option backbone=resnet18`` for the ResNet-18 of the other comparators), stages
layer2-4; one conditional flow per stage of 8 ``AllInOneBlock`` s (clamp 1.9, SOFTPLUS global
affine, soft permutations), 128-d positional-encoding condition; 256 px input; Adam lr 2e-4 with
a cosine decay to lr*0.1^3 over meta-epochs of ``sub_epochs`` (8) epochs and a linear warm-up from
lr/10 over the first 2 meta-epochs; image batches of 32, and per batch and stage the fibers are
shuffled and consumed in mini-batches of N = 256 with one optimiser step each; loss =
-logsigmoid(log p / C). 200 epochs (25 meta-epochs x 8). Map = sum over stages of the upsampled
(bilinear, align_corners) likelihood, turned into ``max - map``; image score = max of the map.

Deviations: the reference normalises each stage's log-likelihood by its maximum over the *test
set* (so a score depends on the other test images); here the maximum is taken once over the
training set after training (``logp_max``), so the map is ``sum_stages 1 - exp(log p/C - max_train)``
and each image's score stands alone. When a batch has fewer than N fibers they form one
mini-batch (the reference would skip them). No attention: seed 000 ran CFLOW-AD without it, and
SE/CBAM blocks on a frozen backbone would stay untrained. The last epoch is reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from insplad_tools.errors import InspladError
from methods.base import MapDetector, RunConfig
from methods.cflow.model import CFlowModel
from methods.data import load_images_uint8, normalise, to_device
from methods.fastflow.detector import feature_shapes, flow_backbone, flow_state, load_flow_state
from methods.optim import adam
from methods.simplenet.detector import calibrate_batchnorm


@dataclass
class CFlowOptions:
    attention: str = "none"  # only none: seed 000 ran CFLOW-AD without attention
    backbone: str = "wide_resnet50_2"  # the paper's encoder; resnet18 for seed 000's lighter comparators
    layers: tuple = ("layer2", "layer3", "layer4")
    condition_dims: int = 128
    coupling_blocks: int = 8
    clamp: float = 1.9
    fiber_batch: int = 256  # N: fibers per optimiser step
    lr: float = 2e-4
    sub_epochs: int = 8  # epochs per meta-epoch (the learning-rate schedule steps per meta-epoch)
    lr_warm_meta_epochs: int = 2
    lr_decay_rate: float = 0.1
    feature_cache_mb: int = 2048  # cache the train set's backbone features when they fit (0 = never)


def learning_rate(o: CFlowOptions, epoch: float, total_epochs: int) -> float:
    """The reference schedule: cosine over meta-epochs, linear warm-up from lr/10 (``epoch`` may be fractional)."""
    meta_epochs = max(1, math.ceil(total_epochs / o.sub_epochs))
    eta_min = o.lr * o.lr_decay_rate ** 3

    def cosine(meta: float) -> float:
        return eta_min + (o.lr - eta_min) * (1 + math.cos(math.pi * meta / meta_epochs)) / 2

    meta = int(epoch // o.sub_epochs)
    if meta < o.lr_warm_meta_epochs:
        progress = epoch / (o.lr_warm_meta_epochs * o.sub_epochs)
        return o.lr / 10 + progress * (cosine(o.lr_warm_meta_epochs) - o.lr / 10)
    return cosine(meta)


class CFlowDetector(MapDetector):
    """CFLOW-AD: conditional normalizing flows on backbone fibers; image scores and pixel maps."""

    name = "cflow"
    Options = CFlowOptions
    default_epochs = 200
    default_batch_size = 32
    default_image_size = 256

    def __init__(self, options: CFlowOptions, run: RunConfig) -> None:
        super().__init__(options, run)
        if options.attention != "none":
            raise InspladError(f"CFLOW-AD has no {options.attention} variant (seed 000 ran it without attention; "
                               "SE/CBAM on its frozen backbone would stay untrained)")
        if options.condition_dims < 4 or options.condition_dims % 4:
            raise InspladError("option condition_dims must be a positive multiple of 4")
        for key in ("coupling_blocks", "fiber_batch", "sub_epochs"):
            if getattr(options, key) < 1:
                raise InspladError(f"option {key} must be >= 1")
        if not (options.clamp > 0 and options.lr > 0 and 0 < options.lr_decay_rate <= 1):
            raise InspladError("options clamp and lr must be > 0 and lr_decay_rate in (0, 1]")
        if options.lr_warm_meta_epochs < 0 or options.feature_cache_mb < 0:
            raise InspladError("options lr_warm_meta_epochs and feature_cache_mb must be >= 0")
        if not options.layers or len(set(options.layers)) != len(options.layers):
            raise InspladError("option layers must name one or more distinct backbone stages")
        self.model: CFlowModel | None = None
        self.backbone_source = "unset"
        self.optimiser: torch.optim.Optimizer | None = None
        self.train_data: torch.Tensor | None = None
        self.cache: list[torch.Tensor] | None = None

    # -- construction ---------------------------------------------------------------------------
    def _build(self, pretrained: bool) -> CFlowModel:
        o = self.options
        backbone, self.backbone_source = flow_backbone(o.backbone, "none", self.run, pretrained, o.layers)
        backbone = backbone.to(self.device)
        shapes = feature_shapes(backbone, o.layers, self.run.image_size)
        return CFlowModel(backbone, o.layers, [c for c, _, _ in shapes], o.condition_dims, o.coupling_blocks,
                          o.clamp).to(self.device)

    def _ensure_model(self) -> CFlowModel:
        if self.model is None:
            self.model = self._build(pretrained=False)
        return self.model

    # -- Detector API ---------------------------------------------------------------------------
    def setup(self, train_images: Sequence[Path]) -> None:
        if len(train_images) < 1:
            raise InspladError("CFLOW-AD needs at least one training image")
        self.model = self._build(pretrained=self.run.pretrained or self.run.weights is not None)
        self.optimiser = adam(self.model.decoders.parameters(), lr=self.options.lr)
        self.train_data = load_images_uint8(train_images, self.run.image_size, self.run.progress, "cflow load", run=self.run)
        if self.backbone_source == "random":
            calibrate_batchnorm(self.model.backbone, self.train_data, self.run.batch_size, self.device,
                                layers=self.options.layers)
        self.cache = self._cache_features()

    @torch.no_grad()
    def _cache_features(self) -> list[torch.Tensor] | None:
        assert self.model is not None and self.train_data is not None
        n, size = self.train_data.shape[0], self.run.image_size
        per_image = sum(c * h * w for c, h, w in feature_shapes(self.model.backbone, self.model.layers, size)) * 4
        if n * per_image > self.options.feature_cache_mb * 2**20:
            return None
        bs = max(1, self.run.batch_size)
        chunks = [self._features(start, start + bs) for start in range(0, n, bs)]
        return [torch.cat([c[i] for c in chunks]) for i in range(len(self.model.layers))]

    def _features(self, start: int, stop: int, index: torch.Tensor | None = None) -> list[torch.Tensor]:
        assert self.model is not None and self.train_data is not None
        images = self.train_data[start:stop] if index is None else self.train_data[index]
        return self.model.features(normalise(to_device(images, self.device)))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        assert self.model is not None and self.optimiser is not None and self.train_data is not None, "setup() first"
        model, o = self.model, self.options
        model.train()
        n, bs = self.train_data.shape[0], max(1, self.run.batch_size)
        order = torch.randperm(n)
        batches = math.ceil(n / bs)
        total, steps = 0.0, 0
        for b, start in enumerate(range(0, n, bs)):
            lr = learning_rate(o, epoch + b / batches, self.run.epochs)
            for group in self.optimiser.param_groups:
                group["lr"] = lr
            idx = order[start:start + bs]
            feats = [f[idx.to(f.device)] for f in self.cache] if self.cache is not None else self._features(0, 0, idx)
            for layer, feat in enumerate(feats):
                _, c, h, w = feat.shape
                fibers = feat.permute(0, 2, 3, 1).reshape(-1, c)
                cond = model.condition(h, w, feat.device).repeat(feat.shape[0], 1)
                perm = torch.randperm(fibers.shape[0], device=fibers.device)
                n_steps = max(1, fibers.shape[0] // o.fiber_batch)
                for f in range(n_steps):
                    pick = perm[f * o.fiber_batch:(f + 1) * o.fiber_batch]
                    loss = -F.logsigmoid(model.log_prob(layer, fibers[pick], cond[pick])).mean()
                    if not torch.isfinite(loss):
                        raise InspladError(f"cflow: the flow's loss became {float(loss)} at epoch {epoch + 1} "
                                           f"(stage {model.layers[layer]}); try a lower lr")
                    self.optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimiser.step()
                    total += float(loss.detach())
                    steps += 1
        return {"loss": total / max(steps, 1), "lr": lr}

    @torch.no_grad()
    def finish_training(self) -> None:
        """Record each stage's largest per-dimension log-likelihood over the training images."""
        assert self.model is not None and self.train_data is not None
        model = self.model
        model.eval()
        top = torch.full((len(model.layers),), -math.inf, device=self.device)
        n, bs = self.train_data.shape[0], max(1, self.run.batch_size)
        for start in tqdm(range(0, n, bs), desc="cflow calibrate", disable=not self.run.progress, leave=False):
            if self.cache is not None:
                feats = [f[start:start + bs] for f in self.cache]
            else:
                feats = self._features(start, start + bs)
            for layer, lp in enumerate(model.log_prob_maps(feats)):
                top[layer] = torch.maximum(top[layer], lp.max())
        model.logp_max.copy_(top)
        self.train_data = self.cache = None

    def state(self) -> dict[str, Any]:
        return flow_state(self)

    def load_state(self, state: dict[str, Any]) -> None:
        load_flow_state(self, state)

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self._ensure_model().decoders]

    def variant(self) -> dict[str, Any]:
        o = self.options
        return {"backbone": o.backbone, "attention": "none", "layers": list(o.layers),
                "condition_dims": o.condition_dims, "coupling_blocks": o.coupling_blocks, "clamp": o.clamp,
                "fiber_batch": o.fiber_batch}

    @property
    def notes(self) -> list[str]:
        notes = []
        if self.backbone_source == "random":
            notes.append(f"{self.options.backbone} backbone randomly initialised (--no-pretrained): "
                         "not comparable to ImageNet runs")
        if self.options.backbone != "wide_resnet50_2":
            notes.append(f"{self.options.backbone} backbone (the CFLOW-AD paper uses WRN-50-2)")
        notes.append("likelihoods normalised by the training set's maximum (the reference uses the test set's)")
        return notes
