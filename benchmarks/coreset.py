"""PatchCore greedy coreset selection: ours vs the straightforward loop, same data, same device.

The straightforward loop (re-created here as the peer) allocates fresh N-sized tensors each step and
reads the whole fp32 feature matrix per step; ``methods.patchcore.coreset.greedy_coreset`` bounds the
distances with an fp16 copy (half the bytes) and recomputes exactly, in fp32, only the rows whose
minimum could change. Prints points/s of both by wall clock and by process CPU time (CPU time is the
fairer figure on a loaded machine), the speed ratios (target >= 2x on CPU) and whether the two
selections are identical (they must be).

    python benchmarks/coreset.py --patches 480000 --select 400 --device cpu
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.patchcore.coreset import greedy_coreset, sparse_random_projection  # noqa: E402


@torch.no_grad()
def straightforward(features: torch.Tensor, n_select: int, projection_dim: int = 128, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = features.float()
    if 0 < projection_dim < x.shape[1]:
        x = x @ sparse_random_projection(x.shape[1], projection_dim, generator).to(x.device)
    sq = (x * x).sum(dim=1)
    chosen = torch.empty(n_select, dtype=torch.long)
    current = int(torch.randint(x.shape[0], (1,), generator=generator))
    min_d2 = torch.full((x.shape[0],), math.inf, device=x.device)
    for i in range(n_select):
        chosen[i] = current
        d2 = (sq - 2.0 * (x @ x[current]) + sq[current]).clamp_min_(0.0)
        min_d2 = torch.minimum(min_d2, d2)
        min_d2[current] = -1.0
        current = int(torch.argmax(min_d2))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=480_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--select", type=int, default=400, help="points selected per timed call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for both (0: torch's default); 1 keeps OpenMP spin-waits on a "
                             "loaded machine out of the CPU-time figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    features = torch.randn(args.patches, args.dim, generator=torch.Generator().manual_seed(0)).to(args.device)
    timings, cpu = {}, {}
    picks = {}
    for name, fn in (("straightforward", straightforward), ("insplad", greedy_coreset)):
        fn(features[:5000], 10)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        picks[name] = fn(features, args.select).cpu()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        timings[name] = time.perf_counter() - start
        cpu[name] = time.process_time() - start_cpu
        print(f"{name:16s} {args.select / timings[name]:8.1f} points/s wall, "
              f"{args.select / cpu[name]:8.1f} points per CPU-second", flush=True)
    same = torch.equal(picks["straightforward"], picks["insplad"])
    print(f"speed ratio insplad / straightforward = {timings['straightforward'] / timings['insplad']:.2f}x wall, "
          f"{cpu['straightforward'] / cpu['insplad']:.2f}x CPU time (target >= 2x on CPU); identical selections: {same}")


if __name__ == "__main__":
    main()
