"""PatchCore's screened greedy coreset selects exactly what the plain fp32 loop selects."""

from __future__ import annotations

import math

import pytest
import torch

from methods.patchcore.coreset import greedy_coreset, sparse_random_projection


@torch.no_grad()
def plain_loop(features: torch.Tensor, n_select: int, projection_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """The straightforward fp32 farthest-point loop (benchmarks/coreset.py's peer)."""
    generator = torch.Generator().manual_seed(seed)
    x = features.float()
    if 0 < projection_dim < x.shape[1]:
        x = x @ sparse_random_projection(x.shape[1], projection_dim, generator)
    sq = (x * x).sum(dim=1)
    chosen = torch.empty(n_select, dtype=torch.long)
    current = int(torch.randint(x.shape[0], (1,), generator=generator))
    min_d2 = torch.full((x.shape[0],), math.inf)
    for i in range(n_select):
        chosen[i] = current
        min_d2 = torch.minimum(min_d2, (sq - 2.0 * (x @ x[current]) + sq[current]).clamp_min_(0.0))
        min_d2[current] = -1.0
        current = int(torch.argmax(min_d2))
    return chosen


@pytest.mark.parametrize("n, dim, k, scale", [
    (6_007, 384, 150, 1.0),    # projected, odd row count (a BLAS tail), many screened steps
    (4_096, 64, 150, 1e3),     # large magnitudes: the fp16 copy is rescaled by a power of two
    (400, 32, 399, 1e-3),  # tiny magnitudes (fp16 subnormals) and selecting almost every row
])
def test_screened_selection_is_identical_to_the_plain_loop(n, dim, k, scale) -> None:
    features = torch.randn(n, dim, generator=torch.Generator().manual_seed(n)) * scale
    expected = plain_loop(features, k)
    assert torch.equal(greedy_coreset(features, k), expected)
    assert torch.equal(greedy_coreset(features, k, screen=False), expected)


def test_clustered_data_with_duplicates_is_identical() -> None:
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(20, 128, generator=gen) * 5
    features = centres[torch.randint(20, (5_000,), generator=gen)] + 0.01 * torch.randn(5_000, 128, generator=gen)
    features[100:200] = features[0]  # exact duplicates: distance 0, never re-picked
    assert torch.equal(greedy_coreset(features, 250), plain_loop(features, 250))
    assert len(set(greedy_coreset(features, 250).tolist())) == 250


def test_fp16_products_accumulate_in_fp32_as_the_screen_margin_assumes() -> None:
    """The screen's margin covers fp16 inputs and roundings but not fp16 accumulation: 2048 + 64 x 1
    would stay 2048 with an fp16 accumulator; the bound's addmv must give 2112."""
    rows = torch.cat([torch.tensor([[2048.0]]), torch.ones(1, 64)], dim=1).half()
    assert torch.addmv(torch.zeros(1).half(), rows, torch.ones(65).half()).item() == 2112.0
