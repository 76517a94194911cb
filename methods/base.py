"""What every method provides, and the training loop with resumable checkpoints they share.

A method subclasses :class:`Detector` and implements ``setup``, ``train_epoch``, ``predict`` and the
two state hooks. ``fit`` (here) runs the epochs with a progress bar and writes a checkpoint after
each one, so an interrupted ``insplad benchmark`` picks up at the last finished epoch.

Checkpoints contain only tensors, numbers, strings, lists and dicts, and are always read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import os
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from insplad_tools.errors import InspladError
from methods.attention import check_attention

CHECKPOINT_FORMAT = "insplad-checkpoint/1"


@dataclass
class RunConfig:
    """Options every method shares (the ``insplad benchmark`` flags)."""

    epochs: int
    batch_size: int
    image_size: int
    device: str = "cpu"
    seed: int = 0
    pretrained: bool = True
    weights: str | None = None
    progress: bool = True
    checkpoint_every: int = 1  # epochs between resumable checkpoints (the finished model is always saved)


@dataclass
class ImageResult:
    """A method's output for one image: an anomaly score (higher = more anomalous) and maybe a map."""

    score: float
    map: np.ndarray | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> str:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InspladError("--device cuda requested but torch sees no CUDA device (use --device cpu or auto)")
    return name


def coerce_options(options_cls: type, given: dict[str, Any]) -> Any:
    """Build a method's options dataclass from a dict, converting ``key=value`` strings by field type."""
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise InspladError(f"unknown option(s) {', '.join(unknown)} for this method; known: {', '.join(sorted(fields))}")
    values = {}
    for key, raw in given.items():
        default = getattr(options_cls(), key) if _has_defaults(options_cls) else None
        values[key] = _convert(key, raw, default)
    return options_cls(**values)


def _has_defaults(cls: type) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls))


def _convert(key: str, raw: Any, default: Any) -> Any:
    if not isinstance(raw, str) or isinstance(default, str) or default is None:
        return raw
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(type(default[0])(v) for v in raw.split(",")) if default else tuple(raw.split(","))
    except ValueError as exc:
        raise InspladError(f"option {key}={raw!r}: expected {type(default).__name__}") from exc
    return raw


