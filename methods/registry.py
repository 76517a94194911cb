"""The method registry: the one table mapping a method name to its Detector class.

Commands (``benchmark``, ``predict``, ``profile``) look methods up here and never special-case
one. Classes are imported on first use so that listing methods stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from insplad_tools.errors import InspladError
from methods.base import Detector, RunConfig, coerce_options, read_checkpoint


@dataclass(frozen=True)
class MethodSpec:
    name: str
    target: str  # "module:ClassName" of the Detector subclass
    summary: str

    def load(self) -> type[Detector]:
        module_name, attr = self.target.split(":")
        return getattr(importlib.import_module(module_name), attr)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("differnet", "methods.differnet.detector:DifferNetDetector",
                   "DifferNet / AttentDifferNet: AlexNet (+SE/CBAM blocks) features, normalizing flow likelihood."),
        MethodSpec("simplenet", "methods.simplenet.detector:SimpleNetDetector",
                   "SimpleNet: (SE/CBAM-)ResNet-18 features, adaptor, noise-trained discriminator; maps."),
        MethodSpec("efficientad", "methods.efficientad.detector:EfficientADDetector",
                   "EfficientAD-S: PDN teacher/student (+SE/CBAM) and autoencoder; maps."),
        MethodSpec("patchcore", "methods.patchcore.detector:PatchCoreDetector",
                   "PatchCore: (SE/CBAM-)ResNet-18 patch memory bank with greedy coreset; maps."),
        MethodSpec("padim", "methods.padim.detector:PadimDetector",
                   "PaDiM: ResNet-18 layers 1-3, random 100 channels, per-position Gaussian, Mahalanobis maps."),
        MethodSpec("rdpp", "methods.rdpp.detector:RDPPDetector",
                   "RD++: (SE/CBAM-)ResNet-18 teacher, multi-projection layer, OCBE, reverse-distilled student; maps."),
        MethodSpec("fastflow", "methods.fastflow.detector:FastFlowDetector",
                   "FastFlow: 2-D FrEIA flows over (SE/CBAM-)ResNet-18 layers 1-3; maps."),
        MethodSpec("cflow", "methods.cflow.detector:CFlowDetector",
                   "CFLOW-AD: positional-encoding conditional FrEIA flows on WRN-50-2 (or ResNet-18) fibers; maps."),
        MethodSpec("csflow", "methods.csflow.detector:CSFlowDetector",
                   "CS-Flow: cross-scale fully convolutional FrEIA flow on EfficientNet-B5 at 3 scales; maps."),
    )
}


def get_method(name: str) -> type[Detector]:
    if name not in METHODS:
        raise InspladError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name].load()


def build_detector(name: str, options: dict[str, Any], run: RunConfig) -> Detector:
    """Instantiate a method with its options (validated and converted) and the shared run config."""
    cls = get_method(name)
    return cls(coerce_options(cls.Options, options), run)


def load_detector(path: Path, device: str = "cpu") -> Detector:
    """Rebuild a trained detector from a checkpoint written by :meth:`Detector.save`."""
    payload = read_checkpoint(Path(path))
    if not payload.get("finished", False):
        raise InspladError(f"{path}: checkpoint is from an unfinished training run")
    if payload["method"] not in METHODS:
        raise InspladError(f"{path}: method {payload['method']!r} is not registered (known: {', '.join(METHODS)})")
    cls = get_method(payload["method"])
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    run = RunConfig(**{k: v for k, v in payload["run"].items() if k in run_fields})
    run.device = device
    run.pretrained = False  # weights come from the checkpoint, never re-downloaded
    run.channels_last, run.compile, run.cuda_graphs = "auto", False, True  # execution is the caller's (methods.accel)
    defaults = RunConfig(epochs=1, batch_size=1, image_size=1)
    run.workers, run.cache_budget_mb, run.cache_dir = defaults.workers, defaults.cache_budget_mb, None  # this machine's
    try:
        options = coerce_options(cls.Options, payload["options"])
    except InspladError as exc:
        raise InspladError(f"{path}: options: {exc.message}") from exc
    try:
        detector = cls(options, run)
        detector.load_state(payload["state"])
    except InspladError as exc:
        raise InspladError(f"{path}: {exc.message}") from exc
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InspladError(f"{path}: state does not fit a {payload['method']} model "
                           f"({type(exc).__name__}: {detail[:200]})") from exc
    detector.identity = payload.get("identity")
    detector.history = list(payload.get("history", []))
    detector.epochs_done = int(payload.get("epoch", 0))
    return detector
