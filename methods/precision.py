"""Numeric precision of a run: fp32, or mixed precision (bf16 / fp16 autocast) on any device.

``--precision auto`` (the default) is bf16 on CUDA devices that support it and fp32 elsewhere.
Autocast runs matmuls and convolutions in the low-precision type and keeps reductions, losses and
normalisations in fp32; normalizing flows keep their own fp32 islands where the method needs them
(DifferNet's flow: the fact sheet's pitfall that ``t`` and ``z`` overflow in half precision). fp16
training scales the loss with :class:`torch.amp.GradScaler` (bf16 has fp32's range and needs none).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from insplad_tools.errors import InspladError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: str) -> str:
    """The concrete precision (fp32, bf16 or fp16) for ``name`` on ``device``."""
    if name not in PRECISIONS:
        raise InspladError(f"--precision {name!r}: choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        cuda = str(device).startswith("cuda")
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if name == "bf16" and str(device).startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise InspladError("--precision bf16: this CUDA device has no bf16 support (use fp16 or fp32)")
    return name


@contextlib.contextmanager
def autocast(device: str | torch.device, precision: str) -> Iterator[None]:
    """Autocast for ``precision`` on ``device`` (nothing for fp32)."""
    if precision in ("fp32", "auto") or precision not in DTYPES:
        yield
        return
    device_type = torch.device(device).type
    with torch.autocast(device_type=device_type, dtype=DTYPES[precision]):
        yield


@contextlib.contextmanager
def full_precision(device: str | torch.device) -> Iterator[None]:
    """An fp32 island inside an autocast region."""
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield
