"""DifferNet / AttentDifferNet training and scoring (the :class:`~methods.base.Detector` of ``differnet``).

What is trained, and by what:

* DifferNet (``attention=none``): only the flow, by the flow's negative log-likelihood; the AlexNet
  convolutions are frozen and run without gradients.
* AttentDifferNet (``attention=se|cbam``): the flow and the attention blocks, jointly by the same
  NLL; the AlexNet convolutions are frozen (``requires_grad=False``) but run *with* autograd so the
  gradient reaches the attention blocks through them.

Training uses ``n_transforms`` random rotations (uniform in [-``rotation``, ``rotation``] degrees,
nearest, black corners; DifferNet's ``RandomRotation(180)``) per image per epoch, after optional
colour jitter (``brightness``/``contrast``/``saturation``, off as in DifferNet's config): an
albumentations pipeline (:func:`methods.augment.differnet_train`) serialised into results. Test scores use ``n_transforms_test`` *fixed* rotations ``i*360/T``
(as the official ``evaluate.py``; the official ``train.py`` reuses random rotations, which makes
scores stochastic): the score is the mean of ``z**2`` over the rotations and the dimensions.

Degenerate solution: with trainable attention the NLL can be lowered by shrinking every feature (the
flow's log-determinant then grows without an anomaly signal). The paper's AttentDifferNet has no
protection against it and neither has the default here (``feature_norm=none``: attention and
plain DifferNet see exactly the same computation apart from the attention blocks).
``feature_norm=rms`` (a deviation, recorded in the results' notes) divides each scale's pooled
features by their own RMS, so a global shrink no longer changes the flow input; ``auto`` means
``rms`` whenever attention is trained. Independently, every epoch measures the spread of the flow
input on a fixed subset of training images against its value at initialisation; a fall below
``collapse_ratio`` emits a :class:`DegenerateFeaturesWarning`, sets ``degenerate=1`` in the
history, and adds a note to the results.

CBAM defaults to the AttentDifferNet code line's reading (r=16, bias-free MLP, 49x49 spatial conv
with bias, residual inside the block): the only reading that gives the paper's +27,721 parameters.
``cbam_kernel=7`` is the CBAM paper's kernel (an option; much faster on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from insplad_tools.errors import InspladError
from methods.augment import apply, differnet_train, serialise
from methods.collapse import DegenerateFeaturesWarning  # noqa: F401  (re-exported: raised by this method)
from methods.backbones.alexnet import alexnet_extractor
from methods.base import Detector, ImageResult
from methods.data import iter_decoded, load_images_uint8, load_rgb, to_device
from methods.differnet.flow import differnet_flow
from methods.differnet.model import DifferNetModel, nll_loss, normalize, rotate_batch
from methods.optim import adam
from methods.precision import full_precision


@dataclass
class DifferNetOptions:
    """Every knob of DifferNet/AttentDifferNet (defaults: DifferNet paper; attention: AttentDifferNet forks)."""

    attention: str = "none"              # none | se | cbam
    blocks: tuple[int, ...] = (1, 2, 3)  # which of AB1 (64 ch), AB2 (192 ch), AB3 (256 ch)
    n_scales: int = 3                    # image at size, size/2, size/4 ...
    feature_norm: str = "none"           # none (paper) | rms (deviation) | auto (rms when attention is trained)
    flow_width: int = 2048
    coupling_blocks: int = 8
    clamp: float = 3.0
    n_transforms: int = 4
    rotation: float = 180.0              # train rotations uniform in [-rotation, rotation] degrees (0 = none)
    brightness: float = 0.0              # DifferNet's colour jitter (its config: all 0 = off)
    contrast: float = 0.0
    saturation: float = 0.0
    n_transforms_test: int = 64
    lr: float = 2e-4
    betas: tuple[float, ...] = (0.8, 0.8)
    adam_eps: float = 1e-4
    weight_decay: float = 1e-5
    se_reduction: int = 2
    cbam_reduction: int = 16
    cbam_kernel: int = 49                # AttentDifferNet code line (+27,721 params); 7 = the CBAM paper's kernel
    cbam_residual: bool = True
    collapse_ratio: float = 0.1          # flow-input spread below this fraction of its initial value = degenerate
    monitor_images: int = 32             # training images used to measure that spread
    test_chunk: int = 64                 # transformed images per forward pass when scoring


class DifferNetDetector(Detector):
    """DifferNet (Rudolph et al., WACV 2021) and AttentDifferNet (Vieira e Silva et al., WACV 2024)."""

    name = "differnet"
    produces_maps = False
    Options = DifferNetOptions
    default_epochs = 100       # seed 000 §4.2 (the DifferNet paper trains 192)
    default_batch_size = 24
    default_image_size = 448
    paper_eval_every = 8       # DifferNet train.py: test AUROC after every meta-epoch of 8 sub-epochs
    fp16_training = True       # train_epoch steps through Detector.backward_step

    def __init__(self, options: DifferNetOptions, run) -> None:
        super().__init__(options, run)
        self._validate()
        self.model: DifferNetModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.train_images: torch.Tensor | None = None
        self.reference_spread: float = -1.0
        self.notes: list[str] = []
        self._finished = False
        self.augmentation = differnet_train(options.rotation, options.brightness, options.contrast, options.saturation)

    # -- construction --------------------------------------------------------------------------
    def _validate(self) -> None:
        o = self.options
        if o.attention not in ("none", "se", "cbam"):
            raise InspladError(f"differnet: attention must be none, se or cbam, got {o.attention!r}")
        if o.feature_norm not in ("auto", "none", "rms"):
            raise InspladError(f"differnet: feature_norm must be auto, none or rms, got {o.feature_norm!r}")
        smallest = self.run.image_size // 2 ** (o.n_scales - 1)
        if o.n_scales < 1 or smallest < 63:
            raise InspladError(f"differnet: image size {self.run.image_size} with n_scales={o.n_scales} gives a "
                               f"{smallest}px scale; AlexNet needs at least 63px (raise --image-size or lower n_scales)")
        for key in ("flow_width", "coupling_blocks", "n_transforms", "n_transforms_test", "test_chunk"):
            if getattr(o, key) < 1:
                raise InspladError(f"differnet: option {key} must be at least 1")

    @property
    def trains_attention(self) -> bool:
        return self.options.attention != "none" and len(self.options.blocks) > 0

    @property
    def feature_norm(self) -> str:
        if self.options.feature_norm == "auto":
            return "rms" if self.trains_attention else "none"
        return self.options.feature_norm

    def _attention_kwargs(self) -> dict[str, Any]:
        o = self.options
        if o.attention == "se":
            return {"reduction": o.se_reduction, "bias": False}
        if o.attention == "cbam":
            return {"reduction": o.cbam_reduction, "kernel_size": o.cbam_kernel, "mlp_bias": False,
                    "spatial_bn": False, "residual": o.cbam_residual}
        return {}

    def _build(self, pretrained: bool, weights: str | None) -> None:
        o = self.options
        extractor = alexnet_extractor(o.attention, o.blocks, pretrained=pretrained, weights=weights,
                                      **self._attention_kwargs())
        for p in extractor.conv_parameters():
            p.requires_grad_(False)
        flow = differnet_flow(256 * o.n_scales, o.coupling_blocks, o.flow_width, o.clamp)
        self.model = DifferNetModel(extractor, flow, o.n_scales, self.feature_norm).to(self.device)

    def _ensure_model(self) -> DifferNetModel:
        if self.model is None:
            self._build(pretrained=False, weights=None)  # weights come from a checkpoint
        return self.model

    def _trainable(self) -> list[nn.Parameter]:
        model = self._ensure_model()
        return list(model.flow.parameters()) + model.extractor.attention_parameters()

    # -- training ------------------------------------------------------------------------------
    def setup(self, train_images: Sequence[Path]) -> None:
        self._build(pretrained=self.run.pretrained, weights=self.run.weights)
        o = self.options
        params = [p for p in self._trainable() if p.requires_grad]
        self.optimizer = adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.adam_eps, weight_decay=o.weight_decay)
        self.train_images = load_images_uint8(train_images, self.run.image_size, self.run.progress, "differnet load",
                                              run=self.run)
        self._finished = False
        self.notes = self.deviation_notes()
        if self.trains_attention:
            self.reference_spread = self._flow_input_spread()

    def deviation_notes(self) -> list[str]:
        """One results note per option that departs from the published AttentDifferNet/DifferNet."""
        o, notes = self.options, []
        if self.feature_norm == "rms":
            notes.append("feature_norm=rms: each scale's pooled features divided by their RMS before the flow "
                         "(not in DifferNet or AttentDifferNet)")
        if o.attention == "cbam" and self.trains_attention and o.cbam_kernel != 49:
            notes.append(f"CBAM spatial kernel {o.cbam_kernel}x{o.cbam_kernel} (AttentDifferNet code line: 49x49)")
        return notes

    def _flow_input_spread(self) -> float:
        """Mean over dimensions of the std over images of the flow input, on a fixed training subset."""
        subset = self.train_images[: max(2, self.options.monitor_images)]
        if len(subset) < 2:
            return -1.0
        model = self.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            feats = torch.cat([model.features(normalize(self._to_device(subset[i:i + 16])))
                               for i in range(0, len(subset), 16)])
        model.train(was_training)
        return float(feats.std(dim=0, unbiased=False).mean())

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        return to_device(images, self.device).float().div_(255.0)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        o, model = self.options, self.model
        model.train()
        # A generator per (seed, epoch) makes the order and the angles independent of anything
        # else that used the global RNG, so a resumed run sees exactly the same batches.
        gen = torch.Generator().manual_seed(int(self.run.seed) * 1_000_003 + epoch)
        order = torch.randperm(len(self.train_images), generator=gen)
        losses = []
        for batch_index, start in enumerate(range(0, len(order), self.run.batch_size)):
            idx = order[start:start + self.run.batch_size]
            images = self.train_images[idx].repeat_interleave(o.n_transforms, dim=0)
            seed = (int(self.run.seed) * 1_000_003 + epoch) * 100_003 + batch_index
            batch = normalize(to_device(apply(self.augmentation, images, seed), self.device))
            with torch.set_grad_enabled(True):
                if self.trains_attention:
                    z, log_jac_det, _ = model(batch)
                else:
                    with torch.no_grad():
                        feats = model.features(batch)
                    with full_precision(self.device):
                        z, log_jac_det = model.flow(feats.float())
                loss = nll_loss(z, log_jac_det)
            if not torch.isfinite(loss):
                raise InspladError(
                    f"differnet: training diverged at epoch {epoch + 1}, batch {batch_index + 1}: the flow produced a "
                    f"non-finite loss ({loss.item()}); lower the learning rate (--option lr=...) or check the images")
            self.optimizer.zero_grad(set_to_none=True)
            self.backward_step(loss, self.optimizer)
            losses.append(loss.item())
        logs = {"loss": float(np.mean(losses))}
        if self.trains_attention and self.reference_spread > 0:
            ratio = self._flow_input_spread() / self.reference_spread
            logs["feature_spread"] = ratio
            logs["degenerate"] = float(ratio < o.collapse_ratio)
            if ratio < o.collapse_ratio and not any(n.startswith("degenerate") for n in self.notes):
                message = (f"degenerate features at epoch {epoch + 1}: the flow input's spread fell to {ratio:.3g} of its "
                           f"initial value (attention shrinks the features to raise the likelihood; "
                           f"feature_norm={self.feature_norm})")
                self.notes.append(message)
                warnings.warn(f"differnet: {message}", DegenerateFeaturesWarning, stacklevel=2)
        return logs

    def finish_training(self) -> None:
        self._finished = True
        self.optimizer = None  # not needed to predict; keeps finished checkpoints small
        self.train_images = None

    # -- scoring -------------------------------------------------------------------------------
    def test_angles(self) -> torch.Tensor:
        t = self.options.n_transforms_test
        return torch.arange(t, dtype=torch.float32) * (360.0 / t)

    @torch.no_grad()
    def score_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Scores of preprocessed-free images (B, 3, H, W) in [0, 1]: mean z^2 over the fixed rotations."""
        model = self._ensure_model()
        model.eval()
        angles = self.test_angles()
        total = torch.zeros(len(images), dtype=torch.float64, device=self.device)
        reps = images.repeat_interleave(len(angles), dim=0)
        all_angles = angles.repeat(len(images))
        owner = torch.arange(len(images), device=self.device).repeat_interleave(len(angles))
        forward = self.inference_module(model)  # channels_last / --compile (methods.accel); CPU default: model
        for start in range(0, len(reps), self.options.test_chunk):
            chunk = normalize(rotate_batch(reps[start:start + self.options.test_chunk],
                                           all_angles[start:start + self.options.test_chunk]))
            z, _, _ = forward(chunk)
            total.index_add_(0, owner[start:start + self.options.test_chunk], z.double().pow(2).mean(dim=1))
        return total / len(angles)

    def predict(self, images: Sequence[Path]) -> list[ImageResult]:
        self._ensure_model()
        per_batch = max(1, self.options.test_chunk // self.options.n_transforms_test)
        from tqdm.auto import tqdm

        results: list[ImageResult] = []
        bar = tqdm(total=len(images), desc=f"{self.name} score", unit="img", disable=not self.run.progress, leave=False)
        images = list(images)
        decoded = iter_decoded(images, self.run.image_size, batch_size=per_batch,
                               workers=getattr(self.run, "workers", 0), pin_memory=self.device.type == "cuda")
        with contextlib.closing(decoded):  # decode workers stop on any exit
            for start, uint8 in zip(range(0, len(images), per_batch), decoded):
                paths = images[start:start + per_batch]
                scores = self.score_batch(self._to_device(uint8)).cpu()
                for path, score in zip(paths, scores.tolist()):
                    if not math.isfinite(score):
                        raise InspladError(f"{path}: differnet produced a non-finite score ({score}); the flow is unstable")
                    results.append(ImageResult(score=score))
                bar.update(len(paths))
        bar.close()
        return results

    def export_module(self) -> nn.Module:
        """All fixed test rotations, the flow and the mean z^2 as one graph (images in [0, 1] in, scores out)."""
        return RotationScorer(self._ensure_model().eval(), self.test_angles())

    def explain_target(self) -> tuple[nn.Module, nn.Module]:
        """Score of the unrotated image; Grad-CAM layer = the last map before AlexNet's final pool:
        ReLU5, or AB3's output when that block is present (so attention's effect is what is shown)."""
        model = self._ensure_model().eval()
        extractor = model.extractor
        layer = extractor.attention["3"] if "3" in extractor.attention else extractor.features[11]
        return RotationScorer(model, torch.zeros(1)), layer

    def profile_forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Inference on a batch of images in [0, 1] at ``image_size``: all test rotations, scores out."""
        return self.score_batch(batch.to(self.device))

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        model = self._ensure_model()
        state: dict[str, Any] = {
            "extractor": {k: v.detach().cpu() for k, v in model.extractor.state_dict().items()},
            "flow": {k: v.detach().cpu() for k, v in model.flow.state_dict().items()},
            "reference_spread": float(self.reference_spread),
            "notes": list(self.notes),
        }
        if self.optimizer is not None and not self._finished:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        model = self._ensure_model()
        model.extractor.load_state_dict(state["extractor"])
        model.flow.load_state_dict(state["flow"])
        self.reference_spread = float(state.get("reference_spread", -1.0))
        self.notes = list(state.get("notes", []))
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])

    def trainable_modules(self) -> list[nn.Module]:
        model = self._ensure_model()
        return [model.flow, model.extractor.attention]

    def variant(self) -> dict[str, Any]:
        info = dataclasses.asdict(self.options)
        info["blocks"] = list(self.options.blocks) if self.trains_attention else []
        info["betas"] = list(self.options.betas)
        info["feature_norm"] = self.feature_norm
        info["augmentation"] = {"train": serialise(self.augmentation)}
        return {"backbone": "alexnet", **info}


class RotationScorer(nn.Module):
    """DifferNet's test-time scoring as a module: mean z^2 over fixed rotations of each image."""

    def __init__(self, model: DifferNetModel, angles: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("angles", angles.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        t = self.angles.shape[0]
        reps = images.repeat_interleave(t, dim=0)
        z, _, _ = self.model(normalize(rotate_batch(reps, self.angles.repeat(images.shape[0]))))
        return z.pow(2).mean(dim=1).reshape(-1, t).mean(dim=1)


def _load_uint8(path: Path, size: int) -> torch.Tensor:
    from PIL import Image

    img = load_rgb(Path(path)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