class Detector(abc.ABC):
    """An anomaly detection method: trained on normal images, scores any image."""

    name: ClassVar[str]
    produces_maps: ClassVar[bool] = False
    Options: ClassVar[type]  # a dataclass with defaults for every field
    # Per-method defaults for the shared flags when the user does not give them.
    default_epochs: ClassVar[int] = 10
    default_batch_size: ClassVar[int] = 8
    default_image_size: ClassVar[int] = 256

    def __init__(self, options: Any, run: RunConfig) -> None:
        if hasattr(options, "attention"):
            check_attention(options.attention)
        self.options = options
        self.run = run
        self.device = torch.device(run.device)
        self.history: list[dict[str, float]] = []
        self.epochs_done = 0

    # -- what a method implements -------------------------------------------------------------
    @abc.abstractmethod
    def setup(self, train_images: Sequence[Path]) -> None:
        """Prepare data, models and optimisers for training on ``train_images``."""

    @abc.abstractmethod
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data; returns scalar logs such as ``{"loss": ...}``."""

    def finish_training(self) -> None:
        """Work after the last epoch (statistics, quantiles); default does nothing."""

    @abc.abstractmethod
    def predict(self, images: Sequence[Path]) -> list[ImageResult]:
        """Score images (in order); maps, when produced, are 2-D float arrays."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything needed to resume training or to predict (tensors and plain data only)."""

    @abc.abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""

    @abc.abstractmethod
    def trainable_modules(self) -> list[torch.nn.Module]:
        """The modules whose parameters are trained (for parameter counts and model size)."""

    def variant(self) -> dict[str, Any]:
        """Backbone/attention description written into results."""
        return dataclasses.asdict(self.options)

    def profile_forward(self, batch: torch.Tensor) -> Any:
        """The inference computation on a preprocessed batch, used by ``insplad profile``."""
        raise InspladError(f"method {self.name} does not support profiling")

    # -- shared machinery ----------------------------------------------------------------------
    def trainable_parameters(self) -> int:
        seen: set[int] = set()
        total = 0
        for module in self.trainable_modules():
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
        return total

    def fit(self, train_images: Sequence[Path], checkpoint: Path | None = None) -> list[dict[str, float]]:
        """Train for ``run.epochs`` epochs, resuming from ``checkpoint`` when it holds an unfinished run."""
        from tqdm.auto import tqdm

        seed_everything(self.run.seed)
        self.setup(train_images)
        if checkpoint is not None and Path(checkpoint).is_file():
            saved = read_checkpoint(Path(checkpoint))
            if saved["method"] == self.name and saved["options"] == dataclasses.asdict(self.options) \
                    and saved["run"]["seed"] == self.run.seed and saved.get("finished") is False:
                self.load_state(saved["state"])
                self.epochs_done = int(saved["epoch"])
                self.history = list(saved.get("history", []))
                _restore_rng(saved.get("rng"))
        bar = tqdm(range(self.epochs_done, self.run.epochs), desc=f"{self.name} train", unit="epoch",
                   disable=not self.run.progress, initial=self.epochs_done, total=self.run.epochs, leave=False)
        for epoch in bar:
            logs = self.train_epoch(epoch)
            self.history.append({"epoch": epoch, **logs})
            self.epochs_done = epoch + 1
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
            if checkpoint is not None and self.epochs_done < self.run.epochs \
                    and self.epochs_done % max(1, self.run.checkpoint_every) == 0:
                self.save(Path(checkpoint), finished=False)
        self.finish_training()
        if checkpoint is not None:
            self.save(Path(checkpoint), finished=True)
        return self.history

    def save(self, path: Path, *, finished: bool = True) -> None:
        """Write a checkpoint atomically."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "method": self.name,
            "options": dataclasses.asdict(self.options),
            "run": dataclasses.asdict(self.run),
            "epoch": self.epochs_done,
            "finished": finished,
            "history": self.history,
            "state": self.state(),
            "rng": _capture_rng(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)


class MapDetector(Detector):
    """A detector whose ``self.model`` maps an ImageNet-normalised batch to ``(scores, maps)``."""

    produces_maps: ClassVar[bool] = True
    model: torch.nn.Module | None = None

    @abc.abstractmethod
    def _ensure_model(self) -> torch.nn.Module:
        """The model, built on first use (e.g. for profiling before training)."""

    def predict(self, images: Sequence[Path]) -> list[ImageResult]:
        from methods.data import predict_score_maps

        if self.model is None:
            raise InspladError(f"{self.name}: train (fit) or load a checkpoint before predicting")
        return [ImageResult(score, amap) for score, amap in predict_score_maps(
            self.model, images, size=self.run.image_size, batch_size=self.run.batch_size, device=self.device,
            progress=self.run.progress, desc=f"{self.name} predict")]

    @torch.no_grad()
    def profile_forward(self, batch: torch.Tensor) -> Any:
        model = self._ensure_model()
        model.eval()
        return model(batch.to(self.device))


def _capture_rng() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": int(np.random.get_state()[2])}


def _restore_rng(rng: dict[str, Any] | None) -> None:
    if not rng:
        return
    torch.set_rng_state(rng["torch"])
    keys = rng["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, rng["numpy_pos"], 0, 0.0))


def unsafe_load_reason(exc: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused a file (never advising to unpickle)."""
    if isinstance(exc, pickle.UnpicklingError):
        return "corrupt, or holds objects other than tensors and plain data, which are never unpickled"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'unreadable'}"


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check its format."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise InspladError(f"{path}: not a readable insplad checkpoint ({unsafe_load_reason(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InspladError(f"{path}: not an {CHECKPOINT_FORMAT} checkpoint")
    return payload
