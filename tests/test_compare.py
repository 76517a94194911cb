"""``insplad leaderboard compare``: paired bootstrap intervals, Wilcoxon / sign tests against scipy, verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import roc_auc_score

from insplad_tools.cli import main
from leaderboard import render
from leaderboard.compare import _auroc_rows, compare
from leaderboard.metrics import image_auroc
from leaderboard.predictions import write_category
from leaderboard.results import METRICS, build_results, write_results

DIGEST = "ab" * 32
CATEGORIES = ("c1", "c2", "c3", "c4", "c5")


def images(category: str, n_good: int, n_bad: int) -> list[tuple[str, bool]]:
    return ([(f"{category}/test/good/{i:03d}.png", False) for i in range(n_good)]
            + [(f"{category}/test/crack/{i:03d}.png", True) for i in range(n_bad)])


def submission(root: Path, method: str, attention: str, scores: dict[str, dict[int, np.ndarray]],
               n_good: int, n_bad: int) -> Path:
    """A submission folder holding the given scores (category -> seed -> scores, good images first)."""
    per_category = {}
    for category, by_seed in scores.items():
        items = images(category, n_good, n_bad)
        labels = [bad for _, bad in items]
        runs = []
        for seed, values in sorted(by_seed.items()):
            write_category(root / "predictions" / f"seed-{seed}" / category, category,
                           [(rel, float(v), None) for (rel, _), v in zip(items, values)])
            runs.append({"seed": seed, **{m: None for m in METRICS}, "image_auroc": image_auroc(labels, values)})
        per_category[category] = {"n_test_good": n_good, "n_test_anomalous": n_bad, "n_masks": 0, "runs": runs}
    seeds = sorted(next(iter(scores.values())))
    doc = build_results(method=method, variant={"attention": attention}, dataset={"name": "toy", "manifest_sha256": DIGEST},
                        seeds=seeds, report="mean", per_category=per_category)
    write_results(root / "results.json", doc)
    return root


def scores_for(rng: np.random.Generator, separation: float, n_good: int, n_bad: int, seeds=(0, 1)) -> dict:
    return {c: {s: np.concatenate([rng.normal(0, 1, n_good), rng.normal(separation, 1, n_bad)]) for s in seeds}
            for c in CATEGORIES}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """A clearly better A (well separated scores) and a weak B, 5 categories x 2 seeds."""
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("cmp")
    a = submission(base / "a", "differnet", "se", scores_for(rng, 3.0, 20, 10), 20, 10)
    b = submission(base / "b", "differnet", "none", scores_for(rng, 0.5, 20, 10), 20, 10)
    return a, b


def test_a_clearly_better_is_called_better_and_tests_match_scipy(pair: tuple[Path, Path]) -> None:
    cmp = compare(*pair, resamples=500)
    diffs = [r.diff for r in cmp.categories]
    assert all(d > 0 for d in diffs) and all(r.significant for r in cmp.categories)
    assert cmp.wilcoxon_p == pytest.approx(stats.wilcoxon(diffs).pvalue) == pytest.approx(0.0625)
    assert cmp.sign_p == pytest.approx(stats.binomtest(5, 5, 0.5).pvalue) == pytest.approx(0.0625)
    assert cmp.mean_ci[0] > 0 and cmp.mean_ci[0] <= cmp.mean_diff <= cmp.mean_ci[1]
    assert cmp.verdict.startswith("AttentDifferNet (SENet) [mean of 2] better on 5/5 categories, mean +")
    assert any("cannot go below p = 0.0625" in n for n in cmp.notes)


def test_seed_means_and_stds_are_the_results_files(pair: tuple[Path, Path]) -> None:
    cmp = compare(*pair, resamples=200)
    doc = json.loads((pair[0] / "results.json").read_text())
    for row, mine in zip(doc["categories"], cmp.categories):
        assert mine.a_mean == pytest.approx(row["image_auroc_mean"]) and mine.a_std == pytest.approx(row["image_auroc_std"])


def test_identical_submissions_show_no_difference(pair: tuple[Path, Path]) -> None:
    cmp = compare(pair[0], pair[0], resamples=200)
    # the seeds of each side are resampled independently (separate trainings), so the interval keeps
    # the seed-to-seed spread around a zero difference
    assert all(r.diff == 0 and r.ci_low < 0 < r.ci_high and not r.significant for r in cmp.categories)
    assert cmp.wilcoxon_p is None and cmp.verdict.startswith("no detectable difference: mean +0.0 points")


def test_output_is_deterministic_for_a_seed(pair: tuple[Path, Path]) -> None:
    assert compare(*pair, resamples=300, seed=7).as_dict() == compare(*pair, resamples=300, seed=7).as_dict()


def test_single_seed_interval_equals_scipy_bootstrap_of_sklearn_auroc(tmp_path: Path) -> None:
    """One category, one seed each: the interval is the per-class image bootstrap of AUROC(A) - AUROC(B);
    recomputed here with scipy.stats.bootstrap around sklearn's roc_auc_score, same random stream."""
    rng = np.random.default_rng(3)
    n_good, n_bad = 15, 8
    sa = {"c1": {0: np.concatenate([rng.normal(0, 1, n_good), rng.normal(1.0, 1, n_bad)]).round(1)}}  # ties too
    sb = {"c1": {0: np.concatenate([rng.normal(0, 1, n_good), rng.normal(0.7, 1, n_bad)]).round(1)}}
    a = submission(tmp_path / "a", "patchcore", "none", sa, n_good, n_bad)
    b = submission(tmp_path / "b", "patchcore", "se", sb, n_good, n_bad)
    cmp = compare(a, b, resamples=400, seed=11)
    labels = np.array([0] * n_good + [1] * n_bad)
    neg, pos = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)

    def statistic(i_neg, i_pos):
        idx = np.concatenate([neg[i_neg.astype(int)], pos[i_pos.astype(int)]])
        y = labels[idx]
        out = [roc_auc_score(y, sa["c1"][0][idx]) - roc_auc_score(y, sb["c1"][0][idx])]
        return np.array(out * 2)  # per category and mean (one category)

    ref = stats.bootstrap((np.arange(n_good), np.arange(n_bad)), statistic, paired=False, vectorized=False,
                          method="percentile", n_resamples=400, batch=200, random_state=np.random.default_rng(11))
    assert cmp.categories[0].ci_low == pytest.approx(ref.confidence_interval.low[0], abs=1e-12)
    assert cmp.categories[0].ci_high == pytest.approx(ref.confidence_interval.high[0], abs=1e-12)
    assert any("single seed" in n for n in cmp.notes)


