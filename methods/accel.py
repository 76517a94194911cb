"""GPU execution options for every method's inference: channels_last, torch.compile and CUDA graphs.

One place applies them (:func:`accelerate`); ``MapDetector.predict`` / ``profile_forward`` and
DifferNet's scoring call it, so ``insplad benchmark``, ``predict`` and ``profile`` share the flags:

* ``--channels-last auto|on|off`` (``RunConfig.channels_last``): convolution weights and input batches in
  NHWC memory layout, which CUDA tensor cores prefer. ``auto`` (the default) is on for CUDA and off on
  the CPU, so CPU scores are exactly those of plain eager execution.
* ``--compile`` (``RunConfig.compile``, off by default): the inference module goes through
  ``torch.compile`` (inductor). The first call of each input shape compiles (tens of seconds); a
  failure (no C++ compiler on the CPU, an unsupported operator) is one clear error, never a traceback.
* ``--cuda-graphs/--no-cuda-graphs`` (``RunConfig.cuda_graphs``, on by default): methods whose scoring
  graph is static declare ``cuda_graph_batch`` (EfficientAD: 1). On CUDA, calls with at most that many
  images replay a graph captured once per input shape/dtype/autocast state into static buffers,
  which removes the per-kernel launch cost that dominates batch-1 latency. Everything else, and
  every call on the CPU, runs eagerly.

On CUDA, inference also turns on ``torch.backends.cudnn.benchmark`` (convolution algorithms autotuned
per shape; inference shapes are fixed). None of this changes weights; layouts and fused kernels may
change the last bits of CUDA results, which is why the defaults leave the CPU untouched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from insplad_tools.errors import InspladError

CHANNELS_LAST = ("auto", "on", "off")
COMPILE_BACKEND: str | Callable[..., Any] = "inductor"  # what torch.compile uses (tests swap in "eager")
GRAPH_WARMUP_CALLS = 3  # eager calls on a side stream before capture (cuDNN/cuBLAS workspaces, lazy init)


def resolve_channels_last(value: str | bool, device: str | torch.device) -> bool:
    """Whether channels_last applies on ``device`` for the flag value ``value`` (auto: CUDA only)."""
    if isinstance(value, bool):
        return value
    if value not in CHANNELS_LAST:
        raise InspladError(f"--channels-last {value!r}: choose one of {', '.join(CHANNELS_LAST)}")
    if value == "auto":
        return torch.device(device).type == "cuda"
    return value == "on"


@dataclass(frozen=True)
class Execution:
    """The resolved execution options of one run on one device (what results.json records)."""

    channels_last: bool
    compile: bool
    cuda_graphs: bool

    @classmethod
    def of(cls, run: Any, device: str | torch.device, graph_batch: int = 0) -> Execution:
        """The options of ``run`` (a RunConfig or BenchmarkConfig) as they apply on ``device`` to a method whose
        ``cuda_graph_batch`` is ``graph_batch`` (graphs: CUDA and a method that declares them only)."""
        graphs = getattr(run, "cuda_graphs", True) is True and torch.device(device).type == "cuda" and graph_batch > 0
        return cls(resolve_channels_last(getattr(run, "channels_last", "auto"), device),
                   getattr(run, "compile", False) is True, graphs)

    def record(self) -> dict[str, bool]:
        return {"channels_last": self.channels_last, "compile": self.compile, "cuda_graphs": self.cuda_graphs}


def check_compile(device: str | torch.device) -> None:
    """Refuse ``--compile`` up front where inductor cannot work (a CPU without a C++ compiler)."""
    if not hasattr(torch, "compile"):
        raise InspladError("--compile: this torch has no torch.compile (torch >= 2.0 needed)")
    if torch.device(device).type == "cpu" and COMPILE_BACKEND == "inductor":
        wanted = os.environ.get("CXX")
        found = shutil.which(wanted) if wanted else next(
            (shutil.which(c) for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
        if not found:
            raise InspladError(f"--compile on the CPU needs a C++ compiler (torch inductor), but "
                               f"{'CXX=' + wanted + ' is not found' if wanted else 'none of g++, c++, clang++ is on PATH'}; "
                               "install one (e.g. apt-get install g++) or run without --compile")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class ChannelsLastInput(nn.Module):
    """Passes 4-D inputs to ``module`` in channels_last layout (:func:`accelerate` converts the weights)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.module(x, *args, **kwargs)


