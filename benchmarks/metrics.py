"""AUPRO speed and agreement: ours (exact and binned) vs a plain reference vs anomalib.

Run:  python benchmarks/metrics.py            (2,000 maps of 256x256 plus a small case)
      python benchmarks/metrics.py --quick    (200 maps, for a fast look)

anomalib is not a dependency. To include it without touching the main environment:
      python -m venv --system-site-packages /tmp/anovenv && /tmp/anovenv/bin/pip install anomalib
      /tmp/anovenv/bin/python benchmarks/metrics.py

The reference is written straight from the MVTec AD definition: for every distinct score it
re-measures the overlap of every region and the FPR over all OK pixels, so it is obviously right
and slow (O(thresholds x pixels)); it runs on a small case with quantised scores. Our exact AUPRO
is compared with it on that case; the binned mode and anomalib (when importable) are compared with
our exact value on the large case. anomalib normalises by its last FPR and scores at whatever
resolution it is given, so a small difference from the MVTec definition is expected there.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leaderboard.metrics import aupro, pixel_auroc  # noqa: E402


def make_case(n: int, size: int, seed: int, levels: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Half normal images, half with 1-3 blob defects; smooth noisy maps that partly find them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks, maps = [], []
    for i in range(n):
        mask = np.zeros((size, size), dtype=bool)
        if i % 2:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(size // 8, size - size // 8, size=2)
                r = rng.integers(max(2, size // 40), max(3, size // 8))
                mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        amap = ndimage.gaussian_filter(rng.normal(size=(size, size)).astype(np.float32), size / 64)
        amap += rng.uniform(0.0, 1.0) * ndimage.gaussian_filter(mask.astype(np.float32), size / 64)
        if levels:
            amap = np.round((amap - amap.min()) * levels / max(float(np.ptp(amap)), 1e-9)) / levels
        masks.append(mask)
        maps.append(amap.astype(np.float32))
    return masks, maps


def reference_aupro(masks: list[np.ndarray], maps: list[np.ndarray], limit: float = 0.3) -> float:
    """The definition, literally: per threshold, per-region overlap and pooled FPR; then the trapezoid."""
    structure = np.ones((3, 3), dtype=bool)
    labelled = [ndimage.label(m, structure=structure) for m in masks]
    n_ok = sum(int((lab == 0).sum()) for lab, _ in labelled)
    n_regions = sum(n for _, n in labelled)
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        false_pos = 0
        overlap = 0.0
        for (lab, n), amap in zip(labelled, maps):
            positive = amap >= t
            false_pos += int((positive & (lab == 0)).sum())
            for r in range(1, n + 1):
                region = lab == r
                overlap += (positive & region).sum() / region.sum()
        points.append((false_pos / n_ok, overlap / n_regions))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 <= limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        elif x0 < limit:
            y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_at) * (limit - x0)
    return area / limit


def anomalib_aupro(masks: list[np.ndarray], maps: list[np.ndarray]) -> float:
    import torch
    from anomalib.metrics.aupro import _AUPRO  # the plain torchmetrics metric behind anomalib's AUPRO

    metric = _AUPRO(fpr_limit=0.3)
    for start in range(0, len(maps), 100):
        preds = torch.from_numpy(np.stack(maps[start:start + 100]))
        target = torch.from_numpy(np.stack(masks[start:start + 100]).astype(np.int64))
        metric.update(preds, target)
    return float(metric.compute())


def timed(fn, *args, **kwargs):
    tracemalloc.start()
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return value, elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 maps instead of 2,000 for the large case")
    parser.add_argument("--size", type=int, default=256, help="side of the large case's maps")
    parser.add_argument("--anomalib-maps", type=int, default=300,
                        help="how many of the large case's maps anomalib scores (it needs ~75 bytes/pixel)")
    args = parser.parse_args()

    print("== small case: 40 maps of 48x48, 64 score levels (reference feasible) ==")
    worst = 0.0
    ours_total = ref_total = 0.0
    for seed in range(3):
        masks, maps = make_case(40, 48, seed, levels=64)
        ours, t_ours, _ = timed(aupro, masks, maps)
        ref, t_ref, _ = timed(reference_aupro, masks, maps)
        worst = max(worst, abs(ours - ref))
        ours_total += t_ours
        ref_total += t_ref
        print(f"seed {seed}: ours {ours:.10f} ({t_ours * 1e3:.1f} ms)  reference {ref:.10f} ({t_ref:.2f} s)")
    print(f"largest |ours - reference| = {worst:.2e}; reference / ours time = {ref_total / ours_total:.0f}x")

    n = 200 if args.quick else 2000
    print(f"== large case: {n} maps of {args.size}x{args.size} (float32) ==")
    masks, maps = make_case(n, args.size, 7)
    pixels = n * args.size * args.size
    exact, t_exact, peak = timed(aupro, masks, maps)
    print(f"ours exact:        {exact:.8f}  {t_exact:6.2f} s  peak {peak / 2**20:7.1f} MiB "
          f"({peak / pixels:.1f} bytes/pixel; maps themselves {4 * pixels / 2**20:.0f} MiB)")
    for thresholds in (100, 1000, 10000):
        value, t, peak_b = timed(aupro, masks, maps, thresholds=thresholds)
        print(f"ours thresholds={thresholds:<5}: {value:.8f}  {t:6.2f} s  peak {peak_b / 2**20:7.1f} MiB  "
              f"|diff| = {abs(value - exact):.2e}")
    value, t, _ = timed(pixel_auroc, masks, maps)
    print(f"pixel AUROC:       {value:.8f}  {t:6.2f} s")
    try:
        import anomalib  # noqa: F401
    except ImportError as exc:
        print(f"anomalib not importable: skipped ({exc})")
    else:
        # anomalib holds every map as torch tensors plus per-pixel work arrays (~75 bytes/pixel
        # measured), so it gets a subset that fits a shared machine; ours is re-timed on the same one.
        k = min(n, args.anomalib_maps)
        sub_masks, sub_maps = masks[:k], maps[:k]
        ours_sub, t_ours_sub, _ = timed(aupro, sub_masks, sub_maps)
        start = time.perf_counter()
        value = anomalib_aupro(sub_masks, sub_maps)
        t = time.perf_counter() - start
        print(f"anomalib AUPRO on the first {k} maps: {value:.8f}  {t:6.2f} s; ours {ours_sub:.8f}  {t_ours_sub:6.2f} s; "
              f"|diff| = {abs(value - ours_sub):.2e}; anomalib / ours time = {t / t_ours_sub:.1f}x")


if __name__ == "__main__":
    main()
