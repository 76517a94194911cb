"""The versioned results schema every method writes and every table reads.

``results.json`` (schema ``insplad-results/1``)::

    {
      "schema": "insplad-results/1",
      "method": "differnet",
      "variant": {"backbone": "alexnet", "attention": "se", "blocks": [1, 2, 3], ...},
      "dataset": {"name": "...", "manifest_sha256": "<64 hex>"},
      "aggregation": {"seeds": [0, 1], "report": "best" | "mean"},
      "categories": [
        {"category": "glass_insulator", "n_test_good": 10, "n_test_anomalous": 4, "n_masks": 4,
         "runs": [{"seed": 0, "image_auroc": 0.91, "pixel_auroc": null, "aupro": null, "f1_max": 0.8}, ...],
         "image_auroc": 0.93, "image_auroc_mean": 0.92, "image_auroc_std": 0.01, "image_auroc_best": 0.93,
         "pixel_auroc": null, ..., "aupro": null, ...}
      ],
      "mean": {"image_auroc": 0.93, "pixel_auroc": null, "aupro": null},
      "training": {"epochs": 10, "image_size": 448, "batch_size": 24, "pretrained": "imagenet"},
      "hardware": {"device": "cpu", "device_name": "...", "torch": "2.x"},
      "wall_time_s": 12.3, "trainable_params": 172077056,
      "package_version": "0.1.0", "git_commit": "<sha or null>", "created": "<ISO 8601>",
      "notes": ["free text, e.g. 'teacher randomly initialised (--no-pretrained)'"]
    }

Metric values are fractions in [0, 1] (tables print them as percentages). ``null`` means the
method or dataset has no such number (no maps, or no masks). The reported per-category value
is the best run (``report: best``, as seed 000 reports the best of two runs) or the mean.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from insplad_tools.errors import InspladError
from insplad_tools.fsutil import atomic_write_text

SCHEMA = "insplad-results/1"
METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
HEADLINE = ("image_auroc", "pixel_auroc", "aupro")
REPORTS = ("best", "mean")


class ResultsError(InspladError):
    """A results file does not follow the schema."""


def aggregate_runs(runs: list[dict[str, Any]], report: str) -> dict[str, Any]:
    """Per-metric mean, population std, best and reported value over a category's runs."""
    if report not in REPORTS:
        raise ValueError(f"report must be one of {REPORTS}, got {report!r}")
    out: dict[str, Any] = {}
    for metric in METRICS:
        values = [r[metric] for r in runs if r.get(metric) is not None]
        if not values:
            out.update({metric: None, f"{metric}_mean": None, f"{metric}_std": None, f"{metric}_best": None})
            continue
        mean, best = statistics.fmean(values), max(values)
        out[f"{metric}_mean"] = mean
        out[f"{metric}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        out[f"{metric}_best"] = best
        out[metric] = best if report == "best" else mean
    return out


def mean_row(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean over categories of each headline metric (categories without the metric are skipped)."""
    out: dict[str, float | None] = {}
    for metric in HEADLINE:
        values = [r[metric] for r in rows if r.get(metric) is not None]
        out[metric] = statistics.fmean(values) if values else None
    return out


def build_results(*, method: str, variant: dict, dataset: dict, seeds: list[int], report: str,
                  per_category: dict[str, dict[str, Any]], **meta: Any) -> dict[str, Any]:
    """Assemble a results document.

    ``per_category[name]`` holds ``n_test_good``, ``n_test_anomalous``, ``n_masks`` and ``runs``
    (a list of per-seed metric dicts). Everything else (training, hardware, wall_time_s, ...)
    passes through ``meta``.
    """
    rows = []
    for name in sorted(per_category):
        info = per_category[name]
        row = {"category": name, "n_test_good": info["n_test_good"], "n_test_anomalous": info["n_test_anomalous"],
               "n_masks": info.get("n_masks", 0), "runs": info["runs"]}
        row.update(aggregate_runs(info["runs"], report))
        rows.append(row)
    doc = {"schema": SCHEMA, "method": method, "variant": variant, "dataset": dataset,
           "aggregation": {"seeds": list(seeds), "report": report}, "categories": rows, "mean": mean_row(rows)}
    doc.update(meta)
    doc.setdefault("notes", [])
    return doc


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0.0 <= value <= 1.0


def validate_results(doc: Any) -> list[str]:
    """Every way ``doc`` departs from the schema, one message each (empty when valid)."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        return ["results: top level must be a JSON object"]
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema: expected {SCHEMA!r}, got {doc.get('schema')!r}")
    for key, kind in (("method", str), ("variant", dict), ("dataset", dict), ("aggregation", dict),
                      ("categories", list), ("mean", dict)):
        if not isinstance(doc.get(key), kind):
            problems.append(f"{key}: missing or not a {kind.__name__}")
    if problems:
        return problems
    dataset = doc["dataset"]
    sha = dataset.get("manifest_sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        problems.append("dataset.manifest_sha256: must be 64 lowercase hex characters")
    agg = doc["aggregation"]
    if agg.get("report") not in REPORTS:
        problems.append(f"aggregation.report: must be one of {REPORTS}")
    seeds = agg.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        problems.append("aggregation.seeds: must be a non-empty list of integers")
        seeds = []
    elif len(set(seeds)) != len(seeds):
        problems.append("aggregation.seeds: duplicate seeds")
    names = set()
    for i, row in enumerate(doc["categories"]):
        where = f"categories[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("category"), str):
            problems.append(f"{where}: must be an object with a 'category' name")
            continue
        where = f"categories[{row['category']}]"
        if row["category"] in names:
            problems.append(f"{where}: listed twice")
        names.add(row["category"])
        for key in ("n_test_good", "n_test_anomalous", "n_masks"):
            if not (isinstance(row.get(key), int) and not isinstance(row.get(key), bool) and row[key] >= 0):
                problems.append(f"{where}.{key}: must be a non-negative integer")
        runs = row.get("runs")
        if not isinstance(runs, list) or not runs:
            problems.append(f"{where}.runs: must be a non-empty list")
            continue
        run_seeds = [r.get("seed") for r in runs if isinstance(r, dict)]
        if seeds and sorted(run_seeds, key=str) != sorted(seeds, key=str):
            problems.append(f"{where}.runs: seeds {run_seeds} differ from aggregation.seeds {seeds}")
        for run in runs:
            if not isinstance(run, dict):
                problems.append(f"{where}.runs: every run must be an object")
                continue
            for metric in METRICS:
                value = run.get(metric)
                if value is not None and not _is_fraction(value):
                    problems.append(f"{where}.runs[seed={run.get('seed')}].{metric}: {value!r} is not a number in [0, 1]")
        for metric in METRICS:
            value = row.get(metric)
            if value is not None and not _is_fraction(value):
                problems.append(f"{where}.{metric}: {value!r} is not a number in [0, 1]")
        if row.get("image_auroc") is None:
            problems.append(f"{where}.image_auroc: required")
    for metric in HEADLINE:
        value = doc["mean"].get(metric)
        if value is not None and not _is_fraction(value):
            problems.append(f"mean.{metric}: {value!r} is not a number in [0, 1]")
    return problems


def write_results(path: Path, doc: dict[str, Any]) -> None:
    problems = validate_results(doc)
    if problems:
        raise ResultsError(f"{path}: refusing to write invalid results: {problems[0]}")
    atomic_write_text(Path(path), json.dumps(doc, indent=2, sort_keys=False) + "\n")


def load_results(path: Path, max_bytes: int = 16 << 20) -> dict[str, Any]:
    """Read and validate a results file; raises :class:`ResultsError` naming the first problem."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: results file not found")
    if path.stat().st_size > max_bytes:
        raise ResultsError(f"{path}: larger than {max_bytes >> 20} MiB")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    problems = validate_results(doc)
    if problems:
        raise ResultsError(f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return doc
