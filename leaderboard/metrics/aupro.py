"""AUPRO: area under the per-region-overlap curve up to a false-positive-rate limit.

Follows the MVTec AD evaluation script (Bergmann et al.) exactly:

* regions are the 8-connected components of each ground-truth mask, pooled over all images;
* OK pixels are every pixel outside a region (normal images count as all-zero masks), so the
  FPR is taken over all normal pixels of all test images;
* every distinct score is a threshold (positives are ``score >= t``; a run of tied scores is one
  point), PRO(t) is the mean over regions of the fraction of the region's pixels that are positive;
* the curve starts at (0, 0) and ends at (1, 1); the area is integrated with the trapezoid rule up
  to ``fpr_limit``, interpolating PRO linearly at the limit, and divided by ``fpr_limit``.

The exact curve is built without a per-pixel cumulative sum: only the scores of defect pixels
change PRO, so between two distinct defect scores the curve is a horizontal segment whose inner
points add no area. Sorting the OK scores once and locating each distinct defect score in them
(``searchsorted``) gives the same area with O(pixels) memory and a single ``np.sort`` of the OK
pixels. FPR and PRO are float64 (the official script keeps the FP count in float32).

``thresholds=N`` trades exactness for bounded memory: N OK-pixel scores q_k are taken where the
FPR is about k·limit/(N-1) (quantiles of an evenly strided sample of at most 2**21 OK scores);
each gives two thresholds, ``score >= q_k`` and ``score > q_k``, so at most 2N. The maps are
binned against them one image at a time, and the curve through those points
(each one a point of the exact curve) is integrated the same way. The chord between two curve
points differs from the exact curve by at most the box they span, so the error is at most
``max gap in FPR below the limit / limit`` (about 1/(N-1)). Measured with
``python benchmarks/metrics.py`` on 2,000 realistic 256x256 maps: |binned - exact| = 2.7e-3 for
N=100, 1.9e-4 for N=1000, 1.5e-5 for N=10000, with a peak of 16 MiB of working memory against
808 MiB for the exact mode (whose own arrays cost ~6.5 bytes per pixel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from leaderboard.metrics._inputs import masks_and_maps

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
MAX_SAMPLE = 1 << 21


def region_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """1/|region| for each defect pixel of ``mask`` (in ``mask``'s C order) and the number of regions."""
    labels, n_regions = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if n_regions == 0:
        return np.zeros(0, dtype=np.float64), 0
    sizes = np.bincount(labels.ravel(), minlength=n_regions + 1)
    return 1.0 / sizes[labels[mask]], n_regions


def _check_limit(fpr_limit: float) -> float:
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return limit


def _split(masks: list[np.ndarray], maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """OK scores, defect scores, defect-pixel region weights and the number of regions (pooled).

    The outputs are allocated once at their final size and filled image by image, so the peak
    memory is one copy of the scores (not a list of per-image pieces plus their concatenation).
    """
    n_defect = [int(np.count_nonzero(m)) for m in masks]
    n_ok = sum(m.size for m in masks) - sum(n_defect)
    if sum(n_defect) == 0:
        raise ValueError("masks contain no anomalous region: AUPRO is undefined")
    if n_ok == 0:
        raise ValueError("masks cover every pixel (no normal pixels): AUPRO is undefined")
    dtype = maps[0].dtype
    ok_scores = np.empty(n_ok, dtype=dtype)
    defect_scores = np.empty(sum(n_defect), dtype=dtype)
    weights = np.empty(sum(n_defect), dtype=np.float64)
    n_regions = ok_at = defect_at = 0
    for mask, amap, k in zip(masks, maps, n_defect):
        ok_part = amap[~mask] if k else amap.ravel()
        ok_scores[ok_at:ok_at + ok_part.size] = ok_part
        ok_at += ok_part.size
        if k:
            w, n = region_weights(mask)
            defect_scores[defect_at:defect_at + k] = amap[mask]
            weights[defect_at:defect_at + k] = w
            defect_at += k
            n_regions += n
    return ok_scores, defect_scores, weights, n_regions


def pro_curve(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO curve as (fpr, pro) points, non-decreasing in FPR, from (0, 0) to (1, 1).

    Points on a horizontal stretch between two distinct defect scores are left out (they add no
    area and do not change interpolation); every corner of the curve is present.
    """
    masks, maps = masks_and_maps(masks, maps)
    ok_scores, defect_scores, weights, n_regions = _split(masks, maps)
    ok_scores.sort()  # a fresh concatenation: sort in place, no copy
    ok_sorted, n_ok = ok_scores, ok_scores.size
    order = np.argsort(-defect_scores, kind="stable")
    desc, w = defect_scores[order], weights[order]
    starts = np.flatnonzero(np.r_[True, desc[1:] != desc[:-1]])
    distinct = desc[starts]
    pro_ge = np.cumsum(np.add.reduceat(w, starts)) / n_regions
    pro_gt = np.r_[0.0, pro_ge[:-1]]
    ok_ge = n_ok - np.searchsorted(ok_sorted, distinct, side="left")
    ok_gt = n_ok - np.searchsorted(ok_sorted, distinct, side="right")
    # Before reaching a defect score d the curve sits at (#OK > d, PRO(> d)); at d it jumps to (#OK >= d, PRO(>= d)).
    fpr = np.empty(2 * distinct.size + 2)
    pro = np.empty_like(fpr)
    fpr[0], pro[0], fpr[-1], pro[-1] = 0.0, 0.0, 1.0, 1.0
    fpr[1:-1:2], fpr[2:-1:2] = ok_gt / n_ok, ok_ge / n_ok
    pro[1:-1:2], pro[2:-1:2] = pro_gt, pro_ge
    return np.minimum(fpr, 1.0), np.minimum(pro, 1.0)


def pro_curve_binned(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], thresholds: int,
                     fpr_limit: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Points of the exact PRO curve at at most 2·``thresholds`` thresholds spread evenly in FPR over [0, limit]."""
    if isinstance(thresholds, bool) or not isinstance(thresholds, (int, np.integer)) or thresholds < 2:
        raise ValueError(f"thresholds must be an integer >= 2, got {thresholds!r}")
    limit = _check_limit(fpr_limit)
    masks, maps = masks_and_maps(masks, maps)
    n_ok = int(sum(int(np.count_nonzero(~m)) for m in masks))
    if n_ok == 0:
        raise ValueError("masks cover every pixel (no normal pixels): AUPRO is undefined")
    stride = max(1, n_ok // MAX_SAMPLE)
    # .copy() so each strided piece does not keep its image's whole OK-pixel array alive
    sample = np.sort(np.concatenate([amap[~mask][::stride].copy() for mask, amap in zip(masks, maps)]))
    # Target FPRs limit*k/(N-1) for k = 1..N: the last lies beyond the limit so interpolation has a right end.
    targets = limit * np.arange(1, thresholds + 1) / (thresholds - 1)
    positions = np.clip(np.ceil((1.0 - targets) * sample.size).astype(np.int64), 0, sample.size - 1)
    # Each sampled OK score q gives two curve points: {score >= q} and {score > q} (= score >= next float).
    quantiles = sample[positions]
    cuts = np.unique(np.r_[quantiles, np.nextafter(quantiles, np.inf)])  # ascending
    fp_hist = np.zeros(cuts.size + 1, dtype=np.int64)
    pro_hist = np.zeros(cuts.size + 1, dtype=np.float64)
    n_regions = 0
    for mask, amap in zip(masks, maps):
        # bin b holds scores in [cuts[b-1], cuts[b]); score >= cuts[j] <=> bin >= j + 1
        bins = np.searchsorted(cuts, amap, side="right")
        fp_hist += np.bincount(bins[~mask], minlength=cuts.size + 1)
        if mask.any():
            w, n = region_weights(mask)
            pro_hist += np.bincount(bins[mask], weights=w, minlength=cuts.size + 1)
            n_regions += n
    if n_regions == 0:
        raise ValueError("masks contain no anomalous region: AUPRO is undefined")
    # Cumulate from the highest bin down: entry j counts scores >= cuts[j], listed for descending thresholds.
    fp_ge = np.cumsum(fp_hist[::-1])[:-1]
    pro_ge = np.cumsum(pro_hist[::-1])[:-1]
    fpr = np.minimum(np.r_[0.0, fp_ge / n_ok, 1.0], 1.0)
    pro = np.minimum(np.r_[0.0, pro_ge / n_regions, 1.0], 1.0)
    return fpr, pro


def truncated_area(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under (fpr, pro) from 0 to ``limit``, PRO interpolated linearly at the limit."""
    fpr, pro = np.asarray(fpr, dtype=np.float64), np.asarray(pro, dtype=np.float64)
    finite = np.isfinite(fpr) & np.isfinite(pro)
    fpr, pro = fpr[finite], pro[finite]
    correction = 0.0
    if not np.any(fpr == limit):
        right = int(np.searchsorted(fpr, limit, side="right"))
        if not 0 < right < fpr.size:
            raise ValueError(f"the curve does not straddle the FPR limit {limit}")
        x0, x1, y0, y1 = fpr[right - 1], fpr[right], pro[right - 1], pro[right]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        correction = 0.5 * (y0 + y_limit) * (limit - x0)
    keep = fpr <= limit
    x, y = fpr[keep], pro[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + correction)


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3,
          thresholds: int | None = None) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD definition), in [0, 1].

    ``masks``: 2-D boolean or 0/1 arrays (all-zero for normal images); ``maps``: float arrays of the
    same shapes. ``thresholds=None`` is exact; ``thresholds=N`` bins the maps against N thresholds
    (error at most the largest FPR gap below the limit divided by the limit; see the module notes).
    """
    limit = _check_limit(fpr_limit)
    if thresholds is None:
        fpr, pro = pro_curve(masks, maps)
    else:
        fpr, pro = pro_curve_binned(masks, maps, thresholds, limit)
    return min(1.0, max(0.0, truncated_area(fpr, pro, limit) / limit))
