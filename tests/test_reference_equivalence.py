"""Our networks against small re-creations of the reference computations, written out with plain torch ops.

Each reference below follows the original code's arithmetic (marco-rudolph/differnet ``freia_funcs.py``,
nelson1425/EfficientAD ``common.py`` PDN layer lists, DonaldRR/SimpleNet ``common.py`` patch aggregation),
on tiny shapes with fixed seeds, so a refactor cannot drift silently.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.differnet.flow import differnet_flow
from methods.efficientad.distill import load_teacher
from methods.efficientad.pdn import pdn_medium, pdn_small
from methods.simplenet.model import PatchEmbedder

ATOL = 1e-6


# -- DifferNet's flow --------------------------------------------------------------------------------
def _reference_flow(x: torch.Tensor, flow: nn.Module, dims: int, blocks: int, clamp: float):
    """DifferNet's nf_head: per block a numpy-seeded permutation, then the GLOW coupling with soft clamp
    e(s) = exp(clamp * 0.636 * atan(s / clamp)), log-det = sum of both log e(s), hard clamp to +-1e6."""
    couplings = [m for m in flow.module_list if hasattr(m, "subnet1")]
    log_det = torch.zeros(x.shape[0])
    half1 = dims // 2
    half2 = dims - half1
    for k in range(blocks):
        np.random.seed(k)
        x = x[:, torch.from_numpy(np.random.permutation(dims))]
        s1_net, s2_net = couplings[k].subnet1, couplings[k].subnet2  # s1(y1) -> x2 side, s2(x2) -> x1 side
        x1, x2 = x[:, :half1], x[:, half1:]
        r2 = s2_net(x2)
        log_e2 = clamp * 0.636 * torch.atan(r2[:, :half1] / clamp)
        y1 = torch.exp(log_e2) * x1 + r2[:, half1:]
        r1 = s1_net(y1)
        log_e1 = clamp * 0.636 * torch.atan(r1[:, :half2] / clamp)
        y2 = torch.exp(log_e1) * x2 + r1[:, half2:]
        x = torch.clamp(torch.cat([y1, y2], dim=1), -1e6, 1e6)
        log_det = log_det + log_e1.sum(dim=1) + log_e2.sum(dim=1)
    return x, log_det


def test_flow_matches_differnets_glow_coupling_with_soft_clamp() -> None:
    torch.manual_seed(0)
    dims, blocks, clamp = 12, 3, 3.0
    flow = differnet_flow(dims, blocks, width=16, clamp=clamp)
    for p in flow.parameters():  # larger weights than the init, so the soft clamp is exercised
        if p.requires_grad:
            p.data.normal_(0, 0.3)
    x = torch.randn(5, dims)
    z, log_det = flow(x)
    z_ref, log_det_ref = _reference_flow(x, flow, dims, blocks, clamp)
    assert torch.allclose(z, z_ref, atol=ATOL, rtol=0)
    assert torch.allclose(log_det, log_det_ref, atol=1e-5, rtol=0)


# -- EfficientAD's PDNs ------------------------------------------------------------------------------
def _nelson_pdn_small(out_channels: int) -> nn.Sequential:
    """The reference PDN-small layer list (``get_pdn_small``, padding off)."""
    return nn.Sequential(
        nn.Conv2d(3, 128, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
        nn.Conv2d(128, 256, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
        nn.Conv2d(256, 256, 3), nn.ReLU(inplace=True), nn.Conv2d(256, out_channels, 4))


def _nelson_pdn_medium(out_channels: int, width: int) -> nn.Sequential:
    """The reference PDN-medium layer list (``get_pdn_medium``, padding off), with its 512 as ``width``."""
    return nn.Sequential(
        nn.Conv2d(3, width // 2, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
        nn.Conv2d(width // 2, width, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
        nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Conv2d(width, width, 3), nn.ReLU(inplace=True),
        nn.Conv2d(width, out_channels, 4), nn.ReLU(inplace=True), nn.Conv2d(out_channels, out_channels, 1))


def test_nelson_teacher_small_file_loads_and_computes_the_reference_pdn(tmp_path) -> None:
    torch.manual_seed(0)
    reference = _nelson_pdn_small(384).eval()
    path = tmp_path / "teacher_small.pth"
    torch.save(reference.state_dict(), path)  # keys 0.weight ... 8.bias, as the published file
    assert sorted(reference.state_dict()) == sorted(f"{i}.{k}" for i in (0, 3, 6, 8) for k in ("weight", "bias"))
    teacher, config = load_teacher(path)
    assert (teacher.size, teacher.out_channels, teacher.width) == ("small", 384, 256)
    assert config["backbone"] == "wide_resnet101_2" and "nelson1425" in config["source"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(teacher.eval()(x), reference(x), atol=ATOL, rtol=0)
    assert sum(p.numel() for p in pdn_small(384).parameters()) == 2_694_144


def test_medium_pdn_and_anomalib_teacher_file_match_the_reference(tmp_path) -> None:
    torch.manual_seed(1)
    reference = _nelson_pdn_medium(24, width=32).eval()
    renamed = {f"conv{i + 1}.{kind}": reference.state_dict()[f"{layer}.{kind}"]
               for i, layer in enumerate((0, 3, 6, 8, 10, 12)) for kind in ("weight", "bias")}
    path = tmp_path / "pretrained_teacher_medium.pth"
    torch.save(renamed, path)  # anomalib's key names
    teacher, config = load_teacher(path)
    assert (teacher.size, teacher.out_channels, teacher.width) == ("medium", 24, 32)
    assert config["source"].startswith("anomalib")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(teacher.eval()(x), reference(x), atol=ATOL, rtol=0)
    with torch.device("meta"):
        assert sum(p.numel() for p in pdn_medium(768).parameters()) == 11_615_488  # fact sheet: EfficientAD-M student


# -- SimpleNet's patch features ----------------------------------------------------------------------
def _reference_simplenet_features(features: list[torch.Tensor], patch: int, pretrain_dim: int, target_dim: int):
    """PatchMaker.patchify -> bilinear alignment of each (c, p, p) slice to the first grid -> MeanMapper per
    layer (adaptive_avg_pool1d of the flattened patch) -> Aggregator (pool of the stacked layers)."""
    padding = (patch - 1) // 2
    patched, shapes = [], []
    for f in features:
        unfolded = F.unfold(f, kernel_size=patch, stride=1, padding=padding, dilation=1)
        h, w = f.shape[-2:]
        unfolded = unfolded.reshape(f.shape[0], f.shape[1], patch, patch, -1).permute(0, 4, 1, 2, 3)
        patched.append(unfolded)
        shapes.append((h, w))
    ref = shapes[0]
    for i in range(1, len(patched)):
        x = patched[i]
        x = x.reshape(x.shape[0], shapes[i][0], shapes[i][1], *x.shape[2:])
        x = x.permute(0, -3, -2, -1, 1, 2)
        base = x.shape
        x = x.reshape(-1, *x.shape[-2:])
        x = F.interpolate(x.unsqueeze(1), size=ref, mode="bilinear", align_corners=False).squeeze(1)
        x = x.reshape(*base[:-2], ref[0], ref[1]).permute(0, -2, -1, 1, 2, 3)
        patched[i] = x.reshape(len(x), -1, *x.shape[-3:])
    flat = [x.reshape(-1, *x.shape[-3:]) for x in patched]
    mapped = torch.stack([F.adaptive_avg_pool1d(x.reshape(len(x), 1, -1), pretrain_dim).squeeze(1) for x in flat], dim=1)
    return F.adaptive_avg_pool1d(mapped.reshape(len(mapped), 1, -1), target_dim).reshape(len(mapped), -1)


def test_simplenet_patch_embedding_matches_the_reference_aggregation() -> None:
    torch.manual_seed(0)
    features = [torch.randn(2, 8, 6, 6), torch.randn(2, 16, 3, 3)]
    ours, grid = PatchEmbedder(pretrain_dim=20, target_dim=12, patch_size=3)(features)
    reference = _reference_simplenet_features(features, 3, 20, 12)
    assert grid == (6, 6) and ours.shape == reference.shape == (2 * 36, 12)
    assert torch.allclose(ours, reference, atol=ATOL, rtol=0)
