"""CS-Flow's torch model: a frozen backbone at three input scales and a fully convolutional cross-scale flow.

Training logic lives in :mod:`methods.csflow.detector`. The flow takes three feature maps (one per
scale) through ``coupling_blocks`` x (a fixed random channel permutation per scale, FrEIA
``PermuteRandom``; a cross-scale affine coupling). FrEIA has no
coupling whose subnet sees several inputs at once, so :class:`CrossScaleCoupling` is a FrEIA
``InvertibleModule`` written here: a GLOW-style two-half coupling on all three scales whose scale
and shift come from :class:`CrossConvolutions` (each scale's conv plus up/down-sampled convs of its
neighbours, LeakyReLU 0.1, learnable output gains initialised at 0) with the atan soft clamp
``clamp * 0.636 * atan(s / clamp)``, as in ``marco-rudolph/cs-flow`` (``model.py``, ``freia_funcs.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from FrEIA.modules import InvertibleModule, PermuteRandom
from torch import nn


def _resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``like``'s spatial size (a no-op when they already agree)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=tuple(like.shape[-2:]), mode="bilinear", align_corners=False)


class CrossConvolutions(nn.Module):
    """Subnet of a cross-scale coupling: three feature maps in, three out (largest scale first).

    Per scale: conv k (in -> hidden), LeakyReLU, conv k (hidden -> out); plus the next coarser scale's
    hidden map upsampled x2 and convolved, and the next finer one convolved with stride 2. Each
    scale's sum is multiplied by a learnable gain that starts at 0 (the coupling starts as identity).
    """

    def __init__(self, channels_in: int, channels_out: int, hidden: int = 1024, kernel_size: int = 3,
                 leaky_slope: float = 0.1) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.inner = nn.ModuleList(nn.Conv2d(channels_in, hidden, kernel_size, padding=pad) for _ in range(3))
        self.outer = nn.ModuleList(nn.Conv2d(hidden, channels_out, kernel_size, padding=pad) for _ in range(3))
        self.up = nn.ModuleList(nn.Conv2d(hidden, channels_out, kernel_size, padding=pad) for _ in range(2))
        self.down = nn.ModuleList(nn.Conv2d(hidden, channels_out, kernel_size, padding=pad, stride=2) for _ in range(2))
        self.gammas = nn.Parameter(torch.zeros(3))
        self.act = nn.LeakyReLU(leaky_slope)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = [self.act(conv(x)) for conv, x in zip(self.inner, (x0, x1, x2))]
        same = [conv(hi) for conv, hi in zip(self.outer, h)]
        up10 = self.up[0](_resize_to(F.interpolate(h[1], scale_factor=2, mode="bilinear", align_corners=False), h[0]))
        up21 = self.up[1](_resize_to(F.interpolate(h[2], scale_factor=2, mode="bilinear", align_corners=False), h[1]))
        down01 = _resize_to(self.down[0](h[0]), h[1])
        down12 = _resize_to(self.down[1](h[1]), h[2])
        return (self.gammas[0] * (same[0] + up10), self.gammas[1] * (same[1] + down01 + up21),
                self.gammas[2] * (same[2] + down12))


class CrossScaleCoupling(InvertibleModule):
    """Affine coupling of three feature maps at once: each half's scale and shift come from the other
    half at all scales (two :class:`CrossConvolutions`), soft-clamped with ``clamp * 0.636 * atan(s / clamp)``."""

    def __init__(self, dims_in: Sequence[tuple[int, ...]], dims_c: Sequence[tuple[int, ...]] | None = None,
                 clamp: float = 3.0, hidden: int = 1024, kernel_size: int = 3, leaky_slope: float = 0.1) -> None:
        super().__init__(dims_in, dims_c or [])
        channels = dims_in[0][0]
        if len(dims_in) != 3 or any(d[0] != channels for d in dims_in):
            raise ValueError("CrossScaleCoupling needs three inputs with equal channels")
        self.split1, self.split2 = channels // 2, channels - channels // 2
        self.clamp = clamp
        self.s1 = CrossConvolutions(self.split1, 2 * self.split2, hidden, kernel_size, leaky_slope)
        self.s2 = CrossConvolutions(self.split2, 2 * self.split1, hidden, kernel_size, leaky_slope)

    def _log_scale(self, s: torch.Tensor) -> torch.Tensor:
        return self.clamp * 0.636 * torch.atan(s / self.clamp)

    def _affine(self, x: Sequence[torch.Tensor], params: Sequence[torch.Tensor], n: int,
                rev: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        out, logdet = [], 0
        for xi, p in zip(x, params):
            log_s, t = self._log_scale(p[:, :n]), p[:, n:]
            out.append((xi - t) * torch.exp(-log_s) if rev else xi * torch.exp(log_s) + t)
            logdet = logdet + log_s.flatten(1).sum(1)
        return out, (-logdet if rev else logdet)

    def forward(self, x: Sequence[torch.Tensor], c: Sequence[torch.Tensor] = (), rev: bool = False,
                jac: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        a = [t[:, :self.split1] for t in x]
        b = [t[:, self.split1:] for t in x]
        if not rev:
            a, det_a = self._affine(a, self.s2(*b), self.split1, rev=False)
            b, det_b = self._affine(b, self.s1(*a), self.split2, rev=False)
        else:
            b, det_b = self._affine(b, self.s1(*a), self.split2, rev=True)
            a, det_a = self._affine(a, self.s2(*b), self.split1, rev=True)
        return [torch.cat([ai, bi], dim=1) for ai, bi in zip(a, b)], det_a + det_b

    def output_dims(self, input_dims: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return list(input_dims)


class CrossScaleFlow(nn.Module):
    """``coupling_blocks`` x (a fixed random channel permutation per scale, FrEIA ``PermuteRandom``; a
    :class:`CrossScaleCoupling`). ``flow([x0, x1, x2])`` returns ``([z0, z1, z2], log|det J|)``.

    The blocks are held in creation order (not in a FrEIA ``GraphINN``, whose module order can differ
    between two builds of the same graph and would then load a checkpoint into the wrong nodes).
    """

    def __init__(self, shapes: Sequence[tuple[int, int, int]], coupling_blocks: int = 4, clamp: float = 3.0,
                 hidden: int = 1024, kernel_sizes: Sequence[int] = (3, 3, 3, 5)) -> None:
        super().__init__()
        if len(kernel_sizes) < coupling_blocks:
            raise ValueError(f"need {coupling_blocks} kernel sizes, got {len(kernel_sizes)}")
        dims = [tuple(int(v) for v in s) for s in shapes]
        numpy_state = np.random.get_state()  # PermuteRandom reseeds numpy's global RNG; keep callers unaffected
        try:
            self.permutes = nn.ModuleList(
                nn.ModuleList(PermuteRandom([shape], seed=3 * k + i) for i, shape in enumerate(dims))
                for k in range(coupling_blocks))
        finally:
            np.random.set_state(numpy_state)
        self.couplings = nn.ModuleList(CrossScaleCoupling(dims, clamp=clamp, hidden=hidden,
                                                          kernel_size=int(kernel_sizes[k]))
                                       for k in range(coupling_blocks))

    def forward(self, x: Sequence[torch.Tensor], rev: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = list(x)
        logdet = torch.zeros(x[0].shape[0], device=x[0].device)
        blocks = list(zip(self.permutes, self.couplings))
        for permutes, coupling in (reversed(blocks) if rev else blocks):
            if not rev:
                x = [perm((xi,))[0][0] for perm, xi in zip(permutes, x)]
            x, det = coupling(x, rev=rev)
            logdet = logdet + det
            if rev:
                x = [perm((xi,), rev=True)[0][0] for perm, xi in zip(permutes, x)]
        return x, logdet


def cs_flow(shapes: Sequence[tuple[int, int, int]], coupling_blocks: int = 4, clamp: float = 3.0, hidden: int = 1024,
            kernel_sizes: Sequence[int] = (3, 3, 3, 5)) -> CrossScaleFlow:
    """The cross-scale flow on three (C, H, W) inputs (see :class:`CrossScaleFlow`)."""
    return CrossScaleFlow(shapes, coupling_blocks, clamp, hidden, kernel_sizes)


class CSFlowModel(nn.Module):
    """Frozen backbone on the image at full, 1/2 and 1/4 size -> cross-scale flow.

    ``forward`` gives image scores (mean of z^2 / 2 over every latent element) and maps (product over
    scales of the upsampled channel mean of z^2, anomalib's CS-Flow map).
    """

    def __init__(self, backbone: nn.Module, layer: str, shapes: Sequence[tuple[int, int, int]],
                 coupling_blocks: int = 4,
                 clamp: float = 3.0, hidden: int = 1024, kernel_sizes: Sequence[int] = (3, 3, 3, 5)) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.layer = layer
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.flow = cs_flow(self.shapes, coupling_blocks, clamp, hidden, kernel_sizes)

    def train(self, mode: bool = True) -> CSFlowModel:
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's ``layer`` at input scales 1, 1/2, 1/4 (nearest-neighbour downscaling, as the reference)."""
        size = images.shape[-1]
        out = []
        for scale in range(3):
            x = images if scale == 0 else F.interpolate(images, size=(size // 2**scale, size // 2**scale))
            out.append(self.backbone(x, (self.layer,))[self.layer])
        return out

    def latents(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        z, logdet = self.flow(list(features))
        return list(z), logdet

    @staticmethod
    def nll(z: Sequence[torch.Tensor], logdet: torch.Tensor) -> torch.Tensor:
        """CS-Flow's loss: batch mean of (0.5 * sum z^2 - log|det J|), divided by the latent dimension."""
        flat = torch.cat([zi.flatten(1) for zi in z], dim=1)
        return torch.mean(0.5 * flat.pow(2).sum(1) - logdet) / flat.shape[1]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, _ = self.latents(self.features(images))
        scores = torch.cat([zi.flatten(1) for zi in z], dim=1).pow(2).mean(1) / 2
        maps = torch.ones(images.shape[0], 1, *images.shape[-2:], device=images.device)
        for zi in z:
            maps = maps * F.interpolate(zi.pow(2).mean(dim=1, keepdim=True), size=tuple(images.shape[-2:]),
                                        mode="bilinear", align_corners=False)
        return scores, maps[:, 0]


class EfficientNetB5Features(nn.Module):
    """torchvision's EfficientNet-B5 trunk up to the end of its 6th MBConv stage (``block35``: 304 channels,
    stride 32), the feature CS-Flow uses; ``forward(x, layers)`` returns ``{"block35": map}``."""

    layer_names = ("block35",)

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import efficientnet_b5

        self.features = efficientnet_b5(weights=None).features[:7]

    def forward(self, x: torch.Tensor, layers: Sequence[str] = ("block35",)) -> dict[str, torch.Tensor]:
        return {"block35": self.features(x)}
