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
      "notes": ["free text, e.g. 'teacher randomly initialised (--no-pretrained)'"],
      "crop": {"resize": 329, "crop": 288}
    }

The full field reference is ``leaderboard/SCHEMA.md``. Metric values are fractions in [0, 1]
(tables print them as percentages). ``null`` means the
method or dataset has no such number (no maps, or no masks). The reported per-category value
is the best run (``report: best``, as seed 000 reports the best of two runs) or the mean.
``crop`` (optional, absent or null for whole-image maps) records that the maps cover a
resize-then-centre-crop view and the pixel metrics were computed over the identically cropped
masks (:mod:`leaderboard.region`).
"""

from __future__ import annotations

import json
import math
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from insplad_tools.errors import InspladError
from insplad_tools.fsutil import atomic_write_text
from insplad_tools.jsonfile import load_json
from leaderboard.region import crop_from_json

SCHEMA = "insplad-results/1"
METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
HEADLINE = ("image_auroc", "pixel_auroc", "aupro")
REPORTS = ("best", "mean")
TOLERANCE = 1e-6  # claimed numbers must match their recomputation this closely


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


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _differs(claimed: Any, expected: Any, tolerance: float = TOLERANCE) -> bool:
    if claimed is None or expected is None:
        return (claimed is None) != (expected is None)
    return not _is_number(claimed) or abs(claimed - expected) > tolerance


def _check_variant(variant: dict, problems: list[str]) -> None:
    for key in ("backbone", "attention"):
        if key in variant and not (variant[key] is None or isinstance(variant[key], str)):
            problems.append(f"variant.{key}: must be a string or null")
    blocks = variant.get("blocks")
    if "blocks" in variant and not (isinstance(blocks, list) and all(_is_int(b) for b in blocks)):
        problems.append("variant.blocks: must be a list of non-negative integers")


def _check_meta(doc: dict, problems: list[str]) -> None:
    """The optional descriptive fields: checked for type whenever present."""
    training = doc.get("training")
    if training is not None:
        if not isinstance(training, dict):
            problems.append("training: must be an object")
        else:
            for key, minimum in (("epochs", 0), ("batch_size", 1), ("workers", 0), ("cache_budget_mb", 0)):
                if training.get(key) is not None and not _is_int(training[key], minimum):
                    problems.append(f"training.{key}: must be an integer >= {minimum}")
            size = training.get("image_size")
            if size is not None and not (_is_int(size, 1) or (isinstance(size, list) and len(size) == 2
                                                              and all(_is_int(s, 1) for s in size))):
                problems.append("training.image_size: must be a positive integer or [height, width]")
    if doc.get("hardware") is not None and not isinstance(doc["hardware"], dict):
        problems.append("hardware: must be an object")
    wall = doc.get("wall_time_s")
    if wall is not None and not (_is_number(wall) and wall >= 0):
        problems.append("wall_time_s: must be a non-negative number")
    params = doc.get("trainable_params")
    if params is not None and not _is_int(params):
        problems.append("trainable_params: must be a non-negative integer")
    for key in ("package_version", "created"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            problems.append(f"{key}: must be a string")
    if isinstance(doc.get("created"), str):
        try:
            datetime.fromisoformat(doc["created"])
        except ValueError:
            problems.append(f"created: {doc['created']!r} is not an ISO 8601 date-time")
    commit = doc.get("git_commit")
    if commit is not None and not (isinstance(commit, str) and 7 <= len(commit) <= 64
                                   and all(c in "0123456789abcdef" for c in commit)):
        problems.append("git_commit: must be a lowercase hex commit id or null")
    notes = doc.get("notes")
    if notes is not None and not (isinstance(notes, list) and all(isinstance(n, str) for n in notes)):
        problems.append("notes: must be a list of strings")
    _check_protocol(doc.get("protocol"), problems)
    try:
        crop_from_json(doc.get("crop"))
    except ValueError as exc:
        problems.append(f"crop: {exc}")


PROTOCOLS = {"clean": "last epoch", "paper": "test-set model selection"}


def _check_protocol(protocol: Any, problems: list[str]) -> None:
    """``protocol`` is optional (files before it count as ``clean``); when present, name and selection agree."""
    if protocol is None:
        return
    if not isinstance(protocol, dict) or protocol.get("name") not in PROTOCOLS:
        problems.append(f"protocol.name: must be one of {', '.join(PROTOCOLS)}")
        return
    if protocol.get("model_selection") != PROTOCOLS[protocol["name"]]:
        problems.append(f"protocol.model_selection: must be {PROTOCOLS[protocol['name']]!r} for protocol "
                        f"{protocol['name']!r}")
    every = protocol.get("eval_every")
    if every is not None and not _is_int(every, 1):
        problems.append("protocol.eval_every: must be an integer >= 1 or null")
    split = protocol.get("val_split")
    if split is not None and not (_is_number(split) and 0 < split < 1):
        problems.append("protocol.val_split: must be a fraction in (0, 1) or null")


def is_test_selected(doc: dict) -> bool:
    """Whether the numbers of a results document come from test-set model selection (``--protocol paper``)."""
    protocol = doc.get("protocol")
    return isinstance(protocol, dict) and protocol.get("name") == "paper"


def _check_row(row: dict, where: str, seeds: list[int], report: str | None, problems: list[str]) -> None:
    for key in ("n_test_good", "n_test_anomalous", "n_masks"):
        if not _is_int(row.get(key)):
            problems.append(f"{where}.{key}: must be a non-negative integer")
    runs = row.get("runs")
    if not isinstance(runs, list) or not runs:
        problems.append(f"{where}.runs: must be a non-empty list")
        return
    if not all(isinstance(r, dict) for r in runs):
        problems.append(f"{where}.runs: every run must be an object")
        return
    run_seeds = [r.get("seed") for r in runs]
    if not all(_is_int(s) for s in run_seeds):
        problems.append(f"{where}.runs: every run needs an integer 'seed'")
    elif len(set(run_seeds)) != len(run_seeds):
        problems.append(f"{where}.runs: duplicate seeds {run_seeds}")
    elif seeds and sorted(run_seeds) != sorted(seeds):
        problems.append(f"{where}.runs: seeds {run_seeds} differ from aggregation.seeds {seeds}")
    runs_ok = True
    for run in runs:
        for metric in METRICS:
            value = run.get(metric)
            if value is not None and not _is_fraction(value):
                problems.append(f"{where}.runs[seed={run.get('seed')}].{metric}: {value!r} is not a number in [0, 1]")
                runs_ok = False
        if run.get("image_auroc") is None:
            problems.append(f"{where}.runs[seed={run.get('seed')}].image_auroc: required")
            runs_ok = False
        if row.get("n_masks") == 0 and (run.get("pixel_auroc") is not None or run.get("aupro") is not None):
            problems.append(f"{where}.runs[seed={run.get('seed')}]: pixel metrics given but the category has no masks")
    for metric in METRICS:
        for suffix in ("", "_mean", "_std", "_best"):
            value = row.get(metric + suffix)
            if value is not None and not (_is_fraction(value) or (suffix == "_std" and _is_number(value) and value >= 0)):
                problems.append(f"{where}.{metric}{suffix}: {value!r} is not a number in [0, 1]")
                runs_ok = False
    if row.get("image_auroc") is None:
        problems.append(f"{where}.image_auroc: required")
    elif runs_ok and report in REPORTS:
        expected = aggregate_runs(runs, report)
        for key, value in expected.items():
            if _differs(row.get(key), value):
                problems.append(f"{where}.{key}: claims {row.get(key)!r} but its runs give {value!r} ({report} of the runs)")


def validate_results(doc: Any) -> list[str]:
    """Every way ``doc`` departs from the schema, one message each (empty when valid).

    Besides types and ranges it checks the document against itself: each category's reported,
    mean, std and best values against its runs, and the mean row against the categories.
    """
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
    if not doc["method"]:
        problems.append("method: must not be empty")
    _check_variant(doc["variant"], problems)
    dataset = doc["dataset"]
    if not (isinstance(dataset.get("name"), str) and dataset["name"]):
        problems.append("dataset.name: must be a non-empty string")
    listed = dataset.get("categories")
    if listed is not None and not (isinstance(listed, list) and all(isinstance(c, str) and c for c in listed)
                                   and len(set(listed)) == len(listed)):
        problems.append("dataset.categories: must be a list of distinct category names")
        listed = None
    sha = dataset.get("manifest_sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        problems.append("dataset.manifest_sha256: must be 64 lowercase hex characters")
    agg = doc["aggregation"]
    report = agg.get("report")
    if report not in REPORTS:
        problems.append(f"aggregation.report: must be one of {REPORTS}")
    seeds = agg.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(_is_int(s) for s in seeds)):
        problems.append("aggregation.seeds: must be a non-empty list of non-negative integers")
        seeds = []
    elif len(set(seeds)) != len(seeds):
        problems.append("aggregation.seeds: duplicate seeds")
        seeds = []
    if not doc["categories"]:
        problems.append("categories: must list at least one category")
    names: set[str] = set()
    rows_ok = True
    for i, row in enumerate(doc["categories"]):
        if not isinstance(row, dict) or not isinstance(row.get("category"), str) or not row["category"]:
            problems.append(f"categories[{i}]: must be an object with a 'category' name")
            rows_ok = False
            continue
        where = f"categories[{row['category']}]"
        if row["category"] in names:
            problems.append(f"{where}: listed twice")
        names.add(row["category"])
        _check_row(row, where, seeds, report, problems)
        rows_ok = rows_ok and all(row.get(m) is None or _is_fraction(row[m]) for m in HEADLINE)
    if listed is not None:
        outside = sorted(names - set(listed))
        if outside:
            problems.append(f"categories: {', '.join(outside)} not in dataset.categories")
    mean = doc["mean"]
    for metric in HEADLINE:
        value = mean.get(metric)
        if value is not None and not _is_fraction(value):
            problems.append(f"mean.{metric}: {value!r} is not a number in [0, 1]")
            rows_ok = False
    if rows_ok:
        for metric, value in mean_row(doc["categories"]).items():
            if _differs(mean.get(metric), value):
                problems.append(f"mean.{metric}: claims {mean.get(metric)!r} but the categories average to {value!r}")
    _check_meta(doc, problems)
    return problems


def coverage(doc: dict[str, Any], dataset_categories: list[str] | None = None) -> tuple[int, int, list[str]] | None:
    """(categories covered, categories in the dataset, missing names) of a results document, or
    None when the dataset's category list is unknown (not recorded and not given)."""
    listed = dataset_categories
    if listed is None:
        dataset = doc.get("dataset") if isinstance(doc.get("dataset"), dict) else {}
        listed = dataset.get("categories") if isinstance(dataset.get("categories"), list) else None
    if listed is None:
        return None
    listed = [c for c in listed if isinstance(c, str)]
    rows = {r.get("category") for r in doc.get("categories", []) if isinstance(r, dict) and isinstance(r.get("category"), str)}
    missing = sorted(c for c in listed if c not in rows)
    return len(listed) - len(missing), len(listed), missing


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
        doc = load_json(path, max_bytes=max_bytes)
    except InspladError as exc:
        raise ResultsError(exc.message) from None
    problems = validate_results(doc)
    if problems:
        raise ResultsError(f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return doc
