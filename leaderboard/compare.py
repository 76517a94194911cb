"""Paired statistics between two submissions (``insplad leaderboard compare A B``): the papers' missing error bars.

For every category both submissions cover, from their saved predictions (``predictions/seed-<s>/``):

* image AUROC per seed, mean ± population std over seeds (as in ``results.json``);
* the difference A − B of the seed means, with a bootstrap confidence interval that resamples the
  **test images** (the same resampled images for A and B: a paired design; normal and anomalous
  images resampled separately, so every resample has both classes) and the **seeds** of each side
  (when it has two or more), all at once with :func:`scipy.stats.bootstrap` (percentile method,
  a fixed random seed, so the output is deterministic);
* the same for the mean over categories (one joint resampling of every category).

Across categories, the per-category differences go to a paired test: the Wilcoxon signed-rank
test (:func:`scipy.stats.wilcoxon`, two-sided, exact for small samples) and the sign test
(:func:`scipy.stats.binomtest` on the number of categories where A is ahead). With 5 categories
neither can go below p = 0.0625, which the verdict says rather than hides.

The verdict reads "A better on k/n categories, mean +x points, 95% CI [lo, hi]" when the interval
of the mean difference excludes 0, and "no detectable difference" otherwise.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from scipy import stats

from insplad_tools.errors import InspladError
from leaderboard.metrics import image_auroc
from leaderboard.predictions import read_category, run_dirs
from leaderboard.results import load_results

RESULTS_FILE = "results.json"
GOOD = "good"
SMALLEST_P_NOTE = 6  # below this many categories the signed-rank test cannot reach p < 0.05


@dataclass
class Side:
    """One submission: its results document and image scores by category, seed and image."""

    path: Path
    doc: dict[str, Any]
    label: str
    scores: dict[str, dict[int, dict[str, float]]]


@dataclass
class CategoryComparison:
    category: str
    n_good: int
    n_anomalous: int
    a_runs: list[float]
    b_runs: list[float]
    a_mean: float
    a_std: float
    b_mean: float
    b_std: float
    diff: float
    ci_low: float
    ci_high: float

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


@dataclass
class Comparison:
    a: str
    b: str
    a_label: str
    b_label: str
    metric: str
    confidence: float
    resamples: int
    random_seed: int
    categories: list[CategoryComparison]
    mean_diff: float
    mean_ci: tuple[float, float]
    n_better: int
    n_worse: int
    wilcoxon_p: float | None
    sign_p: float | None
    verdict: str
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, cat in zip(data["categories"], self.categories):
            row["significant"] = cat.significant
        data["mean_ci"] = list(self.mean_ci)
        return data


def label_of(rel: str) -> bool:
    """True for an anomalous test image: its folder (``<category>/test/<defect>/<file>``) is not ``good``."""
    parts = PurePosixPath(rel).parts
    return len(parts) >= 2 and parts[-2] != GOOD


def load_side(path: Path) -> Side:
    """Read a submission folder (``results.json`` + ``predictions/seed-<s>/<category>/``)."""
    from leaderboard.render import display_label

    path = Path(path)
    if path.is_file() and path.name == RESULTS_FILE:
        path = path.parent
    doc = load_results(path / RESULTS_FILE)
    runs = run_dirs(path)
    seeds = doc["aggregation"]["seeds"]
    missing = [s for s in seeds if s not in runs]
    if missing:
        raise InspladError(f"{path}: no predictions/seed-{missing[0]}/ folder; compare needs the saved predictions "
                           "(a submission folder written by insplad benchmark or insplad grid)")
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for row in doc["categories"]:
        name = row["category"]
        for seed in seeds:
            preds = read_category(runs[seed] / name)
            scores.setdefault(name, {})[seed] = {p.image: p.score for p in preds.items}
    return Side(path, doc, display_label(doc).removesuffix(" — ours"), scores)


def _auroc_rows(neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Image AUROC of every row (Mann-Whitney U / n0 n1, ties count one half), over the last axis."""
    n0, n1 = neg.shape[-1], pos.shape[-1]
    ranks = stats.rankdata(np.concatenate([neg, pos], axis=-1), axis=-1)
    return (ranks[..., n0:].sum(axis=-1) - n1 * (n1 + 1) / 2) / (n0 * n1)


