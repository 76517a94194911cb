"""AUPRO: hand-computed curves, the brute-force definition, and the binned approximation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from leaderboard.metrics import aupro, pro_curve, pro_curve_binned, truncated_area


def brute_force_aupro(masks, maps, limit=0.3):
    """Straight from the definition: one PRO/FPR point per distinct score, regions re-measured each time."""
    regions, ok = [], []
    for mask, amap in zip(masks, maps):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labels == r] for r in range(1, n + 1)]
        ok.append(amap[labels == 0])
    ok = np.concatenate(ok)
    points = [(0.0, 0.0)]
    for t in sorted({float(v) for m in maps for v in np.ravel(m)}, reverse=True):
        points.append((float(np.mean(ok >= t)), float(np.mean([np.mean(r >= t) for r in regions]))))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 <= limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        elif x0 < limit:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_lim) * (limit - x0)
    return area / limit


def one_defect():
    # One row of 10 pixels; pixels 0-1 are one region. Scores: region 0.9, 0.5; OK: 0.8 then seven 0.1.
    mask = np.array([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=bool)
    amap = np.array([[0.9, 0.5, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    return mask, amap


def test_one_defect_by_hand():
    # t=0.9: FPR 0, PRO 1/2; t=0.8: FPR 1/8, PRO 1/2; t=0.5: FPR 1/8, PRO 1; t=0.1: (1, 1).
    # Area to 0.3: 0.125*0.5 (flat at 1/2) + (0.3-0.125)*1 (flat at 1) = 0.0625 + 0.175 = 0.2375; /0.3 = 0.791666...
    mask, amap = one_defect()
    assert aupro([mask], [amap]) == pytest.approx(0.2375 / 0.3, abs=1e-12)


def test_one_defect_plus_a_normal_image_pools_the_fpr():
    # A normal image of ten 0.0 pixels adds 10 OK pixels: N_ok = 18. t=0.8 gives FPR 1/18, t=0.1 gives 8/18 > 0.3.
    # Area: (1/18)*0.5 + (0.3 - 1/18)*1 = 0.272222...; /0.3 = 0.907407...
    mask, amap = one_defect()
    normal_mask, normal_map = np.zeros((1, 10), dtype=bool), np.zeros((1, 10))
    expected = ((1 / 18) * 0.5 + (0.3 - 1 / 18)) / 0.3
    assert aupro([mask, normal_mask], [amap, normal_map]) == pytest.approx(expected, abs=1e-12)


def test_two_defects_of_different_sizes_by_hand():
    # 4x4 image. Region A = (0,0), 1 pixel, score 0.7. Region B = row 3 cols 1-3, scores 0.9, 0.9, 0.2.
    # 12 OK pixels: one 0.8, two 0.6, nine 0.1.
    # t=0.9: FPR 0, PRO (0 + 2/3)/2 = 1/3;  t=0.8: FPR 1/12;  t=0.7: PRO (1 + 2/3)/2 = 5/6;
    # t=0.6: FPR 3/12 = 0.25;  t=0.2: PRO 1;  t=0.1: (1, 1).
    # Area to 0.3: (1/12)(1/3) + (1/6)(5/6) + 0.05*1 = 1/36 + 5/36 + 0.05 = 0.21666...; /0.3 = 13/18.
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True
    mask[3, 1:] = True
    amap = np.full((4, 4), 0.1)
    amap[0, 0] = 0.7
    amap[3, 1:] = [0.9, 0.9, 0.2]
    amap[1, 1] = 0.8
    amap[1, 3] = amap[2, 0] = 0.6
    assert aupro([mask], [amap]) == pytest.approx(13 / 18, abs=1e-12)


def test_regions_are_eight_connected():
    # Defect pixels (0,0), (1,1), (1,2): one region under 8-connectivity (two under 4-connectivity).
    # Only (0,0) scores 0.9, the rest 0.1, and the 6 OK pixels 0.5: curve (0,0) -> (0,1/3) -> (1,1/3) -> (1,1),
    # so AUPRO = 1/3 (4-connectivity would give PRO (1 + 0)/2 = 1/2).
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[1, 2] = True
    amap = np.full((3, 3), 0.5)
    amap[mask] = 0.1
    amap[0, 0] = 0.9
    assert aupro([mask], [amap]) == pytest.approx(1 / 3, abs=1e-12)


def test_perfect_map_is_one_and_constant_map_is_half_the_limit():
    # Perfect: every defect pixel above every OK pixel, so PRO reaches 1 at FPR 0: area = limit.
    # Constant: all scores tie, the curve is the diagonal (0,0)-(1,1): area limit^2/2, normalised limit/2 = 0.15.
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 2:5] = True
    mask[6, 6] = True
    assert aupro([mask, np.zeros_like(mask)], [mask * 1.0, np.zeros((8, 8))]) == 1.0
    assert aupro([mask], [np.full((8, 8), 0.3)]) == pytest.approx(0.15, abs=1e-12)
    assert aupro([mask], [np.full((8, 8), 0.3)], fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)


def test_curve_starts_at_origin_ends_at_one_and_is_monotone():
    rng = np.random.default_rng(3)
    masks = [rng.random((16, 16)) < 0.2 for _ in range(4)]
    maps = [rng.random((16, 16)).astype(np.float32) for _ in range(4)]
    fpr, pro = pro_curve(masks, maps)
    assert (fpr[0], pro[0], fpr[-1], pro[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)


def test_truncated_area_interpolates_at_the_limit():
    # Straight line y = x from 0 to 1: area up to 0.3 is 0.045 whether or not 0.3 is a sample.
    assert truncated_area(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.3) == pytest.approx(0.045)
    assert truncated_area(np.array([0.0, 0.3, 1.0]), np.array([0.0, 0.3, 1.0]), 0.3) == pytest.approx(0.045)


@st.composite
def small_cases(draw):
    n = draw(st.integers(1, 3))
    shape = (draw(st.integers(2, 6)), draw(st.integers(2, 6)))
    masks = [draw(hnp.arrays(bool, shape)) for _ in range(n)]
    levels = draw(st.integers(1, 6))  # few levels -> many ties
    maps = [draw(hnp.arrays(np.int8, shape, elements=st.integers(0, levels))).astype(np.float32) for _ in range(n)]
    return masks, maps


@settings(max_examples=80, deadline=None)
@given(small_cases(), st.sampled_from([0.3, 0.05, 1.0]))
def test_matches_brute_force_definition(case, limit):
    masks, maps = case
    if not any(m.any() for m in masks) or all(m.all() for m in masks):
        with pytest.raises(ValueError):
            aupro(masks, maps, limit)
        return
    value = aupro(masks, maps, limit)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(brute_force_aupro(masks, maps, limit), abs=1e-9)


def realistic_case(seed: int, n: int = 12, size: int = 48):
    """Blob-shaped defects, smooth noisy maps that partly find them, half the images normal."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        mask = np.zeros((size, size), dtype=bool)
        if i % 2:
            for _ in range(rng.integers(1, 3)):
                cy, cx, r = rng.integers(6, size - 6), rng.integers(6, size - 6), rng.integers(2, 7)
                mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2)
        maps.append((noise + rng.uniform(0.0, 1.5) * ndimage.gaussian_filter(mask * 1.0, 1.5)).astype(np.float32))
        masks.append(mask)
    return masks, maps


