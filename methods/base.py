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
import math
import os
import pickle
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from insplad_tools.errors import InspladError
from methods.attention import check_attention
from methods.data import DEFAULT_CACHE_BUDGET_MB, DEFAULT_WORKERS

CHECKPOINT_FORMAT = "insplad-checkpoint/1"
MAX_OPTION_INT = 2**31 - 1  # larger integer options only crash native code
CHECKPOINT_TMP_PREFIX = "."  # temporary checkpoints are ".<name>.pt.tmp-<pid>" beside the target


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
    precision: str = "auto"  # fp32 | bf16 | fp16 autocast; auto: bf16 on CUDA with bf16 support, else fp32
    workers: int = DEFAULT_WORKERS  # image-decoding worker processes (0: the main process); methods.data
    cache_budget_mb: int = DEFAULT_CACHE_BUDGET_MB  # a larger decoded train set is memory-mapped from disk
    cache_dir: str | None = None  # where that file goes (the run's output folder); None: the system temp dir
    channels_last: str = "auto"  # auto | on | off: NHWC convolutions at inference; auto = on for CUDA (methods.accel)
    compile: bool = False  # torch.compile the inference module (methods.accel)
    cuda_graphs: bool = True  # replay captured CUDA graphs where a method declares cuda_graph_batch (methods.accel)


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
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", name or ""):
        raise InspladError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InspladError("--device cuda requested but torch sees no CUDA device (use --device cpu or auto)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise InspladError(f"--device {name}: torch sees only {torch.cuda.device_count()} CUDA device(s)")
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
            value = int(raw)
            if abs(value) > MAX_OPTION_INT:
                raise ValueError(raw)
            return value
        if isinstance(default, float):
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        if isinstance(default, tuple):
            return tuple(type(default[0])(v) for v in raw.split(",")) if default else tuple(raw.split(","))
    except ValueError as exc:
        kind = {"int": f"an integer of at most {MAX_OPTION_INT:,} in size", "float": "a finite number"}.get(
            type(default).__name__, type(default).__name__)
        raise InspladError(f"option {key}={raw!r}: expected {kind}") from exc
    return raw


def _under_precision(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a Detector method) run inside the detector's autocast."""
    import functools

    @functools.wraps(fn)
    def wrapper(self: Detector, *args: Any, **kwargs: Any) -> Any:
        from methods.precision import autocast

        with autocast(self.device, self.precision):
            return fn(self, *args, **kwargs)

    wrapper._under_precision = True  # type: ignore[attr-defined]
    return wrapper


class Detector(abc.ABC):
    """An anomaly detection method: trained on normal images, scores any image."""

    name: ClassVar[str]
    produces_maps: ClassVar[bool] = False
    Options: ClassVar[type]  # a dataclass with defaults for every field
    # Per-method defaults for the shared flags when the user does not give them.
    default_epochs: ClassVar[int] = 10
    default_batch_size: ClassVar[int] = 8
    default_image_size: ClassVar[int] = 256
    # ``--protocol paper``: epochs between test evaluations in the method's reference code (None: it has none).
    paper_eval_every: ClassVar[int | None] = None
    # Whether the method uses held-out normal images (``--val-split``), e.g. EfficientAD's map quantiles.
    uses_validation: ClassVar[bool] = False
    validation_images: list[Path] | None = None  # set by the caller before fit when --val-split is given
    # Canonical JSON of what makes a run (method, options, data digest, run settings), set by the
    # caller (``insplad benchmark``); saved in every checkpoint, and a checkpoint resumes only when equal.
    identity: str | None = None
    # Whether train_epoch's backward passes go through backward_step (fp16 loss scaling); fp16
    # training is refused for methods that do not.
    fp16_training: ClassVar[bool] = False
    # Largest batch whose CUDA inference replays a captured CUDA graph (0: never; methods.accel).
    cuda_graph_batch: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every method's own predict / profile_forward runs under the run's autocast, without each
        # method having to remember it (methods.precision).
        super().__init_subclass__(**kwargs)
        for name in ("predict", "profile_forward"):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_under_precision", False):
                setattr(cls, name, _under_precision(fn))

    @property
    def precision(self) -> str:
        """The run's concrete precision (fp32, bf16 or fp16) on this detector's device."""
        from methods.precision import resolve_precision

        return resolve_precision(getattr(self.run, "precision", "auto"), str(self.device))

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward(); optimizer.step()``, with fp16 loss scaling (GradScaler) when the run is fp16."""
        if self.precision != "fp16":
            loss.backward()
            optimizer.step()
            return
        scaler = getattr(self, "_grad_scaler", None)
        if scaler is None:
            scaler = self._grad_scaler = torch.amp.GradScaler(self.device.type)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    @classmethod
    def resolve_options(cls, options: dict[str, Any], *, epochs_given: bool) -> tuple[dict[str, Any], str | None]:
        """Options as a run will use them, given whether ``--epochs`` was explicit, and a line saying what
        changed (None when nothing did). Default: unchanged."""
        return options, None

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

    @property
    def crop(self) -> Any:
        """The :class:`leaderboard.region.CentreCrop` view of each image that the maps cover, recorded in
        predictions and results so that scoring crops the masks identically; None (default): the whole image."""
        return None

    def profile_forward(self, batch: torch.Tensor) -> Any:
        """The inference computation on a preprocessed batch, used by ``insplad profile``."""
        raise InspladError(f"method {self.name} does not support profiling")

    def inference_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` wrapped by the run's execution options (channels_last, --compile, CUDA graphs;
        :mod:`methods.accel`), built once; on the CPU by default, ``module`` itself."""
        from methods.accel import accelerated

        return accelerated(self, module, graph_batch=self.cuda_graph_batch)

    def export_module(self) -> torch.nn.Module:
        """The scoring graph for ``insplad export``: images in [0, 1], (B, 3, S, S) -> scores or (scores, maps).

        Normalisation and test-time transforms belong inside the module; a method that cannot score
        in one graph keeps this default, which says so.
        """
        raise InspladError(f"method {self.name} cannot be exported: its scoring is not a single graph")

    def explain_target(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """For Grad-CAM (``insplad explain``): a module mapping images in [0, 1] to scores (B,) with
        gradients, and the backbone layer to explain. Methods without one keep this default."""
        raise InspladError(f"Grad-CAM is not available for {self.name}: its score is not differentiable "
                           "through the backbone")

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

    def fit(self, train_images: Sequence[Path], checkpoint: Path | None = None, *,
            evaluate: Callable[[int], dict[str, float]] | None = None, eval_every: int = 0) -> list[dict[str, float]]:
        """Train for ``run.epochs`` epochs, resuming from ``checkpoint`` when it holds an unfinished run.

        ``evaluate`` (the ``paper`` protocol's test-set evaluation) is called with the number of finished
        epochs every ``eval_every`` epochs and after the last one; what it returns joins that epoch's
        history entry, before the checkpoint is written, so a resumed run knows the best epoch so far.
        """
        from tqdm.auto import tqdm

        from methods.precision import autocast

        precision = self.precision
        if precision == "fp16" and not self.fp16_training:
            raise InspladError(f"{self.name}: fp16 training is not supported (its training loop has no loss "
                               "scaling); use --precision bf16 or fp32")
        seed_everything(self.run.seed)
        with autocast(self.device, precision):
            self.setup(train_images)
        if checkpoint is not None and Path(checkpoint).is_file():
            saved = read_checkpoint(Path(checkpoint))
            if saved["method"] == self.name and saved["options"] == dataclasses.asdict(self.options) \
                    and saved["run"]["seed"] == self.run.seed and saved.get("finished") is False \
                    and saved.get("identity") == self.identity:
                self.load_state(saved["state"])
                self.epochs_done = int(saved["epoch"])
                self.history = list(saved.get("history", []))
                _restore_rng(saved.get("rng"))
                if saved.get("grad_scaler") and precision == "fp16":  # fp16 resumes with its loss scale
                    self._grad_scaler = torch.amp.GradScaler(self.device.type)
                    self._grad_scaler.load_state_dict(saved["grad_scaler"])
        bar = tqdm(range(self.epochs_done, self.run.epochs), desc=f"{self.name} train", unit="epoch",
                   disable=not self.run.progress, initial=self.epochs_done, total=self.run.epochs, leave=False)
        for epoch in bar:
            with autocast(self.device, precision):
                logs = self.train_epoch(epoch)
            self.history.append({"epoch": epoch, **logs})
            self.epochs_done = epoch + 1
            if evaluate is not None and eval_every > 0 and (self.epochs_done % eval_every == 0
                                                             or self.epochs_done == self.run.epochs):
                self.history[-1].update(evaluate(self.epochs_done))
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
            if checkpoint is not None and self.epochs_done < self.run.epochs \
                    and self.epochs_done % max(1, self.run.checkpoint_every) == 0:
                self.save(Path(checkpoint), finished=False)
        with autocast(self.device, precision):
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
            "identity": self.identity,
        }
        scaler = getattr(self, "_grad_scaler", None)
        if scaler is not None:
            payload["grad_scaler"] = scaler.state_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        tmp = path.with_name(f"{CHECKPOINT_TMP_PREFIX}{path.name}.tmp-{os.getpid()}")
        try:  # a full disk or a signal must not leave half a checkpoint behind
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise InspladError(f"{path}: cannot write checkpoint ({exc.strerror or exc}); "
                                   "no partial file left behind") from None
            raise


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
            self.inference_module(self.model), images, size=self.crop or self.run.image_size, batch_size=self.run.batch_size, device=self.device,
            progress=self.run.progress, desc=f"{self.name} predict", workers=getattr(self.run, "workers", 0))]

    @torch.no_grad()
    def profile_forward(self, batch: torch.Tensor) -> Any:
        model = self._ensure_model()
        model.eval()
        return self.inference_module(model)(batch.to(self.device))

    def export_module(self) -> torch.nn.Module:
        if self.model is None:
            raise InspladError(f"{self.name}: train (fit) or load a checkpoint before exporting")
        return NormalisedInput(self.model.eval())