@settings(deadline=None, max_examples=40)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=12), st.lists(st.integers(0, 6), min_size=2, max_size=12))
def test_vectorised_auroc_equals_the_leaderboard_metric(neg: list[int], pos: list[int]) -> None:
    neg_a, pos_a = np.array(neg, float), np.array(pos, float)
    expected = image_auroc([0] * len(neg) + [1] * len(pos), np.concatenate([neg_a, pos_a]))
    got = _auroc_rows(np.stack([neg_a, neg_a]), np.stack([pos_a, pos_a]))
    assert got == pytest.approx([expected, expected], abs=1e-12)


def test_command_prints_verdict_writes_json_and_render_marks_it(pair: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    result = CliRunner().invoke(main, ["leaderboard", "compare", str(pair[0]), str(pair[1]), "--resamples", "300",
                                       "--json", str(out), "--plot", str(tmp_path / "cmp.png")])
    assert result.exit_code == 0, result.output
    assert "verdict: AttentDifferNet (SENet) [mean of 2] better on 5/5" in result.output
    assert "Wilcoxon signed-rank p = 0.0625" in result.output
    assert (tmp_path / "cmp.png").stat().st_size > 0
    comparison = json.loads(out.read_text())
    table = render.build_table([("a", json.loads((pair[0] / "results.json").read_text())),
                                ("b", json.loads((pair[1] / "results.json").read_text()))])
    assert render.mark_significance(table, comparison)
    text = render.to_markdown(table)
    assert text.count("↑") >= 6 and "significantly above/below DifferNet [mean of 2]" in text
    rendered = CliRunner().invoke(main, ["leaderboard", "render", str(pair[0]), str(pair[1]), "--significance", str(out)])
    assert rendered.exit_code == 0 and "↑" in rendered.output


def test_different_test_sets_are_refused_in_one_line(pair: tuple[Path, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    other = submission(tmp_path / "o", "differnet", "cbam", scores_for(rng, 1.0, 19, 10), 19, 10)
    result = CliRunner().invoke(main, ["leaderboard", "compare", str(pair[0]), str(other)])
    assert result.exit_code == 1 and "a paired comparison needs the same test set" in result.output
