"""``insplad leaderboard``: score predictions, check submissions, render tables."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from insplad_tools import __version__, mvtec
from insplad_tools.errors import InspladError, one_line_os_errors
from insplad_tools.jsonfile import load_json
from insplad_tools.safety import ensure_disjoint
from insplad_tools.provenance import git_commit
from leaderboard.predictions import PREDICTIONS_FILE, run_dirs
from leaderboard.results import (
    REPORTS,
    ResultsError,
    build_results,
    load_results,
    write_results,
)

RESULTS_FILE = "results.json"
MAX_THRESHOLDS = 1_000_000  # binned AUPRO: beyond this the exact computation is cheaper
PASSTHROUGH = ("training", "hardware", "wall_time_s", "trainable_params", "package_version", "git_commit", "notes")
DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def print_results(doc: dict[str, Any]) -> None:
    """A rich table of a results document: categories and the mean, metrics in %."""
    from rich.console import Console
    from rich.table import Table

    agg = doc["aggregation"]
    title = f"{doc['method']} on {doc['dataset']['name']}, % ({agg['report']} of seeds {agg['seeds']})"
    table = Table(title=title)
    table.add_column("category", no_wrap=True)
    for name in ("img AUROC", "pix AUROC", "AUPRO", "F1-max", "good/bad/masks"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in doc["categories"]:
        table.add_row(row["category"], _pct(row["image_auroc"]), _pct(row["pixel_auroc"]), _pct(row["aupro"]),
                      _pct(row["f1_max"]), f"{row['n_test_good']}/{row['n_test_anomalous']}/{row['n_masks']}")
    mean = doc["mean"]
    table.add_row("mean", _pct(mean["image_auroc"]), _pct(mean["pixel_auroc"]), _pct(mean["aupro"]), "", "", style="bold")
    Console().print(table)


def _per_category(scored_by_seed: dict[int, dict[str, dict]]) -> dict[str, dict]:
    per_category: dict[str, dict] = {}
    for seed, scored in sorted(scored_by_seed.items()):
        for name, metrics in scored.items():
            entry = per_category.setdefault(name, {k: metrics[k] for k in ("n_test_good", "n_test_anomalous", "n_masks")})
            entry.setdefault("runs", []).append(
                {"seed": seed, **{k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max")}})
    names = [set(s) for s in scored_by_seed.values()]
    if any(n != names[0] for n in names):
        raise InspladError("the seed runs do not hold the same categories")
    return per_category


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def leaderboard() -> None:
    """Score predictions, check submissions and render result tables.

    \b
    Every number on the leaderboard is computed here, from a method's predictions
    (<run>/<category>/predictions.json + optional .npz maps) and the dataset's labels and masks:
      insplad leaderboard score runs/se/predictions/seed-0 --data data/ --out se.json
      insplad leaderboard check runs/se --data data/
      insplad leaderboard render runs/se/results.json --reference insplad-fault --format md
    """


@leaderboard.command()
@click.argument("pred_dir", type=DIR)
@click.option("--data", "data", required=True, type=DIR, help="The dataset (MVTec AD layout) the predictions are for.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the insplad-results/1 JSON here (default: only print the table).")
@click.option("--method", default=None, help="Method name to record for a run folder (default: the folder's name).")
@click.option("--seed", type=click.IntRange(min=0, max=2**31 - 1), default=0, show_default=True,
              help="Seed to record for a run folder (a submission's seeds come from predictions/seed-<s>).")
@click.option("--report", type=click.Choice(REPORTS), default=None,
              help="Per-category value over seeds: best run (seed 000's best of two) or mean. "
                   "Default: the submission's own choice, else best.")
@click.option("--thresholds", type=click.IntRange(min=2, max=MAX_THRESHOLDS), default=None,
              help="Binned AUPRO with about this many thresholds (bounded memory; "
                   "error <= largest FPR step / 0.3). Default: exact.")
@click.option("--category", "categories", multiple=True, help="Score only this category (repeatable).")
@one_line_os_errors
def score(pred_dir: Path, data: Path, out: Path | None, method: str | None, seed: int, report: str | None,
          thresholds: int | None, categories: tuple[str, ...]) -> None:
    """Compute image AUROC, pixel AUROC, AUPRO and F1-max from predictions.

    PRED_DIR is a run folder (<category>/predictions.json) or a submission
    (results.json + predictions/seed-<s>/). The scores are printed as a table and,
    with --out, written as a results file.
    """
    from leaderboard.scoring import score_run

    if out is not None:
        ensure_disjoint(out, {"PRED_DIR": pred_dir, "--data": data})
        if out.exists():
            try:
                load_results(out)
            except ResultsError:
                raise InspladError(f"{out}: exists and is not a results file; it is never overwritten "
                                   "(remove it yourself or choose another --out)") from None
    previous: dict[str, Any] = {}
    if (pred_dir / "predictions").is_dir():
        runs = run_dirs(pred_dir)
        if not runs:
            raise InspladError(f"{pred_dir / 'predictions'}: no seed-<s> run folders")
        if (pred_dir / RESULTS_FILE).is_file():
            previous = load_json(pred_dir / RESULTS_FILE, max_bytes=16 << 20)
            if not isinstance(previous, dict):
                raise ResultsError(f"{pred_dir / RESULTS_FILE}: top level must be a JSON object")
    elif any(pred_dir.glob(f"*/{PREDICTIONS_FILE}")):
        runs = {seed: pred_dir}
    else:
        raise InspladError(f"{pred_dir}: neither a run folder (<category>/{PREDICTIONS_FILE}) "
                           "nor a submission (predictions/seed-<s>/)")
    scored = {s: score_run(data, run, categories=list(categories) or None, thresholds=thresholds, progress=True)
              for s, run in runs.items()}
    prev_agg = previous.get("aggregation") if isinstance(previous.get("aggregation"), dict) else {}
    meta = {k: previous[k] for k in PASSTHROUGH if k in previous}
    crops = {json.dumps(m.get("crop"), sort_keys=True) for scored_run in scored.values() for m in scored_run.values()}
    if len(crops) > 1:
        raise InspladError(f"{pred_dir}: the categories' maps cover different regions (crops {', '.join(sorted(crops))}); "
                           "score them separately")
    crop = json.loads(crops.pop()) if crops else None
    if crop is not None:  # the maps cover a centre crop; the masks were cropped the same way (leaderboard.region)
        meta["crop"] = crop
    meta.setdefault("package_version", __version__)
    meta.setdefault("git_commit", git_commit())
    meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc = build_results(
        method=method or previous.get("method") or pred_dir.resolve().name,
        variant=previous.get("variant") if isinstance(previous.get("variant"), dict) else {},
        dataset={"name": mvtec.dataset_name(data), "manifest_sha256": mvtec.dataset_digest(data),
                 "categories": mvtec.list_categories(data)},
        seeds=sorted(runs), report=report or prev_agg.get("report") or "best",
        per_category=_per_category(scored), **meta)
    print_results(doc)
    if out is not None:
        write_results(out, doc)
        click.echo(f"wrote {out}")


@leaderboard.command()
@click.argument("submission", type=DIR)
@click.option("--data", "data", required=True, type=DIR, help="The dataset the submission claims to be scored on.")
@click.option("--thresholds", type=click.IntRange(min=2, max=MAX_THRESHOLDS), default=None,
              help="Recompute AUPRO binned (only for submissions scored the same way). Default: exact.")
@click.option("--allow-partial", is_flag=True,
              help="Accept a submission that covers only some of the dataset's categories (a deliberate subset, "
                   "e.g. a one-category ablation); its coverage is still stated.")
@one_line_os_errors
def check(submission: Path, data: Path, thresholds: int | None, allow_partial: bool) -> None:
    """Verify a submission before accepting its numbers.

    \b
    Checks: results.json follows insplad-results/1; its dataset digest matches DATA;
    every run has exactly one finite prediction per test image (none missing, extra,
    duplicated or from train/); maps are safe .npz files (never unpickled), finite and
    sanely shaped; no path leaves the submission folder; every claimed number is
    recomputed from the predictions and must agree within 1e-6; and it covers every
    category of DATA (or --allow-partial, with the coverage stated).
    Exits 0 only when there is no problem.
    """
    from leaderboard.check import check_submission, coverage_line

    problems = check_submission(submission, data, thresholds=thresholds, progress=True, allow_partial=allow_partial)
    try:
        doc = load_json(submission / RESULTS_FILE, max_bytes=16 << 20)
        if isinstance(doc, dict) and isinstance(doc.get("categories"), list):
            click.echo(coverage_line(doc, mvtec.list_categories(data)))
    except InspladError:
        pass  # already among the problems
    if problems:
        for problem in problems:
            click.echo(f"✗ {problem}")
        click.echo(f"{submission}: REJECTED ({len(problems)} problem{'s' if len(problems) != 1 else ''})", err=True)
        sys.exit(1)
    click.echo(f"✓ {submission}: every claimed number matches its predictions")


def _read_results(path: Path) -> dict[str, Any]:
    return load_results(path / RESULTS_FILE if path.is_dir() else path)


@leaderboard.command()
@click.argument("results", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "html", "csv"]), default="md", show_default=True,
              help="Output format (csv is one line per cell, with best/best_in_family flags).")
@click.option("--reference", type=click.Choice(["insplad-fault", "mvtec", "wafer", "insplad-seg-auroc", "insplad-seg-aupro"]),
              default=None, help="Put the seeds' published columns beside ours "
                                 "(seed 000 Tables 2-4, seed 003 Tables 2-3).")
@click.option("--metric", type=click.Choice(["image_auroc", "pixel_auroc", "aupro", "f1_max"]), default=None,
              help="Metric to tabulate (default: the reference's, else image_auroc).")
@click.option("--underline", "underline_family", default=None,
              help="Underline the best column of this method family (default: differnet, or simplenet for "
                   "the insplad-seg references).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here instead of stdout.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw a grouped bar chart of the table as a PNG.")
@click.option("--significance", "comparisons", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A JSON written by `leaderboard compare A B --json` (repeatable): A's cells get ↑/↓ where "
                   "A - B is significant.")
@one_line_os_errors
def render(results: tuple[Path, ...], fmt: str, reference: str | None, metric: str | None,
           underline_family: str | None, out: Path | None, plot_path: Path | None,
           comparisons: tuple[Path, ...] = ()) -> None:
    """Tabulate results files (or submission folders) like the papers' tables.

    Rows are categories and the mean, columns are methods/variants, values are % with two
    decimals; the best value of each row is bold and the best DifferNet variant underlined.
    """
    from insplad_tools.fsutil import atomic_write_text
    from leaderboard import render as rendering

    if not results and not reference:
        raise click.UsageError("give at least one results file or a --reference")
    # A results file inside a submission stands for the whole submission folder.
    inputs = {f"RESULTS {path}": path.parent if path.is_file() and (path.parent / "predictions").is_dir() else path
              for path in results}
    for target in (out, plot_path):
        if target is not None:
            ensure_disjoint(target, inputs)
    if out is not None and plot_path is not None and out.resolve() == plot_path.resolve():
        raise InspladError(f"--out and --plot are the same file {out}")
    docs = [(str(path), _read_results(path)) for path in results]
    if underline_family is None:
        underline_family = "simplenet" if reference and reference.startswith("insplad-seg") else "differnet"
    try:
        table = rendering.build_table(docs, reference=reference, metric=metric, underline_family=underline_family)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    for path in comparisons:
        comparison = load_json(path, max_bytes=16 << 20)
        if not isinstance(comparison, dict) or not {"a_label", "b_label", "categories", "mean_ci"} <= set(comparison):
            raise InspladError(f"{path}: not a comparison written by insplad leaderboard compare --json")
        if not rendering.mark_significance(table, comparison):
            click.echo(f"warning: {path}: {comparison['a_label']} ({comparison.get('metric')}) is not a column of this "
                       "table; no marks", err=True)
    text = rendering.FORMATS[fmt](table)
    if out is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        click.echo(f"wrote {out}", err=True)
    if plot_path is not None:
        rendering.plot(table, plot_path)
        click.echo(f"wrote {plot_path}", err=True)


@leaderboard.command()
@click.argument("a", type=DIR)
@click.argument("b", type=DIR)
@click.option("--resamples", type=click.IntRange(min=100, max=1_000_000), default=2000, show_default=True,
              help="Bootstrap resamples (test images per class, and seeds of a side with 2+ seeds).")
@click.option("--confidence", type=click.FloatRange(min=0.5, max=0.999), default=0.95, show_default=True,
              help="Confidence level of the intervals.")
@click.option("--seed", "random_seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed of the bootstrap (the output is deterministic for a given seed).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the comparison as JSON (render --significance reads it).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw a forest plot of A - B per category with the intervals (PNG).")
@one_line_os_errors
def compare(a: Path, b: Path, resamples: int, confidence: float, random_seed: int, json_out: Path | None,
            plot_path: Path | None) -> None:
    """Paired statistics of submission A against submission B on image AUROC.

    \b
    A and B are submission folders (results.json + predictions/seed-<s>/) scored on the
    same dataset, e.g. AttentDifferNet-SE vs DifferNet, each with several seeds:
      insplad leaderboard compare runs/t2/results/differnet-se runs/t2/results/differnet-none
    Per category: mean ± std over seeds, the difference A - B with a bootstrap interval over
    the test images (same images for A and B) and the seeds; across categories: Wilcoxon
    signed-rank and sign tests; then one verdict line. Method: leaderboard/compare.py.
    """
    import statistics

    from rich.console import Console
    from rich.table import Table

    from insplad_tools.fsutil import atomic_write_text
    from leaderboard import compare as comparing

    inputs = {"A": a, "B": b}
    for target in (json_out, plot_path):
        if target is not None:
            ensure_disjoint(target, inputs)
    cmp = comparing.compare(a, b, resamples=resamples, confidence=confidence, seed=random_seed)
    level = f"{round(100 * confidence)}% CI"
    table = Table(title=f"A = {cmp.a_label}  vs  B = {cmp.b_label}: image AUROC, %")
    for name in ("category", "good/anom", "A mean ± std", "B mean ± std", "A − B", level, ""):
        table.add_column(name, justify="left" if name == "category" else "right", no_wrap=True)
    for row in cmp.categories:
        table.add_row(row.category, f"{row.n_good}/{row.n_anomalous}", f"{100 * row.a_mean:.2f} ± {100 * row.a_std:.2f}",
                      f"{100 * row.b_mean:.2f} ± {100 * row.b_std:.2f}", f"{100 * row.diff:+.2f}",
                      f"[{100 * row.ci_low:+.2f}, {100 * row.ci_high:+.2f}]", "*" if row.significant else "")
    significant = cmp.mean_ci[0] > 0 or cmp.mean_ci[1] < 0
    table.add_row("mean", "", f"{100 * statistics.fmean(r.a_mean for r in cmp.categories):.2f}",
                  f"{100 * statistics.fmean(r.b_mean for r in cmp.categories):.2f}", f"{100 * cmp.mean_diff:+.2f}",
                  f"[{100 * cmp.mean_ci[0]:+.2f}, {100 * cmp.mean_ci[1]:+.2f}]", "*" if significant else "", style="bold")
    table.caption = f"* : the {level} of A − B excludes 0"
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    click.echo(comparing.to_text(cmp))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(cmp.as_dict(), indent=1) + "\n")
        click.echo(f"wrote {json_out}", err=True)
    if plot_path is not None:
        comparing.plot(cmp, plot_path)
        click.echo(f"wrote {plot_path}", err=True)
