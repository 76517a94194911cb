"""EfficientAD-S training and inference behind the shared :class:`~methods.base.Detector` contract.

Reference schedule (``nelson1425/EfficientAD``): 70,000 steps at batch 1, Adam(student + AE) lr 1e-4,
weight decay 1e-5, lr x0.1 after 95% of the steps; hard-feature loss q=0.999; a random 10% of the
train images held out for the map quantiles (0.9 / 0.995). Steps vs epochs: ``steps`` (default
70,000) is the total number of optimiser steps, spread evenly over the run's ``epochs``, which are
then only checkpoint/progress chunks; ``--option steps=0`` makes an epoch one pass over the train
split instead (``epochs x ceil(n_train / batch)`` steps).

Teacher: ``--option teacher=PATH`` (from ``insplad distill-teacher``) or ``--weights PATH`` with such a
file. With ``--no-pretrained`` and no teacher file the teacher is a randomly initialised PDN (for
tests and smoke runs); results then carry a note saying so. The optional ImageNet penalty
(``--option penalty_dir=PATH``) is off by default.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from insplad_tools.errors import InspladError
from methods.base import MapDetector, RunConfig
from methods.data import load_images_uint8, load_rgb, normalise, to_tensor
from methods.efficientad.distill import list_images, load_teacher
from methods.efficientad.model import EfficientADModel, quantile


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
    pdn_width: int = 256  # PDN inner width (paper 256; tests use less)
    teacher: str = ""  # distilled teacher file (insplad distill-teacher)
    penalty_dir: str = ""  # folder of ImageNet-like images for the student penalty ("" = off)


def augment_colour(batch: torch.Tensor) -> torch.Tensor:
    """Per image, one of brightness / contrast / saturation by a factor ~U(0.8, 1.2); input and output in [0, 1]."""
    out = []
    for img in batch:
        factor = random.uniform(0.8, 1.2)
        kind = random.randrange(3)
        gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
        if kind == 0:
            other = torch.zeros_like(img)
        elif kind == 1:
            other = gray.mean().expand_as(img)
        else:
            other = gray.expand_as(img)
        out.append((factor * img + (1 - factor) * other).clamp(0, 1))
    return torch.stack(out)


class EfficientADDetector(MapDetector):
    """EfficientAD-S: PDN teacher/student (+SE/CBAM in the student) and autoencoder; maps."""

    name = "efficientad"
    Options = EfficientADOptions
    default_epochs = 10
    default_batch_size = 1
    default_image_size = 256

    def __init__(self, options: EfficientADOptions, run: RunConfig) -> None:
        super().__init__(options, run)
        if run.image_size < 64:
            raise InspladError(f"EfficientAD needs --image-size >= 64 (got {run.image_size})")
        if options.out_channels < 1 or options.pdn_width < 2:
            raise InspladError("options out_channels >= 1 and pdn_width >= 2 required")
        if options.steps < 0:
            raise InspladError("option steps must be >= 0")
        if not 0 < options.val_fraction < 1:
            raise InspladError("option val_fraction must be in (0, 1)")
        if not 0 <= options.map_q_start < options.map_q_end <= 1:
            raise InspladError("options map_q_start < map_q_end must lie in [0, 1]")
        self.model: EfficientADModel | None = None
        self.teacher_source = "unset"
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
            self.model = EfficientADModel(self.run.image_size, o.attention, None, o.out_channels, o.pdn_width).to(self.device)
            self.teacher_source = "random"
        return self.model

    def _teacher_file(self) -> str | None:
        return self.options.teacher or self.run.weights

    # -- Detector API ---------------------------------------------------------------------------
    def setup(self, train_images: Sequence[Path]) -> None:
        o, run = self.options, self.run
        paths = list(train_images)
        n_fit = int((1 - o.val_fraction) * len(paths))
        if n_fit < 1 or len(paths) - n_fit < 1:
            raise InspladError(f"EfficientAD needs at least 2 training images (got {len(paths)}): "
                               f"{o.val_fraction:.0%} are held out for map normalisation")
        teacher_file = self._teacher_file()
        if teacher_file:
            teacher, config = load_teacher(teacher_file)
            if (teacher.out_channels, teacher.width) != (o.out_channels, o.pdn_width):
                raise InspladError(f"{teacher_file}: teacher has {teacher.out_channels} channels / width {teacher.width}, "
                                   f"but options ask for out_channels={o.out_channels} pdn_width={o.pdn_width}")
            self.teacher_source = f"distilled ({config.get('backbone', 'resnet18')} {config.get('backbone_weights', '?')}, " \
                                  f"{config.get('steps', '?')} steps)"
        elif not run.pretrained:
            teacher = None
            self.teacher_source = "random"
        else:
            raise InspladError("EfficientAD needs a distilled teacher: make one with `insplad distill-teacher IMAGE_DIR "
                               "--out teacher.pt` and pass --option teacher=teacher.pt, or train with a random "
                               "teacher using --no-pretrained")
        self.model = EfficientADModel(run.image_size, o.attention, teacher, o.out_channels, o.pdn_width).to(self.device)
        generator = torch.Generator().manual_seed(run.seed)
        order = torch.randperm(len(paths), generator=generator).tolist()
        fit_paths = [paths[i] for i in order[:n_fit]]
        val_paths = [paths[i] for i in order[n_fit:]]
        self.train_data = load_images_uint8(fit_paths, run.image_size, run.progress, "efficientad load")
        self.val_data = load_images_uint8(val_paths, run.image_size, run.progress, "efficientad load val")
        self.penalty_paths = list_images(Path(o.penalty_dir)) if o.penalty_dir else []
        self._teacher_normalisation()
        params = list(self.model.student.parameters()) + list(self.model.autoencoder.parameters())
        self.optimiser = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        batches = math.ceil(n_fit / max(1, run.batch_size))
        self.total_steps = o.steps if o.steps > 0 else run.epochs * batches
        self.step = 0

    @torch.no_grad()
    def _teacher_normalisation(self) -> None:
        """Per-channel mean and std of the teacher's outputs over the (unaugmented) training split."""
        assert self.model is not None and self.train_data is not None
        model, bs = self.model, max(1, self.run.batch_size)
        model.eval()
        outputs = [model.teacher(normalise(self.train_data[i:i + bs].to(self.device)))
                   for i in range(0, self.train_data.shape[0], bs)]
        means = torch.cat([o.mean(dim=(2, 3)) for o in outputs])  # (N, C): per-image channel means
        mean = means.mean(dim=0)[None, :, None, None]
        var = torch.cat([((o - mean) ** 2).mean(dim=(2, 3)) for o in outputs]).mean(dim=0)
        model.teacher_mean.copy_(mean)
        model.teacher_std.copy_(var.clamp_min(1e-12).sqrt()[None, :, None, None])

    def _penalty_batch(self) -> torch.Tensor | None:
        if not self.penalty_paths:
            return None
        size = self.run.image_size
        img = load_rgb(random.choice(self.penalty_paths)).resize((2 * size, 2 * size), Image.BILINEAR)
        if random.random() < 0.3:
            img = img.convert("L").convert("RGB")
        left = (2 * size - size) // 2
        img = img.crop((left, left, left + size, left + size))
        return to_tensor(img, None)[None].to(self.device)

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
            raw = self.train_data[idx].float() / 255.0
            image_st = normalise(raw.to(self.device))
            image_ae = normalise(augment_colour(raw).to(self.device))
            losses = model.loss(image_st, image_ae, self._penalty_batch(), o.hard_quantile)
            self.optimiser.zero_grad(set_to_none=True)
            losses["loss"].backward()
            self.optimiser.step()
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
            m_st, m_ae = model.raw_maps(normalise(self.val_data[i:i + bs].to(self.device)))
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
        }

    def load_state(self, state: dict[str, Any]) -> None:
        model = self._ensure_model()
        model.load_state_dict(state["model"])
        self.teacher_source = str(state.get("teacher_source", "unknown"))
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
            "backbone": "resnet18", "attention": o.attention, "size": "small",
            "student_attention": "after the 3 inner conv+ReLU stages (128/256/256 ch)" if o.attention != "none" else "none",
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
