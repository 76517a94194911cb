"""Merge a grid's finished trials: one submission per variant and one leaderboard for the grid.

``RUNS/results/`` (replaced atomically on every merge)::

    results/<variant>/results.json                       insplad-results/1 over the grid's seeds
    results/<variant>/predictions/seed-<s>/<category>/   the trials' predictions (hard links or copies)
    results/leaderboard-<metric>.md / .csv / .png        every variant beside the grid's reference

Only categories whose every seed is done are merged (never a partial trial or half a category).
The merged files hold metrics, settings and notes only: the volatile fields of a results file
(``hardware``, ``wall_time_s``, ``created``, ``git_commit``) are left out, so the same trials give
byte-identical merged files whichever engine ran them. Timings go to ``RUNS/timings.csv``.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insplad_tools import __version__, mvtec
from insplad_tools.fsutil import atomic_output_dir, atomic_write_text
from insplad_tools.grid.runner import Plan
from insplad_tools.grid.trials import RESULTS_FILE, Trial
from leaderboard.results import METRICS, build_results, load_results, write_results

RESULTS_DIR = "results"
TIMINGS_FILE = "timings.csv"
COMMAND = "insplad grid"


@dataclass
class MergeSummary:
    variants: dict[str, list[str]] = field(default_factory=dict)  # variant -> merged categories
    incomplete: dict[str, list[str]] = field(default_factory=dict)  # variant -> categories not (yet) complete
    tables: list[Path] = field(default_factory=list)


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or copy, across file systems) every file of ``source`` into ``target``."""
    for path in sorted(source.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copyfile(path, dest)


def _variant_doc(plan: Plan, runs: Path, trials: list[Trial], categories: list[str]) -> dict[str, Any]:
    per_category: dict[str, dict[str, Any]] = {}
    first: dict[str, Any] | None = None
    notes: list[str] = []
    for category in categories:
        runs_rows = []
        for seed in plan.spec.seeds:
            trial = next(t for t in trials if t.category == category and t.seed == seed)
            doc = load_results(trial.folder(runs, plan.keys[trial.id]) / RESULTS_FILE)
            first = first or doc
            (row,) = doc["categories"]
            runs_rows.append({"seed": seed, **{m: row["runs"][0].get(m) for m in METRICS}})
            notes.extend(n for n in doc.get("notes", []) if n not in notes)
            per_category[category] = {k: row[k] for k in ("n_test_good", "n_test_anomalous", "n_masks")}
        per_category[category]["runs"] = runs_rows
    assert first is not None
    return build_results(
        method=first["method"], variant=first["variant"],
        dataset={"name": mvtec.dataset_name(plan.data), "manifest_sha256": plan.digest, "categories": list(plan.available)},
        seeds=list(plan.spec.seeds), report=plan.spec.report, per_category=per_category,
        training=first.get("training"), trainable_params=first.get("trainable_params"),
        package_version=__version__, notes=notes,
        **({"protocol": first["protocol"]} if first.get("protocol") is not None else {}))


def merge(plan: Plan, runs: Path) -> MergeSummary:
    """Write ``RUNS/results/`` from the done trials of ``plan`` (see the module docstring)."""
    from leaderboard import render

    runs = Path(runs)
    summary = MergeSummary()
    ready: list[tuple[str, dict[str, Any], list[Trial], list[str]]] = []
    for variant in plan.spec.variants:
        trials = [t for t in plan.trials if t.variant.name == variant.name]
        complete = [c for c in plan.categories
                    if all(t.id in plan.done for t in trials if t.category == c)]
        missing = [c for c in plan.categories if c not in complete]
        if missing:
            summary.incomplete[variant.name] = missing
        if complete:
            ready.append((variant.name, _variant_doc(plan, runs, trials, complete), trials, complete))
    with atomic_output_dir(runs / RESULTS_DIR, overwrite=True, command=COMMAND) as tmp:
        docs = []
        for name, doc, trials, complete in ready:
            folder = tmp / name
            for trial in trials:
                if trial.category in complete:
                    source = trial.folder(runs, plan.keys[trial.id]) / "predictions" / f"seed-{trial.seed}" / trial.category
                    _link_tree(source, folder / "predictions" / f"seed-{trial.seed}" / trial.category)
            write_results(folder / RESULTS_FILE, doc)
            docs.append((f"{RESULTS_DIR}/{name}", doc))
            summary.variants[name] = complete
        if docs:
            for metric in plan.spec.metrics:
                reference = next((r for r in plan.spec.references if _reference_metric(r) == metric), None)
                underline = "simplenet" if (reference or "").startswith("insplad-seg") else "differnet"
                table = render.build_table(docs, reference=reference, metric=metric, underline_family=underline)
                for fmt in ("md", "csv"):
                    atomic_write_text(tmp / f"leaderboard-{metric}.{fmt}", render.FORMATS[fmt](table))
                render.plot(table, tmp / f"leaderboard-{metric}.png")
                summary.tables.append(runs / RESULTS_DIR / f"leaderboard-{metric}.md")
    _write_timings(plan, runs)
    return summary


def _reference_metric(reference: str) -> str:
    from leaderboard.render import read_reference

    return read_reference(reference)[0]


def _write_timings(plan: Plan, runs: Path) -> None:
    """Per-trial wall time, engine, host and device of the done trials (volatile; not merged results)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "variant", "category", "seed", "engine", "host", "device", "attempts", "wall_s", "finished"])
    for trial in plan.trials:
        marker = plan.done.get(trial.id)
        if marker:
            writer.writerow([trial.id, trial.variant.name, trial.category, trial.seed, marker.get("engine"),
                             marker.get("host"), marker.get("device"), marker.get("attempts"), marker.get("wall_s"),
                             marker.get("finished")])
    atomic_write_text(runs / TIMINGS_FILE, buffer.getvalue())