class NormalisedInput(torch.nn.Module):
    """Wraps a model that takes ImageNet-normalised input so that it takes images in [0, 1]."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> Any:
        from methods.data import normalise

        return self.model(normalise(images))


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
    problem = checkpoint_problem(payload)
    if problem:
        raise InspladError(f"{path}: malformed checkpoint: {problem}")
    return payload


def checkpoint_problem(payload: dict[str, Any]) -> str | None:
    """The first structural problem of a checkpoint payload (key and what is wrong), or None."""
    import json

    def bad_int(value: Any, minimum: int, maximum: int = 2**31 - 1) -> bool:
        return isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum

    if not isinstance(payload.get("method"), str) or not payload["method"]:
        return "'method' must be a non-empty string"
    for key in ("options", "run", "state"):
        if not isinstance(payload.get(key), dict):
            return f"'{key}' section missing or not a mapping"
    if not all(isinstance(k, str) for k in payload["options"]):
        return "'options' keys must be strings"
    run = payload["run"]
    for key, minimum, maximum in (("epochs", 0, 10**7), ("batch_size", 1, 65536), ("image_size", 1, 8192),
                                  ("seed", 0, 2**32 - 1)):
        if bad_int(run.get(key), minimum, maximum):
            return f"run.{key} must be an integer in {minimum}..{maximum}"
    if bad_int(payload.get("epoch"), 0):
        return "'epoch' must be an integer >= 0"
    if not isinstance(payload.get("finished"), bool):
        return "'finished' must be true or false"
    if not isinstance(payload.get("history", []), list):
        return "'history' must be a list"
    if not isinstance(payload.get("grad_scaler", {}), dict):
        return "'grad_scaler' must be a mapping (the fp16 loss scaler's state)"
    identity = payload.get("identity")
    if identity is not None:
        try:
            decoded = json.loads(identity) if isinstance(identity, str) else None
        except (ValueError, RecursionError):
            decoded = None
        if not isinstance(decoded, dict):
            return "'identity' must be the JSON text of an object"
        if decoded.get("method") != payload["method"]:
            return (f"labelled method {payload['method']!r} but written by a {decoded.get('method')!r} run "
                    "(relabelled checkpoint)")
    return None
