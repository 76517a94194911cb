"""EfficientAD-S as one torch module: frozen teacher, student, autoencoder, and the map arithmetic.

Normalisation statistics (teacher channel mean/std, map quantiles) are buffers, so they travel with
the state dict. Training logic (optimiser, data, schedule) lives in :mod:`methods.efficientad.detector`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.efficientad.autoencoder import AutoEncoder
from methods.efficientad.pdn import DEFAULT_WIDTH, PDN, build_pdn

TEACHER_CHANNELS = 384
MAP_PADDING = 4


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile of all elements (like ``torch.quantile``, without its 2**24 size limit)."""
    flat = x.reshape(-1)
    pos = q * (flat.numel() - 1)
    lo, hi = int(pos), min(int(pos) + 1, flat.numel() - 1)
    v_lo = flat.kthvalue(lo + 1).values
    v_hi = flat.kthvalue(hi + 1).values if hi != lo else v_lo
    return v_lo + (pos - lo) * (v_hi - v_lo)


class EfficientADModel(nn.Module):
    def __init__(self, image_size: int = 256, attention: str = "none", teacher: PDN | None = None,
                 channels: int = TEACHER_CHANNELS, width: int | None = None, size: str = "small",
                 attention_kwargs: dict | None = None) -> None:
        super().__init__()
        self.image_size = image_size
        width = DEFAULT_WIDTH[size] if not width else width
        self.teacher = teacher if teacher is not None else build_pdn(size, channels, width=width)
        if (self.teacher.out_channels, self.teacher.width, self.teacher.size) != (channels, width, size):
            raise ValueError(f"teacher PDN-{self.teacher.size} has {self.teacher.out_channels} outputs / width "
                             f"{self.teacher.width}, expected PDN-{size} {channels} / {width}")
        self.teacher.requires_grad_(False)
        self.student = build_pdn(size, 2 * channels, attention=attention, width=width, attention_kwargs=attention_kwargs)
        self.autoencoder = AutoEncoder(channels, image_size)
        self.channels = channels
        self.register_buffer("teacher_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, channels, 1, 1))
        # map normalisation quantiles: [st_start, st_end, ae_start, ae_end]
        self.register_buffer("quantiles", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    def train(self, mode: bool = True) -> EfficientADModel:
        super().train(mode)
        self.teacher.eval()  # always frozen
        return self

    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self.teacher(images) - self.teacher_mean) / self.teacher_std

    # -- training -----------------------------------------------------------------------------------
    def loss(self, image_st: torch.Tensor, image_ae: torch.Tensor, penalty: torch.Tensor | None = None,
             hard_quantile: float = 0.999) -> dict[str, torch.Tensor]:
        """L_hard (+ L_penalty) + L_AE + L_STAE on one batch; ``image_ae`` is the augmented copy."""
        c = self.channels
        t_st = self.teacher_features(image_st)
        s_st = self.student(image_st)[:, :c]
        distance = (t_st - s_st) ** 2
        d_hard = quantile(distance.detach(), hard_quantile)
        loss_hard = distance[distance >= d_hard].mean()
        loss_st = loss_hard
        loss_penalty = torch.zeros((), device=image_st.device)
        if penalty is not None:
            loss_penalty = (self.student(penalty)[:, :c] ** 2).mean()
            loss_st = loss_st + loss_penalty
        ae = self.autoencoder(image_ae)
        t_ae = self.teacher_features(image_ae)
        s_ae = self.student(image_ae)[:, c:]
        loss_ae = ((t_ae - ae) ** 2).mean()
        loss_stae = ((ae - s_ae) ** 2).mean()
        total = loss_st + loss_ae + loss_stae
        return {"loss": total, "hard": loss_hard, "penalty": loss_penalty, "ae": loss_ae, "stae": loss_stae}

    # -- inference ----------------------------------------------------------------------------------
    def raw_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised ST and AE maps (B, h, w) at the PDN output resolution."""
        c = self.channels
        t = self.teacher_features(images)
        s = self.student(images)
        ae = self.autoencoder(images)
        map_st = ((t - s[:, :c]) ** 2).mean(dim=1)
        map_ae = ((ae - s[:, c:]) ** 2).mean(dim=1)
        return map_st, map_ae

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and combined maps (B, H, W) at the input resolution."""
        map_st, map_ae = self.raw_maps(images)
        q = self.quantiles
        map_st = 0.1 * (map_st - q[0]) / (q[1] - q[0])
        map_ae = 0.1 * (map_ae - q[2]) / (q[3] - q[2])
        combined = F.pad(0.5 * map_st + 0.5 * map_ae, (MAP_PADDING,) * 4)
        combined = F.interpolate(combined[:, None], size=tuple(images.shape[-2:]), mode="bilinear")[:, 0]
        return combined.flatten(1).amax(dim=1), combined
