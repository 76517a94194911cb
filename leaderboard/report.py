"""``insplad report``: one self-contained HTML page for one or more runs (or grid folders).

The page holds the results table beside the papers' reference rows, per category ROC and PR curves,
score histograms (good vs anomalous) with the F1-max threshold, anomaly-map overlays with the
ground-truth outline for map methods, a gallery of the worst false positives and false negatives,
and each run's metadata (hardware, versions, options, protocol and warnings). Every figure is an
inline PNG (``data:`` URI) and the styles are inline, so the file opens anywhere with no network.

Images and masks come from the dataset (``--data``); without it the page still has tables, curves
and histograms, and says that galleries need ``--data``.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from insplad_tools.errors import InspladError
from leaderboard.region import CentreCrop

RESULTS_FILE = "results.json"
GALLERY = 4  # worst false positives / negatives shown per category and run
OVERLAYS = 3  # highest-scored anomalous images shown with their maps
THUMB = 160
MAX_RUNS = 40

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#1d2430;padding:0 16px}
h1{font-size:1.6em}h2{border-bottom:2px solid #dfe3ea;padding-bottom:4px;margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:10px 0;font-size:.9em}th,td{border:1px solid #d5dae2;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}caption{caption-side:top;font-weight:600;text-align:left;padding:4px 0;white-space:nowrap}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:6px 10px;margin:6px 0}
.meta td{text-align:left;vertical-align:top}.meta{font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #d5dae2;padding:4px;font-size:.78em;text-align:center;width:min-content}
.card img{display:block}figure{margin:6px 0}figcaption{font-size:.8em;color:#555}
.runs{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:14px}
"""


@dataclass
class Run:
    """One submission folder: its results document and predictions by seed."""

    label: str
    folder: Path
    doc: dict[str, Any]


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Submission folders among ``paths``: each path itself when it holds results.json, else the
    folders below it (a grid output) that do, in name order."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_file() and path.name == RESULTS_FILE:
            path = path.parent
        if (path / RESULTS_FILE).is_file():
            found.append(path)
            continue
        below = sorted({p.parent for p in path.glob(f"*/{RESULTS_FILE}")} | {p.parent for p in path.glob(f"*/*/{RESULTS_FILE}")})
        if not below:
            raise InspladError(f"{path}: no {RESULTS_FILE} here or in its sub-folders (give a run or grid folder)")
        found.extend(below)
    if len(found) > MAX_RUNS:
        raise InspladError(f"{len(found)} runs found; a report holds at most {MAX_RUNS} (name fewer folders)")
    return list(dict.fromkeys(found))


def load_runs(folders: Sequence[Path]) -> list[Run]:
    from leaderboard.render import display_label
    from leaderboard.results import load_results

    runs = []
    for folder in folders:
        doc = load_results(folder / RESULTS_FILE)
        runs.append(Run(display_label(doc).removesuffix(" — ours"), folder, doc))
    return runs


