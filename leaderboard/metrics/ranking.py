"""Image AUROC, pixel AUROC and F1-max, computed exactly from sorted scores (ties count one half)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from leaderboard.metrics._inputs import labels_and_scores, masks_and_maps


def auroc_from_split(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(positive score > negative score) + 0.5 P(equal), the Mann-Whitney form of the ROC area.

    Sorting the negatives once and locating every positive with ``searchsorted`` keeps it
    O(n log n) and exact with ties, without building the ROC curve.
    """
    neg = np.sort(negatives)
    pos = np.sort(positives)
    below = np.searchsorted(neg, pos, side="left").astype(np.int64)
    below_or_equal = np.searchsorted(neg, pos, side="right").astype(np.int64)
    # 2*wins + ties, all in integers so a billion-pair count stays exact.
    doubled = int(below.sum()) + int(below_or_equal.sum())
    return doubled / (2.0 * neg.size * pos.size)


def image_auroc(labels: Sequence, scores: Sequence) -> float:
    """Area under the ROC curve of image scores against 0/1 labels (1 = anomalous)."""
    y, s = labels_and_scores(labels, scores)
    return auroc_from_split(s[~y], s[y])


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """ROC area over all pixels of all images: mask pixels are positives, every other pixel a negative."""
    masks, maps = masks_and_maps(masks, maps)
    positives = np.concatenate([m[k] for m, k in zip(maps, masks)])
    negatives = np.concatenate([m[~k] for m, k in zip(maps, masks)])
    if positives.size == 0:
        raise ValueError("masks hold a single class (no anomalous pixels): pixel AUROC is undefined")
    if negatives.size == 0:
        raise ValueError("masks hold a single class (no normal pixels): pixel AUROC is undefined")
    return auroc_from_split(negatives, positives)


def f1_max(labels: Sequence, scores: Sequence) -> float:
    """The best F1 over every threshold ``score >= t`` (t ranging over the distinct scores)."""
    y, s = labels_and_scores(labels, scores)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # Only the last position of a run of equal scores is a reachable threshold.
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp, fp = tp[last], fp[last]
    n_pos = tp[-1]
    f1 = 2.0 * tp / (tp + fp + n_pos)
    return float(f1.max())
