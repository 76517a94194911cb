"""The methods' optimisers: torch's Adam / AdamW, fused into one kernel per step where torch has one.

The unfused CPU implementation runs a dozen elementwise passes per parameter tensor; for DifferNet's
172M flow parameters that was a fifth of a training step on the CPU (benchmarks/RESULTS.md, "DifferNet
vs the original training loop"). The fused kernel computes the same update (same algorithm and
hyperparameters, last-bit differences from the order of operations) and is used for float32 parameters
on the CPU and CUDA; anything else gets torch's default implementation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def _fusable(params: list[Any]) -> bool:
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    return bool(tensors) and all(isinstance(p, torch.Tensor) and p.dtype == torch.float32
                                 and p.device.type in ("cpu", "cuda") for p in tensors)


def adam(params: Iterable[Any], *, decoupled: bool = False, **kwargs: Any) -> torch.optim.Optimizer:
    """``torch.optim.Adam(params, **kwargs)`` (``AdamW`` when ``decoupled``), fused when possible."""
    params = list(params)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    if _fusable(params):
        kwargs.setdefault("fused", True)
    return cls(params, **kwargs)