class _Statistic:
    """Per-category differences and their mean for index samples drawn by scipy's bootstrap.

    The samples are, per category, the indices of its normal and of its anomalous images, then the
    seed positions of A and of B (only for a side with 2+ seeds)."""

    def __init__(self, a: list[np.ndarray], b: list[np.ndarray], negs: list[np.ndarray], poss: list[np.ndarray]):
        self.a, self.b, self.negs, self.poss = a, b, negs, poss  # a[c]: (seeds, images)
        self.resample_a = a[0].shape[0] > 1
        self.resample_b = b[0].shape[0] > 1

    def samples(self) -> list[np.ndarray]:
        out = []
        for neg, pos in zip(self.negs, self.poss):
            out += [np.arange(neg.size), np.arange(pos.size)]
        if self.resample_a:
            out.append(np.arange(self.a[0].shape[0]))
        if self.resample_b:
            out.append(np.arange(self.b[0].shape[0]))
        return out

    @staticmethod
    def _side(scores: np.ndarray, neg: np.ndarray, pos: np.ndarray, seed_idx: np.ndarray | None) -> np.ndarray:
        # scores (S, N); neg/pos (B, n) image indices -> AUROC per seed (S, B) -> mean over (resampled) seeds (B,)
        per_seed = np.stack([_auroc_rows(s[neg], s[pos]) for s in scores])
        if seed_idx is None:
            return per_seed.mean(axis=0)
        return np.take_along_axis(per_seed, seed_idx.T, axis=0).mean(axis=0)

    def __call__(self, *samples: np.ndarray, axis: int = -1) -> np.ndarray:
        arrays = [np.atleast_2d(s).astype(int) for s in samples]
        flat = np.ndim(samples[0]) == 1
        n = len(self.negs)
        seed_a = arrays[2 * n] if self.resample_a else None
        seed_b = arrays[2 * n + int(self.resample_a)] if self.resample_b else None
        diffs = []
        for c in range(n):
            neg = self.negs[c][arrays[2 * c]]
            pos = self.poss[c][arrays[2 * c + 1]]
            diffs.append(self._side(self.a[c], neg, pos, seed_a) - self._side(self.b[c], neg, pos, seed_b))
        out = np.stack(diffs + [np.mean(diffs, axis=0)])
        return out[:, 0] if flat else out