@pytest.mark.parametrize("seed", range(4))
def test_binned_mode_is_close_to_exact_within_its_bound(seed):
    masks, maps = realistic_case(seed)
    exact = aupro(masks, maps)
    for n in (20, 200):
        fpr, _ = pro_curve_binned(masks, maps, n)
        below = fpr[: np.searchsorted(fpr, 0.3, side="right") + 1]
        bound = np.max(np.diff(below)) / 0.3  # chord vs curve differ by at most the FPR step times the PRO step
        approx = aupro(masks, maps, thresholds=n)
        assert abs(approx - exact) <= bound + 1e-12
        assert 0.0 <= approx <= 1.0
    assert abs(aupro(masks, maps, thresholds=1000) - exact) < 2e-3


def test_binned_mode_keeps_perfect_and_constant_maps_exact():
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:3, 1:3] = True
    assert aupro([mask], [mask * 1.0], thresholds=5) == 1.0
    assert aupro([mask], [np.zeros((8, 8))], thresholds=5) == pytest.approx(0.15)


def test_float16_maps_and_0_1_integer_masks_are_accepted():
    mask, amap = one_defect()
    assert aupro([mask.astype(np.uint8)], [amap.astype(np.float16)]) == pytest.approx(0.2375 / 0.3, abs=1e-12)


@pytest.mark.parametrize("masks, maps, message", [
    ([np.zeros((2, 2), bool)], [np.zeros((2, 3))], "differs from map shape"),
    ([np.zeros((2, 2), bool)], [np.zeros((2, 2))], "no anomalous region"),
    ([np.ones((2, 2), bool)], [np.zeros((2, 2))], "no normal pixels"),
    ([np.eye(2, dtype=bool)], [np.array([[np.nan, 0], [0, 0]])], "NaN"),
    ([np.eye(2) * 255], [np.zeros((2, 2))], "only 0 and 1"),
    ([np.eye(2, dtype=bool)], [], "1 masks but 0 maps"),
    ([np.zeros(4, bool)], [np.zeros(4)], "2-D"),
])
def test_bad_input_raises_a_clear_value_error(masks, maps, message):
    with pytest.raises(ValueError, match=message):
        aupro(masks, maps)


def test_bad_limit_and_thresholds_are_refused():
    mask, amap = one_defect()
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro([mask], [amap], fpr_limit=0.0)
    with pytest.raises(ValueError, match="thresholds"):
        aupro([mask], [amap], thresholds=1)
