"""EfficientAD-S/M training and inference behind the shared :class:`~methods.base.Detector` contract.

Reference schedule (``nelson1425/EfficientAD``): 70,000 steps at batch 1, Adam(student + AE) lr 1e-4,
weight decay 1e-5, lr x0.1 after 95% of the steps; hard-feature loss q=0.999; a random 10% of the
train images held out for the map quantiles (0.9 / 0.995); ``--val-split F`` replaces that hold-out by
the benchmark's seeded validation split.

Steps vs epochs: ``steps`` is the total number of optimiser steps. Without ``--epochs`` the paper's
70,000 steps are spread over ``default_epochs`` checkpoint chunks. An explicit ``--epochs N`` without
an explicit ``--option steps=...`` means N passes over the train split (``insplad benchmark`` sets
``steps=0`` and says so); ``--option steps=S`` always wins and spreads S steps over the epochs.

Teacher (``--option teacher=PATH`` or ``--weights PATH``): a reference teacher as published — nelson1425/
EfficientAD's ``teacher_small.pth`` / ``teacher_medium.pth`` or anomalib's ``pretrained_teacher_*.pth``,
both distilled from WideResNet-101-2 as in the paper — or one made by ``insplad distill-teacher``
(ResNet-18 by default, the project's own choice for machines without WideResNet-101 weights;
``--backbone wide_resnet101_2`` gives the paper's). Seed 003 labels its EfficientAD columns "RN18" but
does not say which network the teacher was distilled from. With ``--no-pretrained`` and no teacher file
the teacher is a randomly initialised PDN (for tests and smoke runs); results then carry a note saying
so. ``model_size=medium`` gives EfficientAD-M. The optional ImageNet penalty (``--option
penalty_dir=PATH``) is off by default, as in nelson1425's code. Colour augmentation of the
autoencoder branch is an albumentations pipeline (:func:`colour_augmentation`), recorded in results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from insplad_tools.errors import InspladError
from methods.augment import apply, colour_augmentation, penalty_transform, serialise
from methods.base import MapDetector, RunConfig
from methods.data import load_images_uint8, load_rgb, normalise, to_device
from methods.efficientad.distill import list_images, load_teacher
from methods.efficientad.model import EfficientADModel, quantile
from methods.efficientad.pdn import DEFAULT_WIDTH, PDN_SIZES, STUDENT_ATTENTION_KWARGS
from methods.optim import adam


@dataclass
class EfficientADOptions:
    attention: str = "none"  # none | se | cbam after the student's inner ReLUs
    steps: int = 70_000  # total optimiser steps (0: one pass over the train split per epoch)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    lr_drop_at: float = 0.95  # fraction of the steps after which the lr is multiplied by 0.1
    hard_quantile: float = 0.999
    val_fraction: float = 0.1
    map_q_start: float = 0.9
    map_q_end: float = 0.995
    out_channels: int = 384  # teacher channels (student has twice as many)
    cbam_reduction: int = 16  # student CBAM MLP reduction (16: 5,396,553 params; 8: 5,414,985 = the paper's 5.41M)
    model_size: str = "small"  # small (EfficientAD-S, the seed's) | medium (EfficientAD-M)
    pdn_width: int = 0  # PDN inner width (0 = the paper's: 256 small, 512 medium; tests use less)
    teacher: str = ""  # distilled teacher file (insplad distill-teacher)
    penalty_dir: str = ""  # folder of ImageNet-like images for the student penalty ("" = off)


class EfficientADDetector(MapDetector):
    """EfficientAD-S: PDN teacher/student (+SE/CBAM in the student) and autoencoder; maps."""

    name = "efficientad"
    Options = EfficientADOptions
    default_epochs = 10
    default_batch_size = 1
    default_image_size = 256
    uses_validation = True  # --val-split: the held-out normal images give the map quantiles
    fp16_training = True  # train_epoch steps through Detector.backward_step
    cuda_graph_batch = 1  # batch-1 CUDA inference replays a captured graph (methods.accel; --no-cuda-graphs: eager)

    @classmethod
    def resolve_options(cls, options: dict[str, Any], *, epochs_given: bool) -> tuple[dict[str, Any], str | None]:
        """An explicit ``--epochs N`` without ``--option steps`` means N passes over the train split."""
        if not epochs_given or "steps" in options:
            return options, None
        return {**options, "steps": "0"}, ("efficientad: --epochs given without --option steps: each epoch is one pass "
                                           "over the train split (steps=0), not the paper's 70,000 steps; "
                                           "add --option steps=70000 for those")

    def __init__(self, options: EfficientADOptions, run: RunConfig) -> None:
        super().__init__(options, run)
        if run.image_size < 64:
            raise InspladError(f"EfficientAD needs --image-size >= 64 (got {run.image_size})")
        if options.out_channels < 1 or options.pdn_width not in (0,) and options.pdn_width < 2:
            raise InspladError("options out_channels >= 1 and pdn_width >= 2 (or 0: the paper's) required")
        if options.cbam_reduction < 1:
            raise InspladError("option cbam_reduction must be >= 1")
        if options.model_size not in PDN_SIZES:
            raise InspladError(f"option model_size must be small or medium, got {options.model_size!r}")
        if options.steps < 0:
            raise InspladError("option steps must be >= 0")
        if not 0 < options.val_fraction < 1:
            raise InspladError("option val_fraction must be in (0, 1)")
        if not 0 <= options.map_q_start < options.map_q_end <= 1:
            raise InspladError("options map_q_start < map_q_end must lie in [0, 1]")
        self.model: EfficientADModel | None = None
        self.teacher_source = "unset"
        self.teacher_backbone = "resnet18"  # what the teacher was distilled from (results' variant.backbone)
        self.augmentation = colour_augmentation()
        self.optimiser: torch.optim.Optimizer | None = None
        self.step = 0
        self.total_steps = 0
        self.train_data: torch.Tensor | None = None
        self.val_data: torch.Tensor | None = None
        self.penalty_paths: list[Path] = []

    # -- construction ---------------------------------------------------------------------------
    def _ensure_model(self) -> EfficientADModel:
        """The model; built with a random teacher (for profiling or loading) when not set up."""
        if self.model is None:
            o = self.options
            self.model = EfficientADModel(self.run.image_size, o.attention, None, o.out_channels, self.width,
                                          o.model_size, self._attention_kwargs()).to(self.device)
            self.teacher_source = "random"
        return self.model

    @property
    def width(self) -> int:
        return self.options.pdn_width or DEFAULT_WIDTH[self.options.model_size]

    def _attention_kwargs(self) -> dict | None:
        if self.options.attention != "cbam":
            return None
        return {**STUDENT_ATTENTION_KWARGS["cbam"], "reduction": self.options.cbam_reduction}

    def _teacher_file(self) -> str | None:
        return self.options.teacher or self.run.weights

    # -- Detector API ---------------------------------------------------------------------------
    def setup(self, train_images: Sequence[Path]) -> None:
        o, run = self.options, self.run
        paths = list(train_images)
        if self.validation_images:
            paths = paths + list(self.validation_images)
        n_fit = len(train_images) if self.validation_images else int((1 - o.val_fraction) * len(paths))
        if n_fit < 1 or len(paths) - n_fit < 1:
            raise InspladError(f"EfficientAD needs at least 2 training images (got {len(paths)}): "
                               f"{o.val_fraction:.0%} are held out for map normalisation")
        teacher_file = self._teacher_file()
        if teacher_file:
            teacher, config = load_teacher(teacher_file)
            if (teacher.out_channels, teacher.width, teacher.size) != (o.out_channels, self.width, o.model_size):
                raise InspladError(f"{teacher_file}: teacher is a PDN-{teacher.size} with {teacher.out_channels} channels / "
                                   f"width {teacher.width}, but options ask for model_size={o.model_size} "
                                   f"out_channels={o.out_channels} pdn_width={self.width}")
            origin = f"{config['source']}, " if config.get("source") else ""
            self.teacher_backbone = str(config.get("backbone", "resnet18"))
            self.teacher_source = f"distilled ({origin}{config.get('backbone', 'resnet18')} " \
                                  f"{config.get('backbone_weights', '?')}, {config.get('steps', '?')} steps)"
        elif not run.pretrained:
            teacher = None
            self.teacher_source = "random"
        else:
            raise InspladError("EfficientAD needs a distilled teacher: make one with `insplad distill-teacher IMAGE_DIR "
                               "--out teacher.pt` and pass --option teacher=teacher.pt, or train with a random "
                               "teacher using --no-pretrained")
        self.model = EfficientADModel(run.image_size, o.attention, teacher, o.out_channels, self.width,
                                      o.model_size, self._attention_kwargs()).to(self.device)
        generator = torch.Generator().manual_seed(run.seed)
        order = (list(range(len(paths))) if self.validation_images
                 else torch.randperm(len(paths), generator=generator).tolist())
        fit_paths = [paths[i] for i in order[:n_fit]]
        val_paths = [paths[i] for i in order[n_fit:]]
        self.train_data = load_images_uint8(fit_paths, run.image_size, run.progress, "efficientad load", run=self.run)
        self.val_data = load_images_uint8(val_paths, run.image_size, run.progress, "efficientad load val", run=self.run)
        self.penalty_paths = list_images(Path(o.penalty_dir)) if o.penalty_dir else []
        self._teacher_normalisation()
        params = list(self.model.student.parameters()) + list(self.model.autoencoder.parameters())
        self.optimiser = adam(params, lr=o.lr, weight_decay=o.weight_decay)
        batches = math.ceil(n_fit / max(1, run.batch_size))
        self.total_steps = o.steps if o.steps > 0 else run.epochs * batches
        self.step = 0

    @torch.no_grad()
    def _teacher_normalisation(self) -> None:
        """Per-channel mean and std of the teacher's outputs over the (unaugmented) training split."""
        assert self.model is not None and self.train_data is not None
        model, bs = self.model, max(1, self.run.batch_size)
        model.eval()
        outputs = [model.teacher(normalise(to_device(self.train_data[i:i + bs], self.device)))
                   for i in range(0, self.train_data.shape[0], bs)]
        means = torch.cat([o.mean(dim=(2, 3)) for o in outputs])  # (N, C): per-image channel means
        mean = means.mean(dim=0)[None, :, None, None]
        var = torch.cat([((o - mean) ** 2).mean(dim=(2, 3)) for o in outputs]).mean(dim=0)
        model.teacher_mean.copy_(mean)
        model.teacher_std.copy_(var.clamp_min(1e-12).sqrt()[None, :, None, None])

    def _penalty_batch(self) -> torch.Tensor | None:
        if not self.penalty_paths:
            return None
        pick = torch.randint(len(self.penalty_paths), (1,)).item()
        img = torch.from_numpy(np.asarray(load_rgb(self.penalty_paths[pick]))).permute(2, 0, 1)[None]
        seed = self.run.seed * 1_000_003 + self.step
        return normalise(to_device(apply(penalty_transform(self.run.image_size), img, seed), self.device))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        assert self.model is not None and self.optimiser is not None and self.train_data is not None, "setup() first"
        model, o, run = self.model, self.options, self.run
        model.train()
        end = (epoch + 1) * self.total_steps // run.epochs if epoch + 1 < run.epochs else self.total_steps
        drop_at = int(o.lr_drop_at * self.total_steps)
        n = self.train_data.shape[0]
        sums: dict[str, float] = {}
        count = 0
        while self.step < end:
            lr = o.lr * (0.1 if self.step >= drop_at else 1.0)
            for group in self.optimiser.param_groups:
                group["lr"] = lr
            idx = torch.randint(n, (max(1, run.batch_size),))
            raw = self.train_data[idx]
            image_st = normalise(to_device(raw, self.device))
            image_ae = normalise(to_device(apply(self.augmentation, raw, run.seed * 1_000_003 + self.step), self.device))
            losses = model.loss(image_st, image_ae, self._penalty_batch(), o.hard_quantile)
            self.optimiser.zero_grad(set_to_none=True)
            self.backward_step(losses["loss"], self.optimiser)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
            self.step += 1
        logs = {k: v / count for k, v in sums.items()} if count else {}
        logs["step"] = float(self.step)
        return logs

    @torch.no_grad()
    def finish_training(self) -> None:
        """Map quantiles on the held-out split, then free the cached images."""
        assert self.model is not None and self.val_data is not None
        model, o, bs = self.model, self.options, max(1, self.run.batch_size)
        model.eval()
        st, ae = [], []
        for i in range(0, self.val_data.shape[0], bs):
            m_st, m_ae = model.raw_maps(normalise(to_device(self.val_data[i:i + bs], self.device)))
            st.append(m_st)
            ae.append(m_ae)
        st_all, ae_all = torch.cat(st), torch.cat(ae)
        q = torch.stack([quantile(st_all, o.map_q_start), quantile(st_all, o.map_q_end),
                         quantile(ae_all, o.map_q_start), quantile(ae_all, o.map_q_end)])
        for a in (0, 2):  # a flat validation map would divide by zero
            if q[a + 1] - q[a] <= 1e-12:
                q[a + 1] = q[a] + 1e-6
        model.quantiles.copy_(q)
        self.train_data = self.val_data = None

    def state(self) -> dict[str, Any]:
        model = self._ensure_model()
        return {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimiser": self.optimiser.state_dict() if self.optimiser is not None else {},
            "step": self.step,
            "total_steps": self.total_steps,
            "teacher_source": self.teacher_source,
            "teacher_backbone": self.teacher_backbone,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        model = self._ensure_model()
        model.load_state_dict(state["model"])
        self.teacher_source = str(state.get("teacher_source", "unknown"))
        self.teacher_backbone = str(state.get("teacher_backbone", "resnet18"))
        self.step = int(state.get("step", 0))
        self.total_steps = int(state.get("total_steps", self.total_steps))
        if self.optimiser is not None and state.get("optimiser"):
            self.optimiser.load_state_dict(state["optimiser"])

    def trainable_modules(self) -> list[torch.nn.Module]:
        model = self._ensure_model()
        return [model.student, model.autoencoder]

    def variant(self) -> dict[str, Any]:
        o = self.options
        return {
            "backbone": self.teacher_backbone, "attention": o.attention, "size": o.model_size,
            "student_attention": ("none" if o.attention == "none" else
                                  "after the 3 inner conv+ReLU stages (128/256/256 ch)" if o.model_size == "small"
                                  else "after the 4 inner conv+ReLU stages (256/512/512/512 ch)"),
            "augmentation": {"autoencoder": serialise(colour_augmentation()),
                             **({"penalty": serialise(penalty_transform(self.run.image_size))} if o.penalty_dir else {})},
            "teacher": self.teacher_source, "steps": self.total_steps or o.steps, "penalty": bool(o.penalty_dir),
        }

    @property
    def notes(self) -> list[str]:
        """Caveats for the results file (read by ``insplad benchmark``)."""
        notes = []
        if self.teacher_source == "random":
            notes.append("EfficientAD teacher PDN randomly initialised (--no-pretrained, no distilled teacher): "
                         "not comparable to published numbers")
        if not self.options.penalty_dir:
            notes.append("EfficientAD ImageNet penalty off (no penalty_dir)")
        return notes