def _paired_arrays(a: Side, b: Side, category: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a_runs, b_runs = a.scores[category], b.scores[category]
    images = sorted(next(iter(a_runs.values())))
    for side, runs in ((a, a_runs), (b, b_runs)):
        for seed, scores in runs.items():
            if sorted(scores) != images:
                raise InspladError(f"{side.path}: {category} seed {seed} scores other test images than "
                                   f"{a.path} seed {next(iter(a_runs))}; a paired comparison needs the same test set")
    labels = np.array([label_of(i) for i in images])
    as_array = lambda runs: np.array([[runs[s][i] for i in images] for s in sorted(runs)], dtype=np.float64)  # noqa: E731
    return labels, as_array(a_runs), as_array(b_runs)


def compare(a_path: Path, b_path: Path, *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Compare submissions A and B on image AUROC (see the module docstring for the method)."""
    if not 0.5 <= confidence < 1:
        raise InspladError(f"confidence {confidence} must be in [0.5, 1)")
    a, b = load_side(a_path), load_side(b_path)
    if a.doc["dataset"]["manifest_sha256"] != b.doc["dataset"]["manifest_sha256"]:
        raise InspladError(f"{a.path} and {b.path} were scored on different datasets (manifest digests differ)")
    common = sorted(set(a.scores) & set(b.scores))
    if not common:
        raise InspladError(f"{a.path} and {b.path} share no category")
    notes = []
    only = sorted(set(a.scores) ^ set(b.scores))
    if only:
        notes.append(f"categories in only one of them, left out: {', '.join(only)}")
    rows, arrays = [], []
    for category in common:
        labels, sa, sb = _paired_arrays(a, b, category)
        neg, pos = np.flatnonzero(~labels), np.flatnonzero(labels)
        if neg.size < 2 or pos.size < 2:
            notes.append(f"{category}: fewer than 2 normal or anomalous test images, left out (no bootstrap possible)")
            continue
        a_runs = [image_auroc(labels, s) for s in sa]
        b_runs = [image_auroc(labels, s) for s in sb]
        arrays.append((category, labels, sa, sb, neg, pos, a_runs, b_runs))
    if not arrays:
        raise InspladError("no category can be compared (each needs 2+ normal and 2+ anomalous test images)")
    statistic = _Statistic([x[2] for x in arrays], [x[3] for x in arrays], [x[4] for x in arrays], [x[5] for x in arrays])
    result = stats.bootstrap(statistic.samples(), statistic, paired=False, vectorized=True, method="percentile",
                             confidence_level=confidence, n_resamples=resamples, batch=200,
                             random_state=np.random.default_rng(seed))
    low, high = np.atleast_1d(result.confidence_interval.low), np.atleast_1d(result.confidence_interval.high)
    for i, (category, labels, _, _, neg, pos, a_runs, b_runs) in enumerate(arrays):
        a_mean, b_mean = statistics.fmean(a_runs), statistics.fmean(b_runs)
        rows.append(CategoryComparison(category, int(neg.size), int(pos.size), a_runs, b_runs, a_mean,
                                       statistics.pstdev(a_runs), b_mean, statistics.pstdev(b_runs), a_mean - b_mean,
                                       float(low[i]), float(high[i])))
    diffs = np.array([r.diff for r in rows])
    mean_diff = float(diffs.mean())
    mean_ci = (float(low[-1]), float(high[-1]))
    nonzero = diffs[diffs != 0]
    n_better, n_worse = int((diffs > 0).sum()), int((diffs < 0).sum())
    wilcoxon_p = float(stats.wilcoxon(diffs).pvalue) if nonzero.size else None
    sign_p = float(stats.binomtest(n_better, n_better + n_worse, 0.5).pvalue) if nonzero.size else None
    if len(rows) < SMALLEST_P_NOTE:
        notes.append(f"with {len(rows)} categories the two-sided signed-rank and sign tests cannot go below "
                     f"p = {2 * 0.5 ** len(rows):.4g}: read the bootstrap intervals")
    if len(a.doc["aggregation"]["seeds"]) < 2 or len(b.doc["aggregation"]["seeds"]) < 2:
        notes.append("a side has a single seed: its training variance is not in the intervals (images only)")
    pct = f"{round(100 * confidence)}% CI [{100 * mean_ci[0]:+.1f}, {100 * mean_ci[1]:+.1f}]"
    if mean_ci[0] > 0:
        verdict = f"{a.label} better on {n_better}/{len(rows)} categories, mean {100 * mean_diff:+.1f} points, {pct}"
    elif mean_ci[1] < 0:
        verdict = f"{a.label} worse on {n_worse}/{len(rows)} categories, mean {100 * mean_diff:+.1f} points, {pct}"
    else:
        verdict = f"no detectable difference: mean {100 * mean_diff:+.1f} points, {pct} includes 0"
    return Comparison(str(a.path), str(b.path), a.label, b.label, "image_auroc", confidence, resamples, seed, rows,
                      mean_diff, mean_ci, n_better, n_worse, wilcoxon_p, sign_p, verdict, notes)


def to_text(cmp: Comparison) -> str:
    """The comparison as plain text lines (what the command prints after its table)."""
    lines = [f"A = {cmp.a_label} ({cmp.a}); B = {cmp.b_label} ({cmp.b}); metric: image AUROC",
             f"paired tests over {len(cmp.categories)} categories: Wilcoxon signed-rank p = "
             f"{'–' if cmp.wilcoxon_p is None else f'{cmp.wilcoxon_p:.4g}'}, sign test p = "
             f"{'–' if cmp.sign_p is None else f'{cmp.sign_p:.4g}'} (A ahead on {cmp.n_better}, behind on {cmp.n_worse})",
             f"bootstrap: {cmp.resamples} resamples of test images (per class) and seeds, percentile "
             f"{round(100 * cmp.confidence)}% intervals, random seed {cmp.random_seed}"]
    lines += [f"note: {n}" for n in cmp.notes]
    lines.append(f"verdict: {cmp.verdict}")
    return "\n".join(lines)


def plot(cmp: Comparison, path: Path) -> None:
    """A forest plot: A − B per category and for the mean, in points, with the bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.category for c in cmp.categories] + ["mean"]
    diffs = [100 * c.diff for c in cmp.categories] + [100 * cmp.mean_diff]
    lows = [100 * c.ci_low for c in cmp.categories] + [100 * cmp.mean_ci[0]]
    highs = [100 * c.ci_high for c in cmp.categories] + [100 * cmp.mean_ci[1]]
    fig, ax = plt.subplots(figsize=(7.0, 1.0 + 0.45 * len(names)))
    y = list(range(len(names)))[::-1]
    colors = ["tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray" for lo, hi in zip(lows, highs)]
    for d, lo, hi, yy, color in zip(diffs, lows, highs, y, colors):
        ax.errorbar([d], [yy], xerr=[[d - lo], [hi - d]], fmt="none", ecolor=color, capsize=3)
    ax.scatter(diffs, y, c=colors, marker="D", zorder=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, names)
    ax.set_xlabel(f"image AUROC, A − B [points] ({round(100 * cmp.confidence)}% bootstrap CI)")
    ax.set_title(f"A = {cmp.a_label}  vs  B = {cmp.b_label}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
