"""CFLOW-AD's torch model: frozen backbone stages, one conditional FrEIA flow per stage over feature fibers.

Training logic (fiber sampling, learning-rate schedule) lives in :mod:`methods.cflow.detector`.
Each stage's feature vectors ("fibers", C-d, one per position) are mapped to a Gaussian by a flow of
``coupling_blocks`` ``AllInOneBlock`` s conditioned on a 2-D sin/cos positional encoding of the
position (``condition_dims``-d). The subnet is Linear(d -> 2d) -> ReLU -> Linear(2d -> out), the
affine clamp 1.9, global affine SOFTPLUS, soft (random orthogonal) permutations, as in the
reference code (``gudovskiy/cflow-ad``, ``model.py``/``train.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from FrEIA.framework import SequenceINN
from FrEIA.modules import AllInOneBlock
from torch import nn

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def positional_encoding_2d(dims: int, height: int, width: int) -> torch.Tensor:
    """(dims, H, W) sin/cos encoding: the first half of the channels encodes x, the second half y."""
    if dims % 4:
        raise ValueError(f"positional encoding needs a multiple of 4 dimensions, got {dims}")
    half = dims // 2
    freq = torch.exp(torch.arange(0.0, half, 2) * -(math.log(10000.0) / half))  # (half/2,)
    x = torch.arange(float(width))[:, None] * freq  # (W, half/2)
    y = torch.arange(float(height))[:, None] * freq  # (H, half/2)
    pe = torch.zeros(dims, height, width)
    pe[0:half:2] = torch.sin(x).T[:, None, :].expand(-1, height, -1)
    pe[1:half:2] = torch.cos(x).T[:, None, :].expand(-1, height, -1)
    pe[half::2] = torch.sin(y).T[:, :, None].expand(-1, -1, width)
    pe[half + 1::2] = torch.cos(y).T[:, :, None].expand(-1, -1, width)
    return pe


def fc_subnet(channels_in: int, channels_out: int) -> nn.Module:
    """CFLOW's ``subnet_fc``: Linear(d -> 2d) -> ReLU -> Linear(2d -> out)."""
    return nn.Sequential(nn.Linear(channels_in, 2 * channels_in), nn.ReLU(), nn.Linear(2 * channels_in, channels_out))


def random_rotation(n: int) -> torch.Tensor:
    """A uniformly (Haar) distributed rotation in SO(n), from torch's RNG: QR of a Gaussian matrix."""
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def cflow_head(dims: int, condition_dims: int = 128, coupling_blocks: int = 8, clamp: float = 1.9) -> SequenceINN:
    """A conditional flow on ``dims``-d fibers; ``flow(x, c=[cond])`` returns ``(z, log|det J|)``.

    The reference's ``permute_soft=True`` (a random rotation before each block, from scipy's
    ``special_ortho_group``) takes minutes at WRN-50-2's 2048 channels; the same Haar-distributed
    rotation is drawn here by a QR decomposition in torch (seeded by ``Detector.fit``) and placed in
    the block's fixed permutation matrix. The matrices are saved with the state dict.
    """
    flow = SequenceINN(dims)
    for _ in range(coupling_blocks):
        flow.append(AllInOneBlock, cond=0, cond_shape=(condition_dims,), subnet_constructor=fc_subnet,
                    affine_clamping=clamp, global_affine_type="SOFTPLUS", permute_soft=False)
    with torch.no_grad():
        for block in flow.module_list:
            w = random_rotation(dims)
            block.w_perm.copy_(w.view_as(block.w_perm))
            block.w_perm_inv.copy_(w.T.contiguous().view_as(block.w_perm_inv))
    return flow


class CFlowModel(nn.Module):
    """Frozen backbone -> per-stage conditional flows; ``forward`` gives image scores and maps.

    ``logp_max`` holds, per stage, the largest per-dimension log-likelihood seen on the training set
    (set after training); maps are ``sum over stages of 1 - exp(log p / C - logp_max)``.
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[str], channels: Sequence[int], condition_dims: int = 128,
                 coupling_blocks: int = 8, clamp: float = 1.9) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.layers = tuple(layers)
        self.channels = [int(c) for c in channels]
        self.condition_dims = condition_dims
        self.decoders = nn.ModuleList(cflow_head(c, condition_dims, coupling_blocks, clamp) for c in self.channels)
        self.register_buffer("logp_max", torch.zeros(len(self.layers)))

    def train(self, mode: bool = True) -> CFlowModel:
        """Train mode for the flows only; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(images, self.layers)
        return [feats[name] for name in self.layers]

    def condition(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Positional encodings of every position, (H*W, condition_dims), row-major like the fibers."""
        return positional_encoding_2d(self.condition_dims, height, width).to(device).flatten(1).T

    def log_prob(self, index: int, fibers: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Per-dimension log-likelihood log p(x | c) / C of fibers (N, C) under stage ``index``'s flow."""
        z, logdet = self.decoders[index](fibers, c=[cond])
        dims = fibers.shape[1]
        return (-dims * LOG_SQRT_2PI - 0.5 * z.pow(2).sum(1) + logdet) / dims

    def log_prob_maps(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-dimension log-likelihood of every position of every stage: list of (B, H, W)."""
        maps = []
        for index, feat in enumerate(features):
            b, c, h, w = feat.shape
            fibers = feat.permute(0, 2, 3, 1).reshape(-1, c)
            cond = self.condition(h, w, feat.device).repeat(b, 1)
            maps.append(self.log_prob(index, fibers, cond).reshape(b, h, w))
        return maps

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) = max of the maps (B, H_img, W_img)."""
        maps = anomaly_map(self.log_prob_maps(self.features(images)), self.logp_max, images.shape[-2:])
        return maps.flatten(1).amax(dim=1), maps


def anomaly_map(log_probs: Sequence[torch.Tensor], logp_max: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Sum over stages of ``1 - exp(log p - logp_max)``, each upsampled bilinearly (align_corners=True)."""
    total = None
    for lp, top in zip(log_probs, logp_max):
        prob = torch.exp(lp - top)[:, None]
        up = F.interpolate(prob, size=tuple(size), mode="bilinear", align_corners=True)[:, 0]
        total = up if total is None else total + up
    assert total is not None
    return len(log_probs) - total
