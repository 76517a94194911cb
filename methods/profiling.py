"""Trainable parameters, model size and inference latency of any registered method (seed 003 Table 4)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from methods.base import RunConfig, resolve_device, seed_everything
from methods.registry import build_detector, get_method


@dataclass
class Profile:
    method: str
    variant: dict[str, Any]
    device: str
    device_name: str
    image_size: int
    trainable_params: int
    trainable_mb: float
    model_mb: float | None
    latency_ms: dict[int, float]  # batch size -> median milliseconds per batch
    precision: str = "fp32"  # the autocast precision the latency was measured under
    channels_last: bool = False  # execution options in effect (methods.accel)
    compile: bool = False
    cuda_graphs: bool = False  # CUDA graphs replayed for batches up to the method's cuda_graph_batch



def latency_ms(detector: Any, batch: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median wall time in ms of ``detector.profile_forward(batch)`` (device-synchronised) after
    ``warmup`` untimed calls; the upper middle value when ``repeats`` is even."""
    device = str(detector.device)
    with torch.inference_mode():
        for _ in range(warmup):
            detector.profile_forward(batch)
        _sync(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            detector.profile_forward(batch)
            _sync(device)
            times.append((time.perf_counter() - start) * 1000.0)
    return sorted(times)[len(times) // 2]

def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def profile_method(method: str, options: dict[str, Any], *, image_size: int | None = None, device: str = "auto",
                   batch_sizes: Iterable[int] = (1, 32), warmup: int = 1, repeats: int = 3,
                   precision: str = "auto", channels_last: str = "auto", compile: bool = False,
                   cuda_graphs: bool = True) -> Profile:
    """Measure a freshly built (randomly initialised) detector; latency is the median of ``repeats`` timed calls."""
    device = resolve_device(device)
    seed_everything(0)
    cls = get_method(method)
    size = image_size or cls.default_image_size
    detector = build_detector(method, options, RunConfig(epochs=1, batch_size=1, image_size=size, device=device,
                                                         pretrained=False, progress=False, precision=precision,
                                                         channels_last=channels_last, compile=compile,
                                                         cuda_graphs=cuda_graphs))
    trainable = detector.trainable_parameters()
    trainable_bytes = sum(p.numel() * p.element_size() for m in detector.trainable_modules()
                          for p in m.parameters() if p.requires_grad)
    try:
        state = detector.state()
        state.pop("optimizer", None)
        model_mb: float | None = _tensor_bytes(state) / 2**20
    except Exception:  # a method whose state needs training first: size unknown, not guessed
        model_mb = None
    latency = {b: latency_ms(detector, torch.rand(b, 3, size, size, device=device), warmup, repeats)
               for b in batch_sizes}
    from methods.accel import Execution
    from methods.benchmarking import hardware

    execution = Execution.of(detector.run, device, detector.cuda_graph_batch)
    return Profile(method, detector.variant(), device, hardware(device)["device_name"], size, trainable,
                   trainable_bytes / 2**20, model_mb, latency, detector.precision, execution.channels_last,
                   execution.compile, execution.cuda_graphs)
