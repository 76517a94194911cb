"""DifferNet's normalizing flow, built from FrEIA blocks.

``coupling_blocks`` x (fixed random permutation seeded by the block index + GLOW affine coupling),
fully connected subnets (in -> width -> width -> width -> 2*out), soft clamp
``log s = alpha * 0.636 * atan(s / alpha)``. FrEIA returns the log-determinant from the same
forward pass that computes ``z``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from FrEIA.framework import SequenceINN
from FrEIA.modules import GLOWCouplingBlock, PermuteRandom
from torch import nn


class SoftClampAtan:
    """``0.636 * atan(u / alpha)``; FrEIA multiplies it by ``clamp=alpha`` (DifferNet's soft clamp)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = float(alpha)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return 0.636 * torch.atan(u / self.alpha)


def fc_subnet(width: int) -> Callable[[int, int], nn.Module]:
    """A FrEIA ``subnet_constructor``: three hidden fully connected layers of ``width`` with ReLU."""

    def build(dims_in: int, dims_out: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(dims_in, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, dims_out),
        )

    return build


def differnet_flow(dims: int = 768, coupling_blocks: int = 8, width: int = 2048, clamp: float = 3.0) -> SequenceINN:
    """The flow ``f: R^dims -> R^dims``; ``flow(x)`` returns ``(z, log|det J|)``."""
    numpy_state = np.random.get_state()  # PermuteRandom reseeds numpy's global RNG; keep callers unaffected
    try:
        flow = SequenceINN(dims)
        for k in range(coupling_blocks):
            flow.append(PermuteRandom, seed=k)
            flow.append(GLOWCouplingBlock, subnet_constructor=fc_subnet(width), clamp=clamp,
                        clamp_activation=SoftClampAtan(clamp))
    finally:
        np.random.set_state(numpy_state)
    return flow