class CompiledModule(nn.Module):
    """``torch.compile(module)``, with compilation failures turned into one :class:`InspladError` line."""

    def __init__(self, module: nn.Module, device: str | torch.device) -> None:
        super().__init__()
        check_compile(device)
        self.device_type = torch.device(device).type
        self.compiled = torch.compile(module, backend=COMPILE_BACKEND)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from torch._dynamo.exc import TorchDynamoException

        try:
            return self.compiled(*args, **kwargs)
        except TorchDynamoException as exc:  # inductor/dynamo failures, e.g. InvalidCxxCompiler
            cause = getattr(exc, "inner_exception", None) or exc  # a backend's own error says most
            raise InspladError(f"--compile: torch.compile failed on {self.device_type} "
                               f"({type(cause).__name__}: {_first_line(cause)}); run without --compile") from None


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    static_in: torch.Tensor
    static_out: Any


def _clone(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(o) for o in out)
    if isinstance(out, dict):
        return {k: _clone(v) for k, v in out.items()}
    return out


class CUDAGraphModule(nn.Module):
    """Replays a CUDA graph of ``module`` for CUDA inputs of at most ``max_batch`` images, eager otherwise.

    One graph per (shape, dtype, layout, autocast state, parameter storage): a parameter replaced by a
    new tensor (not updated in place) makes a new capture, so a graph never reads stale weights.
    Graphs are inference only: a call with autograd recording runs eagerly. Autocast's weight cache is
    off while warming up and capturing, so the casts are inside the graph instead of referring to
    cached tensors that the end of the autocast region would free.
    """

    def __init__(self, module: nn.Module, max_batch: int = 1) -> None:
        super().__init__()
        self.module = module
        self.max_batch = max_batch
        self.graphs: dict[tuple, _Graph] = {}
        self.captures = 0  # graphs captured so far (the GPU check reads it)
        self.replays = 0

    def _storage(self) -> tuple[int, ...]:
        return tuple(t.data_ptr() for t in (*self.module.parameters(), *self.module.buffers()))

    def forward(self, x: torch.Tensor) -> Any:
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.module.parameters())
        if not x.is_cuda or x.dim() == 0 or x.shape[0] > self.max_batch or grad:
            return self.module(x)
        cast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        storage = self._storage()
        key = (tuple(x.shape), x.dtype, x.stride(), x.device, cast, storage)
        entry = self.graphs.get(key)
        if entry is None:
            if any(k[-1] != storage for k in self.graphs):  # weights moved: old graphs read freed memory
                self.graphs.clear()
            entry = self.graphs[key] = self._capture(x, cast)
        with torch.inference_mode():
            entry.static_in.copy_(x)
            entry.graph.replay()
            self.replays += 1
            return _clone(entry.static_out)

    def _capture(self, x: torch.Tensor, cast: tuple[bool, torch.dtype]) -> _Graph:
        enabled, dtype = cast
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
            static_in = torch.empty_like(x)
            static_in.copy_(x)
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_CALLS):
                    self.module(static_in)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:  # thread_local: DataLoader pin-memory threads may allocate while this thread captures
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    static_out = self.module(static_in)
            except RuntimeError as exc:
                raise InspladError(f"CUDA graph capture failed ({_first_line(exc)}); run with --no-cuda-graphs") from None
        self.captures += 1
        return _Graph(graph, static_in, static_out)


def accelerate(module: nn.Module, execution: Execution, device: str | torch.device, *,
               graph_batch: int = 0) -> nn.Module:
    """``module`` wrapped for inference by ``execution``'s options (itself when none applies).

    Order: channels_last input conversion, then the CUDA graph (capturing compiled code when both are
    on), then torch.compile. channels_last converts ``module``'s weights in place.
    """
    cuda = torch.device(device).type == "cuda"
    if execution.channels_last:
        module.to(memory_format=torch.channels_last)  # 4-D weights re-laid out in place (same Parameters)
    out = module
    if execution.compile:
        out = CompiledModule(out, device)
    if execution.cuda_graphs and cuda and graph_batch > 0:
        out = CUDAGraphModule(out, graph_batch)
    if execution.channels_last:
        out = ChannelsLastInput(out)
    if cuda:
        torch.backends.cudnn.benchmark = True
    return out


def accelerated(owner: Any, module: nn.Module, *, graph_batch: int = 0) -> nn.Module:
    """:func:`accelerate` for a detector's ``module``, built once per (module, options) and kept on ``owner``."""
    execution = Execution.of(owner.run, owner.device, graph_batch)
    key = (id(module), execution, str(owner.device), graph_batch)
    cache = owner.__dict__.setdefault("_accelerated", {})
    hit = cache.get(key)
    if hit is not None and hit[0] is module:
        return hit[1]
    wrapped = accelerate(module, execution, owner.device, graph_batch=graph_batch)
    cache.clear()  # one live wrapper per detector: an old one would keep old graphs and compiled code alive
    cache[key] = (module, wrapped)
    return wrapped
