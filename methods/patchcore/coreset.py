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


# Exact re-checks gather candidate rows into a matrix padded to a multiple of this many rows, so the
# BLAS matrix-vector kernel takes the same (non-tail) path for them as in the full product.
RECHECK_BLOCK = 64
# The fp16 bound under-states each squared distance by this fraction of (|x|^2 + |c|^2): twice the
# worst-case fp16 error of the bound (2^-8 of that sum; see _HalfScreen).
HALF_MARGIN = 2.0**-7
HALF_ABS = 2.0**-10  # absolute margin (scaled units) for fp16 subnormals


@torch.no_grad()
def greedy_coreset(features: torch.Tensor, n_select: int, *, projection_dim: int = 128, seed: int = 0,
                   progress: bool = False, screen: bool | None = None) -> torch.Tensor:
    """Indices of ``n_select`` rows chosen by greedy k-center (farthest-point) selection.

    Selection runs on a sparse random projection of ``features`` to ``projection_dim`` dimensions
    (0 or >= the feature dimension: no projection), starting from a random row. Each step adds the
    row farthest from the chosen set and updates every row's distance to the set, so memory stays O(N).

    ``screen`` (default: on for CPU tensors of at least 256 rows) halves the bytes each step reads: the
    distances are first bounded with an fp16 copy of the features, and only the rows whose bound says
    the minimum distance could change are recomputed exactly in fp32, with the arithmetic of the plain
    loop. Every other row's exact distance provably cannot lower its minimum, so the selection is
    identical to the plain fp32 loop.
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
    if screen is None:
        screen = x.device.type == "cpu" and n >= 4 * RECHECK_BLOCK
    screener = _HalfScreen(x, sq) if screen and n >= 2 * RECHECK_BLOCK else None
    if screener is not None and not screener.usable:
        screener = None
    # One preallocated buffer and in-place updates: fresh N-sized temporaries each step cost more
    # (allocation, page faults, extra passes) than the matrix-vector product itself. The arithmetic
    # is the same as ``(sq - 2 * (x @ c) + sq[c]).clamp_min(0)``, operation for operation, so the
    # selection is identical to the straightforward loop.
    d2 = torch.empty_like(min_d2)
    for i in tqdm(range(n_select), desc="patchcore coreset", unit="pt", disable=not progress, leave=False,
                  mininterval=1.0):
        chosen[i] = current
        if screener is None or i == 0 or not screener.update(min_d2, current):
            torch.mv(x, x[current], out=d2)
            d2.mul_(-2.0).add_(sq).add_(sq[current]).clamp_min_(0.0)
            torch.minimum(min_d2, d2, out=min_d2)
            if screener is not None:
                screener.refresh(min_d2)
        min_d2[current] = -1.0  # never re-pick a chosen row (duplicates in the data have distance 0, not -1)
        if screener is not None:
            screener.refresh(min_d2, slice(current, current + 1))
        current = int(torch.argmax(min_d2))
    return chosen.to(features.device)


class _HalfScreen:
    """fp16 lower bounds on squared distances, and the exact fp32 update of the rows they cannot rule out.

    One fp16 ``addmv`` per step gives ``s^2 * bound_i`` for every row: ``h_i + (s*x_i) . (-2*s*c)``,
    with ``h_i = s^2*|x_i|^2*(1-m)``, plus the scalar ``s^2*|c|^2*(1-m) - a``. The margin ``m`` exceeds
    every fp16 rounding error (the inputs' 2^-10, ``h``'s 2^-11, the product's and the two sums'
    roundings 2^-11 + 2^-10 + 2^-10, all relative to ``S = s^2*(|x|^2 + |c|^2)``: at most 2^-8 S against
    ``m*S`` = 2^-7 S; torch accumulates fp16 products in fp32, which a test pins), so ``bound_i`` <= the
    plain loop's fp32 distance. The matrix is exactly the features' width (no extra columns: a
    128-wide fp16 product runs ~25 % faster than a 136-wide one). A row is re-checked exactly only when
    its bound is below an fp16 copy of its current minimum, rounded up; that copy changes only where the
    minimum changed.
    """

    def __init__(self, x: torch.Tensor, sq: torch.Tensor) -> None:
        self.x, self.sq = x, sq
        n, dim = x.shape
        max_norm = float(sq.max().sqrt())
        self.usable = math.isfinite(max_norm) and max_norm > 0
        if not self.usable:
            return
        # A power of two (exact) keeps |s x| <= 64, so every scaled distance stays below fp16's 65504.
        self.scale2 = (2.0 ** math.floor(math.log2(64.0 / max_norm))) ** 2
        self.rows = (x * math.sqrt(self.scale2)).half().contiguous()
        self.h = (sq * (self.scale2 * (1.0 - HALF_MARGIN))).half()
        self.bound = torch.empty(n, dtype=torch.float16, device=x.device)
        self.threshold = torch.full((n,), float("inf"), dtype=torch.float16, device=x.device)
        self.tail_start = n - n % RECHECK_BLOCK - RECHECK_BLOCK  # rows the full product treats as its tail

    def _round_up(self, min_d2: torch.Tensor) -> torch.Tensor:
        """fp16 values >= ``s^2 * min_d2`` (nearest rounding errs by at most 2^-11 relative)."""
        scaled = min_d2 * self.scale2
        return (scaled + scaled.abs() * 2.0**-10 + 2.0**-24).half()

    def refresh(self, min_d2: torch.Tensor, rows: torch.Tensor | slice | None = None) -> None:
        """Bring the fp16 thresholds of ``rows`` (all when None) up to date with ``min_d2``."""
        if rows is None:
            self.threshold.copy_(self._round_up(min_d2))
        else:
            self.threshold[rows] = self._round_up(min_d2[rows])

    def update(self, min_d2: torch.Tensor, c: int) -> bool:
        """Lower ``min_d2`` by the distances to row ``c`` exactly as the plain loop would; False when
        so many rows are candidates that the full fp32 product is cheaper (nothing changed then)."""
        x, sq, n = self.x, self.sq, self.x.shape[0]
        torch.addmv(self.h, self.rows, self.rows[c] * -2.0, out=self.bound)
        self.bound.add_(float(sq[c]) * self.scale2 * (1.0 - HALF_MARGIN) - HALF_ABS)
        idx = torch.nonzero(self.bound < self.threshold).squeeze(1)
        if len(idx) > n // 4:
            return False
        main = idx[idx < self.tail_start]
        if len(main):
            gather = torch.cat([main, main.new_zeros((-len(main)) % RECHECK_BLOCK)])
            exact = torch.mv(x[gather], x[c])[:len(main)]
            d2 = (sq[main] - 2.0 * exact + sq[c]).clamp_min_(0.0)
            min_d2[main] = torch.minimum(min_d2[main], d2)
            self.refresh(min_d2, main)
        if len(main) < len(idx):  # candidates among the last rows: recompute those as the full product does
            t = self.tail_start
            d2 = (sq[t:] - 2.0 * torch.mv(x[t:], x[c]) + sq[c]).clamp_min_(0.0)
            torch.minimum(min_d2[t:], d2, out=min_d2[t:])
            self.refresh(min_d2, slice(t, None))
        return True


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
