"""RD++'s torch modules: multi-projection layer, OCBE bottleneck, reverse (decoder) ResNet-18, losses, noise.

Training logic lives in :mod:`methods.rdpp.detector`; this module holds networks and pure tensor
functions. Shapes are for ResNet-18 (layers 1-3: 64/128/256 channels at strides 4/8/16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from methods.backbones.resnet import ResNet18Features
from methods.simplenet.model import gaussian_blur

ENCODER_LAYERS = ("layer1", "layer2", "layer3")
ENCODER_CHANNELS = (64, 128, 256)


# -- networks ------------------------------------------------------------------------------------
class ProjectionLayer(nn.Module):
    """Four 3x3 convs C -> C/2 -> C/4 -> C/2 -> C, each followed by InstanceNorm and LeakyReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        widths = (channels, channels // 2, channels // 4, channels // 2, channels)
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.LeakyReLU()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MultiProjectionLayer(nn.Module):
    """One :class:`ProjectionLayer` per encoder level."""

    def __init__(self, channels: Sequence[int] = ENCODER_CHANNELS) -> None:
        super().__init__()
        self.levels = nn.ModuleList(ProjectionLayer(c) for c in channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [proj(f) for proj, f in zip(self.levels, features)]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class EncoderBlock(nn.Module):
    """ResNet BasicBlock (conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU) used inside the OCBE."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class OCBE(nn.Module):
    """One-class bottleneck embedding: fuse the three (projected) levels at stride 16, then 2 BasicBlocks to stride 32.

    level 1 -> two stride-2 conv3x3+BN+ReLU (64 -> 128 -> 256); level 2 -> one (128 -> 256); level 3 as
    is; concatenation (768 ch) -> BasicBlock(768 -> 512, stride 2) -> BasicBlock(512 -> 512).
    """

    def __init__(self, channels: Sequence[int] = ENCODER_CHANNELS, out_channels: int = 512, blocks: int = 2) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = nn.Sequential(_conv_bn_relu(c1, c2), _conv_bn_relu(c2, c3))
        self.down2 = _conv_bn_relu(c2, c3)
        stages = [EncoderBlock(3 * c3, out_channels, stride=2)]
        stages += [EncoderBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        self.fuse = nn.Sequential(*stages)
        _kaiming(self)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = features
        return self.fuse(torch.cat([self.down1(f1), self.down2(f2), f3], dim=1)).contiguous()


class DecoderBlock(nn.Module):
    """Reverse BasicBlock: (2x2 transposed conv, stride 2 | 3x3 conv)-BN-ReLU-conv3x3-BN + shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = (nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False) if stride == 2
                      else nn.Conv2d(cin, cout, 3, padding=1, bias=False))
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class ReverseResNet18(nn.Module):
    """The student: three up-sampling stages of 2 reverse BasicBlocks, 512 -> 256 -> 128 -> 64 channels.

    Returns the outputs matched to encoder layers 1, 2, 3 (in that order).
    """

    def __init__(self, in_channels: int = 512, channels: Sequence[int] = ENCODER_CHANNELS, blocks: int = 2) -> None:
        super().__init__()
        stages, cin = [], in_channels
        for cout in reversed(channels):
            stages.append(nn.Sequential(DecoderBlock(cin, cout, stride=2),
                                        *[DecoderBlock(cout, cout) for _ in range(blocks - 1)]))
            cin = cout
        self.stages = nn.ModuleList(stages)
        _kaiming(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[::-1]


class _Identity(nn.Module):
    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(features)


def _kaiming(module: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs and unit BatchNorms, as the reference; transposed convs keep
    PyTorch's default init there (``isinstance(m, nn.Conv2d)`` is false for them), and here too."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class RDPPModel(nn.Module):
    """Frozen (SE-/CBAM-)ResNet-18 teacher -> projection -> OCBE -> reverse student; cosine-distance maps."""

    def __init__(self, encoder: ResNet18Features, map_sigma: float = 4.0, projection: bool = True) -> None:
        super().__init__()
        self.encoder = encoder.eval()
        for name, p in encoder.named_parameters():
            p.requires_grad_(".attention." in name)
        # projection=False gives plain Reverse Distillation (RD4AD): the OCBE sees the teacher's features
        self.projection = MultiProjectionLayer(ENCODER_CHANNELS) if projection else _Identity()
        self.bottleneck = OCBE(ENCODER_CHANNELS)
        self.decoder = ReverseResNet18(512, ENCODER_CHANNELS)
        self.map_sigma = map_sigma

    def train(self, mode: bool = True) -> RDPPModel:
        """The teacher (and its BatchNorms) always stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.encoder(images, ENCODER_LAYERS)
        return [feats[name] for name in ENCODER_LAYERS]

    def student(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Projected features and the decoder's reconstruction of the teacher's levels."""
        projected = self.projection(features)
        return projected, self.decoder(self.bottleneck(projected))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) = max of the maps, and anomaly maps (B, H_img, W_img)."""
        teacher = self.encode(images)
        _, student = self.student(teacher)
        maps = anomaly_map(teacher, student, tuple(images.shape[-2:]))
        maps = gaussian_blur(maps, self.map_sigma)
        return maps.flatten(1).amax(1), maps


# -- maps and losses -------------------------------------------------------------------------------
def anomaly_map(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Σ over levels of (1 - channel cosine similarity), each upsampled bilinearly (align_corners) to ``size``."""
    total = None
    for t, s in zip(teacher, student):
        level = 1.0 - F.cosine_similarity(t, s, dim=1)
        level = F.interpolate(level[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
        total = level if total is None else total + level
    assert total is not None
    return total


def distillation_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ over levels of the batch mean of 1 - cos(flattened teacher map, flattened student map)."""
    return sum(torch.mean(1.0 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1))
               for t, s in zip(teacher, student))


def sinkhorn_divergence(x: torch.Tensor, y: torch.Tensor, *, blur: float = 0.05, scaling: float = 0.95,
                        diameter: float = 1e7) -> torch.Tensor:
    """Debiased entropic OT (Sinkhorn divergence) between point clouds x (N, D) and y (M, D), uniform weights.

    Cost |x - y|²/2, ε annealed geometrically from ``diameter``² to ``blur``² by ``scaling``² per step
    with symmetric log-domain updates; the loop runs without gradients and one last extrapolation
    step carries them (the envelope theorem), as GeomLoss' ``SamplesLoss("sinkhorn", p=2)`` does.
    """
    costs = [0.5 * torch.cdist(u, v).square()[None] for u, v in ((x, y), (y, x), (x, x), (y, y))]
    return sinkhorn_from_costs(*costs, blur=blur, scaling=scaling, diameter=diameter)[0]


def sinkhorn_from_costs(c_xy: torch.Tensor, c_yx: torch.Tensor, c_xx: torch.Tensor, c_yy: torch.Tensor, *,
                        blur: float = 0.05, scaling: float = 0.95, diameter: float = 1e7) -> torch.Tensor:
    """Sinkhorn divergences (L,) of L problems at once, from their cost matrices (L, N, M), (L, M, N),
    (L, N, N), (L, M, M) (see :func:`sinkhorn_divergence`)."""
    n, m = c_xy.shape[-2], c_xy.shape[-1]
    a_log = torch.full((n,), -math.log(n), dtype=c_xy.dtype, device=c_xy.device)
    b_log = torch.full((m,), -math.log(m), dtype=c_xy.dtype, device=c_xy.device)

    def softmin(eps: float, c: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        h = h if h.dim() > 1 else h[None]
        return -eps * torch.logsumexp(h[:, None, :] - c / eps, dim=-1)

    schedule = [diameter ** 2]
    schedule += [math.exp(e) for e in torch.arange(2 * math.log(diameter), 2 * math.log(blur),
                                                   2 * math.log(scaling)).tolist()]
    schedule.append(blur ** 2)
    with torch.no_grad():
        cxy, cyx, cxx, cyy = c_xy.detach(), c_yx.detach(), c_xx.detach(), c_yy.detach()
        eps = schedule[0]
        g_ab, f_ba = softmin(eps, cyx, a_log), softmin(eps, cxy, b_log)
        f_aa, g_bb = softmin(eps, cxx, a_log), softmin(eps, cyy, b_log)
        for eps in schedule:
            ft_ba, gt_ab = softmin(eps, cxy, b_log + g_ab / eps), softmin(eps, cyx, a_log + f_ba / eps)
            ft_aa, gt_bb = softmin(eps, cxx, a_log + f_aa / eps), softmin(eps, cyy, b_log + g_bb / eps)
            f_ba, g_ab = 0.5 * (f_ba + ft_ba), 0.5 * (g_ab + gt_ab)
            f_aa, g_bb = 0.5 * (f_aa + ft_aa), 0.5 * (g_bb + gt_bb)
    eps = schedule[-1]
    f_ba, g_ab = softmin(eps, c_xy, b_log + g_ab / eps), softmin(eps, c_yx, a_log + f_ba / eps)
    f_aa, g_bb = softmin(eps, c_xx, a_log + f_aa / eps), softmin(eps, c_yy, b_log + g_bb / eps)
    return ((f_ba - f_aa) * a_log.exp()).sum(-1) + ((g_ab - g_bb) * b_log.exp()).sum(-1)


def projection_loss(noisy_teacher: Sequence[torch.Tensor], projected_noisy: Sequence[torch.Tensor],
                    projected_clean: Sequence[torch.Tensor], *, contrast_margin: float = 0.5,
                    weights: tuple[float, float, float] = (1.0, 0.01, 0.1)) -> dict[str, torch.Tensor]:
    """RD++'s self-supervised projection loss and its parts.

    - SSOT: Sinkhorn divergence between the batch's softmaxed, flattened clean projections and the
      same batch shuffled (compactness of normal features);
    - reconstruction: mean 1 - cos(projection(noisy), projection(clean)) over positions;
    - contrast: mean max(0, cos(noisy teacher feature, clean projection) - margin) per image
      (CosineEmbeddingLoss with target -1).
    Total = (w_ssot·SSOT + w_recon·recon + w_contrast·contrast) / Σw.
    """
    batch = projected_clean[0].shape[0]
    order = torch.randperm(batch)
    recon = contrast = projected_clean[0].new_zeros(())
    costs: list[list[torch.Tensor]] = [[], [], [], []]
    for noisy, proj_noisy, proj_clean in zip(noisy_teacher, projected_noisy, projected_clean):
        x = torch.softmax(proj_clean.flatten(1), dim=-1)
        y = x[order.to(x.device)]
        for bucket, (u, v) in zip(costs, ((x, y), (y, x), (x, x), (y, y))):
            bucket.append(0.5 * torch.cdist(u, v).square())
        recon = recon + torch.mean(1.0 - F.cosine_similarity(proj_noisy, proj_clean, dim=1))
        cos = F.cosine_similarity(noisy.flatten(1), proj_clean.flatten(1), dim=1)
        contrast = contrast + torch.clamp(cos - contrast_margin, min=0).mean()
    ssot = sinkhorn_from_costs(*(torch.stack(bucket) for bucket in costs)).sum()  # the levels in one loop
    w_ssot, w_recon, w_contrast = weights
    total = (w_ssot * ssot + w_recon * recon + w_contrast * contrast) / (w_ssot + w_recon + w_contrast)
    return {"proj": total, "ssot": ssot.detach(), "recon": recon.detach(), "contrast": contrast.detach()}


# -- pseudo-anomalies ------------------------------------------------------------------------------
_GRAD3 = torch.tensor([[1, 1, 0], [-1, 1, 0], [1, -1, 0], [-1, -1, 0], [1, 0, 1], [-1, 0, 1], [1, 0, -1], [-1, 0, -1],
                       [0, 1, 1], [0, -1, 1], [0, 1, -1], [0, -1, -1]], dtype=torch.float64)


def simplex_noise3(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """3-D simplex noise (Gustavson's formulation) at points (x, y, z), values in about [-1, 1].

    ``perm`` is a permutation of 0..255 repeated twice (512 entries); it is the noise's seed.
    """
    f3, g3 = 1.0 / 3.0, 1.0 / 6.0
    s = (x + y + z) * f3
    i, j, k = torch.floor(x + s), torch.floor(y + s), torch.floor(z + s)
    t = (i + j + k) * g3
    p0 = torch.stack([x - (i - t), y - (j - t), z - (k - t)], dim=-1)
    # which of the six tetrahedra of the skewed cube holds the point: the order of x0, y0, z0
    ge = [p0[..., 0] >= p0[..., 1], p0[..., 1] >= p0[..., 2], p0[..., 0] >= p0[..., 2]]
    xy, yz, xz = (g.to(p0.dtype) for g in ge)
    first = torch.stack([xy * xz, (1 - xy) * yz, (1 - xz) * (1 - yz)], dim=-1)  # the largest coordinate
    second = torch.stack([torch.clamp(xy + xz, max=1), torch.clamp((1 - xy) + yz, max=1),
                          torch.clamp((1 - xz) + (1 - yz), max=1)], dim=-1)  # the two largest
    offsets = [torch.zeros_like(p0), first, second, torch.ones_like(p0)]
    base = torch.stack([i, j, k], dim=-1).long() & 255
    grad = _GRAD3.to(p0)
    total = torch.zeros_like(x)
    for n, off in enumerate(offsets):
        corner = p0 - off + n * g3
        idx = base + off.long()
        gi = perm[idx[..., 0] + perm[idx[..., 1] + perm[idx[..., 2]]]] % 12
        falloff = torch.clamp(0.6 - (corner * corner).sum(-1), min=0)
        total = total + falloff ** 4 * (grad[gi] * corner).sum(-1)
    return 32.0 * total


def simplex_octaves(shape: tuple[int, int, int], perm: torch.Tensor, octaves: int = 6, persistence: float = 0.6,
                    frequency: float = 32.0) -> torch.Tensor:
    """Fractal simplex noise of ``shape`` = (depth, height, width): octave o samples at coordinates
    / (frequency / 2^o) with amplitude persistence^o (the reference's ``rand_3d_octaves``)."""
    d, h, w = shape
    z, y, x = torch.meshgrid(torch.arange(d, dtype=torch.float64), torch.arange(h, dtype=torch.float64),
                             torch.arange(w, dtype=torch.float64), indexing="ij")
    noise = torch.zeros(shape, dtype=torch.float64)
    amplitude = 1.0
    for _ in range(octaves):
        noise += amplitude * simplex_noise3(x / frequency, y / frequency, z / frequency, perm)
        frequency /= 2.0
        amplitude *= persistence
    return noise.float()


def noise_permutation(seed: int) -> torch.Tensor:
    """The 512-entry permutation table that seeds :func:`simplex_noise3`."""
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(seed))
    return torch.cat([perm, perm])
