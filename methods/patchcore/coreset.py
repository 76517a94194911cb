"""Greedy k-center coreset selection and chunked nearest-neighbour search (pure tensor functions)."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm


def sparse_random_projection(dim_in: int, dim_out: int, generator: torch.Generator) -> torch.Tensor:
    """A (dim_in, dim_out) Achlioptas/Li sparse projection: +-sqrt(s/k) with prob 1/(2s) each, else 0 (s = sqrt(dim_in))."""
    density = 1.0 / math.sqrt(dim_in)
    u = torch.rand(dim_in, dim_out, generator=generator)
    signs = torch.where(torch.rand(dim_in, dim_out, generator=generator) < 0.5, -1.0, 1.0)
    return torch.where(u < density, signs, torch.zeros(())) / math.sqrt(density * dim_out)


@torch.no_grad()
def greedy_coreset(features: torch.Tensor, n_select: int, *, projection_dim: int = 128, seed: int = 0,
                   progress: bool = False) -> torch.Tensor:
    """Indices of ``n_select`` rows chosen by greedy k-center (farthest-point) selection.

    Selection runs on a sparse random projection of ``features`` to ``projection_dim`` dimensions
    (0 or >= the feature dimension: no projection), starting from a random row. Each step adds the
    row farthest from the chosen set and updates every row's distance to the set with one
    matrix-vector product, so memory stays O(N).
    """
    n = features.shape[0]
    if not 1 <= n_select <= n:
        raise ValueError(f"cannot select {n_select} of {n} features")
    generator = torch.Generator().manual_seed(seed)
    x = features.float()
    if 0 < projection_dim < x.shape[1]:
        x = x @ sparse_random_projection(x.shape[1], projection_dim, generator).to(x.device)
    x = x.contiguous()
    sq = (x * x).sum(dim=1)
    chosen = torch.empty(n_select, dtype=torch.long)
    current = int(torch.randint(n, (1,), generator=generator))
    min_d2 = torch.full((n,), float("inf"), device=x.device)
    # One preallocated buffer and in-place updates: fresh N-sized temporaries each step cost more
    # (allocation, page faults, extra passes) than the matrix-vector product itself. The arithmetic
    # is the same as ``(sq - 2 * (x @ c) + sq[c]).clamp_min(0)``, operation for operation, so the
    # selection is identical to the straightforward loop.
    d2 = torch.empty_like(min_d2)
    for i in tqdm(range(n_select), desc="patchcore coreset", unit="pt", disable=not progress, leave=False,
                  mininterval=1.0):
        chosen[i] = current
        torch.mv(x, x[current], out=d2)
        d2.mul_(-2.0).add_(sq).add_(sq[current]).clamp_min_(0.0)
        torch.minimum(min_d2, d2, out=min_d2)
        min_d2[current] = -1.0  # never re-pick a chosen row (duplicates in the data have distance 0, not -1)
        current = int(torch.argmax(min_d2))
    return chosen.to(features.device)


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int = 1,
                       max_elements: int = 2**24) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 distances (Q, k) and indices (Q, k) of each query's ``k`` nearest bank rows, ascending.

    Queries go through ``torch.cdist`` in chunks so the distance block never exceeds ``max_elements``.
    """
    if bank.shape[0] == 0:
        raise ValueError("empty memory bank")
    k = min(k, bank.shape[0])
    chunk = max(1, max_elements // bank.shape[0])
    dists, idxs = [], []
    for start in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[start:start + chunk], bank)
        values, indices = torch.topk(d, k, dim=1, largest=False)
        dists.append(values)
        idxs.append(indices)
    if not dists:
        return queries.new_empty(0, k), torch.empty(0, k, dtype=torch.long, device=queries.device)
    return torch.cat(dists), torch.cat(idxs)


def coverage_radius(features: torch.Tensor, selected: torch.Tensor) -> float:
    """The largest distance from any row to its nearest selected row (what k-center minimises)."""
    d, _ = nearest_neighbours(features, features[selected])
    return float(d.max())