# -- figures --------------------------------------------------------------------------------------
def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img_tag(uri: str, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img src="{uri}" alt="{html.escape(alt)}"{size}>'


def _label_of(image_rel: str) -> int:
    parts = image_rel.split("/")
    return 0 if len(parts) >= 3 and parts[-2] == "good" else 1


@dataclass
class Scored:
    image: str
    label: int
    score: float
    map_rel: str | None


def _category_scores(run: Run, category: str) -> tuple[list[Scored], Any] | None:
    """Scores of the run's first seed for one category, and its predictions (for maps)."""
    from leaderboard.predictions import read_category, run_dirs

    seeds = run_dirs(run.folder)
    if not seeds:
        return None
    folder = seeds[min(seeds)] / category
    if not (folder / "predictions.json").is_file():
        return None
    preds = read_category(folder)
    return [Scored(p.image, _label_of(p.image), p.score, p.map) for p in preds.items], preds


def curves_figure(category: str, per_run: list[tuple[str, list[Scored]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(9, 3.6))
    for label, scored in per_run:
        y = np.array([s.label for s in scored])
        x = np.array([s.score for s in scored])
        if len(set(y.tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, x)
        prec, rec, _ = precision_recall_curve(y, x)
        ax_roc.plot(fpr, tpr, label=f"{label} (AUROC {100 * auc(fpr, tpr):.1f})")
        ax_pr.plot(rec, prec, label=f"{label} (AP {100 * auc(rec, prec):.1f})")
    ax_roc.plot([0, 1], [0, 1], color="#bbb", lw=1, ls="--")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{category}: ROC")
    ax_pr.set(xlabel="recall", ylabel="precision", title=f"{category}: precision-recall")
    for ax in (ax_roc, ax_pr):
        ax.legend(fontsize=7, loc="lower right" if ax is ax_roc else "lower left")
        ax.grid(alpha=0.3)
    return _png(fig)


def f1_threshold(scored: list[Scored]) -> tuple[float, float]:
    """The score threshold (``score >= t``) with the best F1, and that F1."""
    scores = np.array([s.score for s in scored])
    labels = np.array([s.label for s in scored])
    best = (float("inf"), 0.0)
    for t in np.unique(scores):
        pred = scores >= t
        tp = int(np.sum(pred & (labels == 1)))
        if tp == 0:
            continue
        f1 = 2 * tp / (2 * tp + int(np.sum(pred & (labels == 0))) + int(np.sum(~pred & (labels == 1))))
        if f1 > best[1]:
            best = (float(t), f1)
    return best


def histogram_figure(category: str, label: str, scored: list[Scored]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [s.score for s in scored if s.label == 0]
    bad = [s.score for s in scored if s.label == 1]
    fig, ax = plt.subplots(figsize=(4.4, 2.8))
    bins = np.histogram_bin_edges([s.score for s in scored], bins=24)
    ax.hist(good, bins=bins, alpha=0.6, label=f"good ({len(good)})", color="#3a7bd5")
    ax.hist(bad, bins=bins, alpha=0.6, label=f"anomalous ({len(bad)})", color="#d9480f")
    threshold, f1 = f1_threshold(scored)
    if np.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"F1-max {100 * f1:.1f} at {threshold:.3g}")
    ax.set(xlabel="anomaly score", ylabel="images", title=f"{label}\n{category}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    return _png(fig)


def _thumb(path: Path, size: int = THUMB) -> np.ndarray:
    from methods.data import load_rgb

    img = load_rgb(path)
    img.thumbnail((size, size))
    return np.asarray(img)


def overlay_figure(image: Path, amap: np.ndarray, mask: Path | None, title: str, crop: CentreCrop | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from methods.data import load_rgb

    rgb = np.asarray(load_rgb(image) if crop is None else crop.image(load_rgb(image)))  # the view the map covers
    h, w = rgb.shape[:2]
    heat = np.asarray(Image.fromarray(np.asarray(amap, np.float32)).resize((w, h), Image.BILINEAR))
    fig, axes = plt.subplots(1, 2, figsize=(4.6, 2.4))
    axes[0].imshow(rgb)
    axes[0].set_title("image + ground truth", fontsize=7)
    axes[1].imshow(rgb)
    axes[1].imshow(heat, cmap="inferno", alpha=0.55)
    axes[1].set_title(title, fontsize=7)
    if mask is not None and mask.is_file():
        gt = np.asarray(Image.open(mask).convert("L"))
        gt = np.asarray(Image.fromarray(gt if crop is None else crop.mask(gt)).resize((w, h), Image.NEAREST)) > 127
        for ax in axes:
            ax.contour(gt, levels=[0.5], colors="#00e676", linewidths=1)
    for ax in axes:
        ax.axis("off")
    return _png(fig)


# -- page -----------------------------------------------------------------------------------------
def _metadata(run: Run) -> str:
    doc = run.doc
    esc = html.escape
    training = doc.get("training") or {}
    hardware = doc.get("hardware") or {}
    rows = [
        ("folder", str(run.folder)),
        ("method / variant", f"{doc['method']} — " + ", ".join(f"{k}={v}" for k, v in sorted((doc.get('variant') or {}).items()))),
        ("dataset", f"{doc['dataset']['name']} ({doc['dataset']['manifest_sha256'][:12]}…)"),
        ("protocol", str(doc.get("protocol") or training.get("protocol") or "not recorded")),
        ("seeds / report", f"{doc['aggregation']['seeds']} / {doc['aggregation']['report']}"),
        ("training", ", ".join(f"{k}={v}" for k, v in sorted(training.items()) if k != "options") or "–"),
        ("hardware", ", ".join(f"{k}={v}" for k, v in sorted(hardware.items())) or "–"),
        ("versions", f"insplad {doc.get('package_version', '?')}, commit {doc.get('git_commit') or '–'}"),
        ("wall time", f"{doc['wall_time_s']:.1f} s" if isinstance(doc.get("wall_time_s"), (int, float)) else "–"),
        ("trainable parameters", f"{doc['trainable_params']:,}" if isinstance(doc.get("trainable_params"), int) else "–"),
    ]
    out = [f"<div><h3>{esc(run.label)}</h3>"]
    for note in _warnings(doc):
        out.append(f'<div class="warn">{esc(note)}</div>')
    out.append('<table class="meta">' + "".join(f"<tr><td><b>{esc(k)}</b></td><td>{esc(v)}</td></tr>" for k, v in rows)
               + "</table></div>")
    return "\n".join(out)


def _warnings(doc: dict[str, Any]) -> list[str]:
    notes = [str(n) for n in doc.get("notes") or []]
    protocol = doc.get("protocol") or (doc.get("training") or {}).get("protocol")
    if protocol == "paper":
        notes.insert(0, "test-set model selection: the reported epoch was chosen by its test score (--protocol paper)")
    return notes


def _tables(runs: list[Run], reference: str | None) -> str:
    from leaderboard.render import build_table, to_html

    metrics = ["image_auroc"] + [m for m in ("pixel_auroc", "aupro")
                                 if any(doc_has(r.doc, m) for r in runs)]
    out = []
    for metric in metrics:
        use_ref = reference if reference and _reference_metric(reference) == metric else None
        table = build_table([(str(r.folder), r.doc) for r in runs], reference=use_ref, metric=metric)
        out.append(to_html(table))
    return "\n".join(out)


def doc_has(doc: dict[str, Any], metric: str) -> bool:
    return any(row.get(metric) is not None for row in doc["categories"])


def _reference_metric(reference: str) -> str:
    from leaderboard.render import read_reference

    return read_reference(reference)[0]


def build_report(paths: Sequence[Path], data: Path | None = None, reference: str | None = None,
                 progress: bool = False) -> str:
    """The whole HTML page for the runs found under ``paths``."""
    from tqdm.auto import tqdm

    from insplad_tools import __version__, mvtec

    runs = load_runs(find_runs(paths))
    dataset = mvtec.read_dataset(data) if data is not None else None
    categories = sorted({row["category"] for r in runs for row in r.doc["categories"]})
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>insplad report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>insplad report</h1><p>{len(runs)} run(s), {len(categories)} categor{'y' if len(categories) == 1 else 'ies'}; "
             f"insplad {esc(__version__)}.</p>",
             '<h2 id="results">Results</h2>', _tables(runs, reference),
             '<h2 id="runs">Runs</h2><div class="runs">', *[_metadata(r) for r in runs], "</div>",
             '<h2 id="categories">Per category</h2>']
    if dataset is None:
        parts.append('<p class="warn">Galleries and map overlays need the dataset: pass --data DATASET.</p>')
    for category in tqdm(categories, desc="report", unit="category", disable=not progress, leave=False):
        parts.append(f'<h3 id="cat-{esc(category)}">{esc(category)}</h3>')
        per_run: list[tuple[Run, list[Scored], Any]] = []
        for run in runs:
            got = _category_scores(run, category)
            if got is not None:
                per_run.append((run, *got))
        if not per_run:
            parts.append("<p>No predictions.</p>")
            continue
        parts.append(f'<figure>{_img_tag(curves_figure(category, [(r.label, s) for r, s, _ in per_run]), f"{category} curves")}'
                     "<figcaption>ROC and precision-recall curves of each run's first seed.</figcaption></figure>")
        parts.append('<div class="grid">' + "".join(
            _img_tag(histogram_figure(category, r.label, s), f"{r.label} histogram") for r, s, _ in per_run) + "</div>")
        thresholds = []
        for r, s, _ in per_run:
            t, f1 = f1_threshold(s)
            thresholds.append(f"{esc(r.label)}: F1-max {100 * f1:.1f} % at score ≥ {t:.4g}" if np.isfinite(t)
                              else f"{esc(r.label)}: no anomalous image scored")
        parts.append("<p><small>Score histograms, dashed line at the F1-max threshold. " + "; ".join(thresholds)
                     + ".</small></p>")
        if dataset is not None and category in dataset:
            parts.append(_galleries(category, per_run, dataset[category]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _galleries(category: str, per_run: list[tuple[Run, list[Scored], Any]], cat: Any) -> str:
    esc = html.escape
    by_rel = {s.rel: s for s in cat.test}
    out = []
    for run, scored, preds in per_run:
        fps = sorted((s for s in scored if s.label == 0), key=lambda s: -s.score)[:GALLERY]
        fns = sorted((s for s in scored if s.label == 1), key=lambda s: s.score)[:GALLERY]
        cards = []
        for kind, items in (("false positive (good, high score)", fps), ("false negative (anomalous, low score)", fns)):
            for s in items:
                sample = by_rel.get(s.image)
                if sample is None or not sample.path.is_file():
                    continue
                uri = _thumb_uri(sample.path)
                cards.append(f'<div class="card">{_img_tag(uri, s.image)}{esc(kind)}<br>{esc(s.image.split("/")[-1])}'
                             f"<br>score {s.score:.4g}</div>")
        out.append(f"<h4>{esc(run.label)}: worst cases</h4><div class=\"grid\">{''.join(cards) or 'none'}</div>")
        with_maps = [s for s in scored if s.label == 1 and s.map_rel is not None]
        if with_maps:
            figs = []
            for s in sorted(with_maps, key=lambda s: -s.score)[:OVERLAYS]:
                sample = by_rel.get(s.image)
                if sample is None:
                    continue
                amap = preds.load_map(next(p for p in preds.items if p.image == s.image))
                figs.append(_img_tag(overlay_figure(sample.path, amap, sample.mask_path, f"anomaly map, score {s.score:.3g}",
                                                    preds.crop),
                                     f"{s.image} overlay"))
            out.append(f"<h4>{esc(run.label)}: anomaly maps (green: ground truth)</h4><div class=\"grid\">{''.join(figs)}</div>")
    return "\n".join(out)


def _thumb_uri(path: Path) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_thumb(path)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The HTML file to write.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The dataset the runs were scored on (for galleries, overlays and masks).")
@click.option("--reference", type=click.Choice(["insplad-fault", "mvtec", "wafer", "insplad-seg-auroc", "insplad-seg-aupro"]),
              default=None, help="Put the seeds' published columns beside ours in the matching metric's table.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def report(runs, out, data, reference, quiet) -> None:
    """One self-contained HTML page for RUNS (run folders, or grid folders holding runs).

    \b
    Several runs compare side by side on one page:
      insplad report runs/differnet-none runs/differnet-se --data data/ --reference insplad-fault --out report.html
    """
    from insplad_tools.fsutil import atomic_write_text
    from insplad_tools.safety import ensure_disjoint

    ensure_disjoint(out, {**{f"RUN {r}": r for r in runs}, "--data": data})
    page = build_report(list(runs), data, reference, progress=not quiet)
    atomic_write_text(out, page)
    click.echo(f"wrote {out} ({len(page) / 2**20:.1f} MiB)")
