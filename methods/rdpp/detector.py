"""RD++ (Tien et al., "Revisiting Reverse Distillation for Anomaly Detection", CVPR 2023) behind the shared
:class:`~methods.base.Detector` contract.

Defaults follow the paper and its reference code (``tientrandinh/Revisiting-Reverse-Distillation``):
frozen ImageNet teacher, layers 1-3; a multi-projection layer per level (4 conv3x3 C→C/2→C/4→C/2→C,
InstanceNorm, LeakyReLU); OCBE bottleneck and reverse-ResNet student; loss L = L_distill + 0.2·L_proj,
L_distill = Σ_levels mean(1 − cos(flattened teacher, flattened student)), L_proj = (L_SSOT +
0.01·L_recon + 0.1·L_contrast)/1.11 on pseudo-anomalies: simplex noise (6 octaves, persistence 0.6,
frequency 32, amplitude 0.2) added to one random h×w rectangle, h, w ∈ [10, 32) at 256 px, of the
[0, 1] image before normalisation. SSOT = debiased Sinkhorn divergence (p=2, blur 0.05, scaling
0.95, diameter 1e7) between the batch's softmaxed projections and the shuffled batch; contrast =
CosineEmbeddingLoss(margin 0.5, target −1) between the noisy teacher feature and the clean
projection; recon = 1 − cos(projection(noisy), projection(clean)). Adam betas (0.5, 0.999):
projection lr 1e-3, bottleneck + student lr 5e-3; gradient accumulation over 2 batches; batch 16,
256 px. Map = Σ_levels (1 − channel cosine), bilinear (align_corners) to the input, Gaussian σ=4;
image score = max. Epochs: the reference sets 10 to 300 per MVTec class; ``default_epochs = 200``
(its bottle/pill setting) and ``--epochs`` to change it.

Deviations, all deliberate:
- backbone ResNet-18 (the paper's is WideResNet-50-2): seed 000 ran RD++ on RN18, SE-RN18 and
  CBAM-RN18 "to obtain a fair comparison"; the projection widths follow (the reference's
  ``MultiProjectionLayer(base=16)``). Only ``backbone=resnet18`` is built.
- the reference's OCBE also builds a 1×1 conv (1024→512) and a BatchNorm that its forward never
  uses; they are left out, so ``profile`` counts only parameters that train.
- the reference keeps the gradient of an odd last batch for the next epoch; here it is stepped at
  the end of its own epoch (so every checkpoint is a clean step boundary).
- the pseudo-anomaly rectangle and the noise frequency scale with ``image_size``/256 (identical at
  256 px); the noise is 3-D simplex noise in Gustavson's formulation (the reference uses
  OpenSimplex), seeded once per run like the reference's dataset object.
- the last epoch is reported (the reference selects the best epoch on the test set).
- note: the reference pairs the batch with a permutation of itself in SSOT, so the two point
  clouds are the same set and the divergence is zero up to rounding; it is computed faithfully
  all the same (logged as ``ssot``).

Attention (``--attention se|cbam``, SE/CBAM inside every teacher BasicBlock as in seed 000): the
teacher's convolutions and BatchNorms keep their ImageNet weights (frozen, eval mode); the new,
randomly initialised attention blocks are trained with the projection layer (same optimiser and
lr) by the full RD++ loss, except that the teacher side of L_distill is detached, so the gradient
never pulls the teacher's features toward the student's (which would let the distillation collapse).
``train_attention=false`` freezes them at random init instead. ``profile`` counts them when trained.
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
from methods.padim.detector import trunk_for_run
from methods.optim import adam
from methods.rdpp.model import (
    RDPPModel,
    distillation_loss,
    noise_permutation,
    projection_loss,
    simplex_octaves,
)
from methods.simplenet.detector import calibrate_batchnorm


@dataclass
class RDPPOptions:
    backbone: str = "resnet18"  # only resnet18 (seed 000's RD++ columns)
    attention: str = "none"  # none | se | cbam inside every teacher BasicBlock
    train_attention: bool = True
    proj_lr: float = 1e-3
    distill_lr: float = 5e-3
    beta1: float = 0.5
    beta2: float = 0.999
    weight_proj: float = 0.2
    accumulation_steps: int = 2
    noise_amplitude: float = 0.2
    noise_octaves: int = 6
    noise_persistence: float = 0.6
    map_sigma: float = 4.0
    projection: bool = True  # false: plain Reverse Distillation (RD4AD: no projection layer, no L_proj, no noise)


class RDPPDetector(MapDetector):
    """RD++ on a (SE-/CBAM-)ResNet-18 teacher; image scores and pixel maps."""

    name = "rdpp"
    Options = RDPPOptions
    default_epochs = 200
    default_batch_size = 16
    default_image_size = 256
    paper_eval_every = 1  # the reference scores the test set after every epoch and keeps the best (--protocol paper)

    def __init__(self, options: RDPPOptions, run: RunConfig) -> None:
        super().__init__(options, run)
        if options.backbone != "resnet18":
            raise InspladError(f"rdpp builds its student for resnet18 only (seed 000's RD++ backbone), "
                               f"not {options.backbone!r}")
        if run.image_size % 32 != 0 or run.image_size < 32:
            raise InspladError(f"rdpp needs an image size that is a multiple of 32 (got {run.image_size}): "
                               "the bottleneck works at stride 32 and the student mirrors it")
        if options.accumulation_steps < 1:
            raise InspladError("option accumulation_steps must be >= 1")
        for key in ("proj_lr", "distill_lr", "noise_amplitude", "map_sigma", "weight_proj"):
            if getattr(options, key) < 0:
                raise InspladError(f"option {key} must be >= 0")
        self.model: RDPPModel | None = None
        self.backbone_source = "unset"
        self.optimisers: list[torch.optim.Optimizer] = []
        self.train_data: torch.Tensor | None = None
        self.perm = noise_permutation(run.seed)

    # -- construction ---------------------------------------------------------------------------
    def _build(self, pretrained: bool) -> RDPPModel:
        o = self.options
        encoder, self.backbone_source = trunk_for_run(o.backbone, o.attention, self.run, pretrained)
        model = RDPPModel(encoder, o.map_sigma, projection=o.projection)
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        if o.attention != "none" and o.train_attention:
            for p in model.encoder.attention_parameters():
                p.requires_grad_(True)
        return model.to(self.device)

    def _ensure_model(self) -> RDPPModel:
        """The model; built untrained (random teacher) for profiling when neither trained nor loaded."""
        if self.model is None:
            self.model = self._build(pretrained=False)
        return self.model

    def _attention_parameters(self) -> list[torch.nn.Parameter]:
        assert self.model is not None
        return [p for p in self.model.encoder.attention_parameters() if p.requires_grad]

    # -- Detector API ---------------------------------------------------------------------------
    def setup(self, train_images: Sequence[Path]) -> None:
        if len(train_images) < 1:
            raise InspladError("RD++ needs at least one training image")
        self.model = self._build(pretrained=self.run.pretrained or self.run.weights is not None)
        o, m = self.options, self.model
        betas = (o.beta1, o.beta2)
        projection = list(m.projection.parameters()) + self._attention_parameters()
        self.optimisers = [adam(projection, lr=o.proj_lr, betas=betas)] if projection else []
        self.optimisers.append(adam(list(m.decoder.parameters()) + list(m.bottleneck.parameters()),
                                    lr=o.distill_lr, betas=betas))
        self.train_data = load_images_uint8(train_images, self.run.image_size, self.run.progress, "rdpp load", run=self.run)
        if self.backbone_source == "random":
            calibrate_batchnorm(m.encoder, self.train_data, self.run.batch_size, self.device)

    def add_noise(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3, S, S) with simplex noise added to one random rectangle each (not clipped)."""
        o, size = self.options, images.shape[-1]
        scale = size / 256.0
        lo = max(1, round(10 * scale))
        hi = max(lo + 1, size // 8)
        noisy = images.clone()
        for b in range(images.shape[0]):
            h, w = (int(v) for v in torch.randint(lo, hi, (2,)))
            top = int(torch.randint(1, max(2, size - h), ()))
            left = int(torch.randint(1, max(2, size - w), ()))
            noise = simplex_octaves((3, h, w), self.perm, o.noise_octaves, o.noise_persistence, 32.0 * scale)
            noisy[b, :, top:top + h, left:left + w] += o.noise_amplitude * noise.to(images)
        return noisy

    def train_epoch(self, epoch: int) -> dict[str, float]:
        assert self.model is not None and self.train_data is not None, "setup() first"
        model, o = self.model, self.options
        model.train()
        n, bs = self.train_data.shape[0], max(1, self.run.batch_size)
        order = torch.randperm(n)
        totals = {"loss": 0.0, "distill": 0.0, "proj": 0.0, "ssot": 0.0, "recon": 0.0, "contrast": 0.0}
        steps = pending = 0
        for opt in self.optimisers:
            opt.zero_grad(set_to_none=True)
        for start in range(0, n, bs):
            raw = to_device(self.train_data[order[start:start + bs]], self.device).float() / 255.0
            teacher = model.encode(normalise(raw))
            projected, student = model.student(teacher)
            distill = distillation_loss([t.detach() for t in teacher], student)
            if o.projection:
                teacher_noisy = model.encode(normalise(self.add_noise(raw)))
                parts = projection_loss(teacher_noisy, model.projection(teacher_noisy), projected)
                loss = distill + o.weight_proj * parts["proj"]
            else:
                parts = {key: distill.new_zeros(()) for key in ("proj", "ssot", "recon", "contrast")}
                loss = distill
            if not torch.isfinite(loss):
                raise InspladError(f"rdpp: non-finite loss at epoch {epoch}, batch {start // bs}")
            loss.backward()
            pending += 1
            if pending == o.accumulation_steps:
                self._step()
                pending = 0
            totals["loss"] += float(loss.detach())
            totals["distill"] += float(distill.detach())
            for key in ("proj", "ssot", "recon", "contrast"):
                totals[key] += float(parts[key].detach())
            steps += 1
        if pending:
            self._step()
        return {k: v / max(steps, 1) for k, v in totals.items()}

    def _step(self) -> None:
        for opt in self.optimisers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    def finish_training(self) -> None:
        self.train_data = None

    def state(self) -> dict[str, Any]:
        model = self._ensure_model()
        return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimisers": [opt.state_dict() for opt in self.optimisers],
                "backbone_source": self.backbone_source}

    def load_state(self, state: dict[str, Any]) -> None:
        model = self._ensure_model()
        model.load_state_dict(state["model"])
        self.backbone_source = str(state.get("backbone_source", "unknown"))
        if self.optimisers and state.get("optimisers"):
            for opt, saved in zip(self.optimisers, state["optimisers"]):
                opt.load_state_dict(saved)

    def trainable_modules(self) -> list[torch.nn.Module]:
        model = self._ensure_model()
        modules: list[torch.nn.Module] = [model.projection, model.bottleneck, model.decoder]  # projection may be Identity
        if self.options.attention != "none" and self.options.train_attention:
            modules.append(model.encoder)  # only its attention parameters require grad
        return modules

    def variant(self) -> dict[str, Any]:
        o = self.options
        return {"backbone": o.backbone, "attention": o.attention, "layers": ["layer1", "layer2", "layer3"],
                "projection": o.projection,
                "weight_proj": o.weight_proj, "proj_lr": o.proj_lr, "distill_lr": o.distill_lr,
                "accumulation_steps": o.accumulation_steps,
                "attention_training": ("none" if o.attention == "none" else
                                       "with the projection layer by the RD++ loss (teacher target detached)"
                                       if o.train_attention else "frozen at random init")}

    @property
    def notes(self) -> list[str]:
        """Caveats for the results file (read by ``insplad benchmark``)."""
        notes, o = [], self.options
        if self.backbone_source == "random":
            notes.append("ResNet-18 teacher randomly initialised (--no-pretrained): not comparable to ImageNet runs")
        if self.options.attention != "none":
            notes.append(f"{self.options.attention.upper()} blocks in the teacher "
                         + ("trained with the projection layer (teacher side of L_distill detached)"
                            if self.options.train_attention else "frozen at random init"))
        if not o.projection:
            notes.append("projection=false: plain Reverse Distillation (RD4AD), not RD++")
        notes.append("ResNet-18 teacher as seed 000 (the RD++ paper uses WideResNet-50-2); last epoch reported")
        return notes
