"""Image AUROC, pixel AUROC and F1-max against brute-force versions of their definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from leaderboard.metrics import f1_max, image_auroc, pixel_auroc


def brute_auroc(labels, scores):
    """Fraction of (anomalous, normal) pairs ranked correctly, ties counting one half."""
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_f1(labels, scores):
    best = 0.0
    for t in set(scores):
        pred = [s >= t for s in scores]
        tp = sum(p and y for p, y in zip(pred, labels))
        fp = sum(p and not y for p, y in zip(pred, labels))
        fn = sum(not p and y for p, y in zip(pred, labels))
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


labelled = st.lists(st.tuples(st.booleans(), st.integers(0, 8)), min_size=2, max_size=30)


@settings(max_examples=120, deadline=None)
@given(labelled)
def test_image_auroc_and_f1_match_brute_force(pairs):
    labels = [y for y, _ in pairs]
    scores = [float(s) for _, s in pairs]
    assume(0 < sum(labels) < len(labels))
    assert image_auroc(labels, scores) == pytest.approx(brute_auroc(labels, scores), abs=1e-12)
    assert f1_max(labels, scores) == pytest.approx(brute_f1(labels, scores), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(labelled)
def test_auroc_and_f1_unchanged_by_monotone_transforms(pairs):
    labels = np.array([y for y, _ in pairs])
    scores = np.array([s for _, s in pairs], dtype=np.float64)
    assume(0 < labels.sum() < labels.size)
    base = image_auroc(labels, scores)
    for transformed in (3.0 * scores - 7.0, scores ** 3, np.exp(scores / 4), np.arctan(scores)):
        assert image_auroc(labels, transformed) == pytest.approx(base, abs=1e-12)
        assert f1_max(labels, transformed) == pytest.approx(f1_max(labels, scores), abs=1e-12)
    assert image_auroc(labels, -scores) == pytest.approx(1.0 - base, abs=1e-12)


def test_image_auroc_known_values():
    assert image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert image_auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5
    # pairs: (0.35 > 0.1), (0.35 > 0.4? no), (0.8 > both): 3 of 4
    assert image_auroc([0, 1, 0, 1], [0.1, 0.35, 0.4, 0.8]) == 0.75
    # F1-max: t=0.8 -> tp 1, fp 0, fn 1: 2/3; t=0.4 -> tp 1 fp 1 fn 1: 1/2; t=0.35 -> tp 2 fp 1: 4/5
    assert f1_max([0, 1, 0, 1], [0.1, 0.35, 0.4, 0.8]) == pytest.approx(0.8)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 3), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_pixel_auroc_is_the_auroc_of_all_pixels(n, size, seed):
    rng = np.random.default_rng(seed)
    masks = [rng.random((size, size)) < 0.3 for _ in range(n)]
    maps = [rng.integers(0, 4, (size, size)).astype(np.float32) for _ in range(n)]
    flat_labels = np.concatenate([m.ravel() for m in masks])
    assume(0 < flat_labels.sum() < flat_labels.size)
    flat_scores = np.concatenate([m.ravel() for m in maps])
    assert pixel_auroc(masks, maps) == pytest.approx(brute_auroc(flat_labels, flat_scores), abs=1e-12)


@pytest.mark.parametrize("labels, scores, message", [
    ([0, 0, 0], [0.1, 0.2, 0.3], "single class"),
    ([1, 1], [0.1, 0.2], "single class"),
    ([0, 1], [0.1, float("nan")], "NaN"),
    ([0, 1, 1], [0.1, 0.2], "differ in length"),
    ([0, 2], [0.1, 0.2], "only 0 and 1"),
])
def test_image_metrics_refuse_bad_input(labels, scores, message):
    for metric in (image_auroc, f1_max):
        with pytest.raises(ValueError, match=message):
            metric(labels, scores)


def test_pixel_auroc_refuses_bad_input():
    with pytest.raises(ValueError, match="differs from map shape"):
        pixel_auroc([np.zeros((2, 2), bool)], [np.zeros((3, 2))])
    with pytest.raises(ValueError, match="single class"):
        pixel_auroc([np.zeros((2, 2), bool)], [np.zeros((2, 2))])
    with pytest.raises(ValueError, match="NaN or inf"):
        pixel_auroc([np.eye(2, dtype=bool)], [np.array([[np.inf, 0], [0, 0]])])
