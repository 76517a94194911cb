"""Submission checks: everything a maintainer verifies before accepting a number.

A submission is a folder with ``results.json`` and ``predictions/seed-<s>/<category>/`` run
folders. :func:`check_submission` lists every problem it finds (an empty list means accepted):
the schema; the dataset digest; exactly one finite prediction per test image in every run; safe,
finite, sanely shaped maps; the region the maps cover (whole image, or the centre crop
``results.json`` records, :mod:`leaderboard.region`) the same in every run; and every claimed number
recomputed from the predictions (masks cropped as the predictions declare).

Nothing here unpickles: maps are read with ``allow_pickle=False`` after a zip-magic check, no
``torch.load``; every path is resolved and must stay inside the submission folder; file sizes are
capped before reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from insplad_tools import mvtec
from insplad_tools.errors import InspladError
from insplad_tools.jsonfile import load_json
from leaderboard.predictions import (MAX_MAP_PIXELS, PREDICTIONS_FILE, CategoryPredictions, PredictionsError,
                                     load_map_file, read_category, run_dirs)
from leaderboard.region import crop_json
from leaderboard.results import METRICS, TOLERANCE, aggregate_runs, coverage, mean_row, validate_results
from leaderboard.scoring import prediction_problems, score_category

RESULTS_FILE = "results.json"
MAX_RESULTS_BYTES = 16 << 20
MIN_MAP_SIDE = 2


def _inside(root: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _load_doc(submission: Path, root: Path, problems: list[str]) -> dict[str, Any] | None:
    path = submission / RESULTS_FILE
    if not path.is_file():
        problems.append(f"{path}: missing")
        return None
    if not _inside(root, path):
        problems.append(f"{path}: resolves outside the submission folder (symlink)")
        return None
    try:
        doc = load_json(path, max_bytes=MAX_RESULTS_BYTES)
    except InspladError as exc:
        problems.append(exc.message)
        return None
    problems.extend(f"{path}: {p}" for p in validate_results(doc))
    return doc if isinstance(doc, dict) else None


def _check_maps(preds: CategoryPredictions, problems: list[str]) -> bool:
    """Load every map once to check it is safe, finite and sanely shaped; True when all are fine."""
    with_maps = [p for p in preds.items if p.map is not None]
    if with_maps and len(with_maps) != len(preds.items):
        problems.append(f"{preds.folder / PREDICTIONS_FILE}: only {len(with_maps)} of {len(preds.items)} images "
                        "have a map (give every test image a map, or none)")
    ok = True
    for item in with_maps:
        try:
            amap = load_map_file(preds.folder, item.map)
        except PredictionsError as exc:
            problems.append(f"{item.image}: {exc.message}")
            ok = False
            continue
        if min(amap.shape) < MIN_MAP_SIDE or amap.size > MAX_MAP_PIXELS:
            problems.append(f"{item.image}: map shape {amap.shape} is not a sane image shape")
            ok = False
    return ok


def _mismatch(claimed: Any, actual: float | None) -> bool:
    """True unless ``claimed`` equals ``actual`` within the tolerance (both None counts as equal)."""
    if claimed is None or actual is None:
        return (claimed is None) != (actual is None)
    ok_type = isinstance(claimed, (int, float)) and not isinstance(claimed, bool)
    return not ok_type or not abs(claimed - actual) <= TOLERANCE


def _compare_run(name: str, seed: int, claimed: dict, got: dict, problems: list[str]) -> None:
    for metric in METRICS:
        if _mismatch(claimed.get(metric), got.get(metric)):
            problems.append(f"categories[{name}].runs[seed={seed}].{metric}: claims {claimed.get(metric)!r} "
                            f"but the predictions give {got.get(metric)!r}")


def _compare_counts(row: dict, category: mvtec.Category, problems: list[str]) -> None:
    counts = category.counts()
    for key, actual in (("n_test_good", counts["test_good"]), ("n_test_anomalous", counts["test_anomalous"]),
                        ("n_masks", counts["masks"])):
        if row.get(key) != actual:
            problems.append(f"categories[{category.name}].{key}: claims {row.get(key)!r} but the dataset has {actual}")


def coverage_line(doc: dict[str, Any], dataset_names: list[str]) -> str:
    """How much of the dataset a results document covers, in words (stated by ``check``)."""
    covered, total, missing = coverage(doc, dataset_names) or (0, len(dataset_names), list(dataset_names))
    if not missing:
        return f"coverage: all {total} categories of the dataset"
    return (f"coverage: PARTIAL, {covered} of {total} categories (missing: {', '.join(missing)}); "
            f"its mean is over these {covered} only and is not the dataset mean")


def check_submission(submission: Path, dataset_root: Path, *, thresholds: int | None = None,
                     progress: bool = False, allow_partial: bool = False) -> list[str]:
    """Every problem with a submission, one clear message each; empty when it can be accepted.

    A submission that leaves out categories of the dataset is a problem unless ``allow_partial``
    (a deliberate subset, e.g. the one-category ablation of seed 000 Table 5).
    """
    submission = Path(submission)
    if not submission.is_dir():
        return [f"{submission}: not a folder"]
    root = submission.resolve()
    problems: list[str] = []
    doc = _load_doc(submission, root, problems)
    if doc is None or not isinstance(doc.get("categories"), list) or not isinstance(doc.get("aggregation"), dict):
        return problems
    try:
        dataset_names = mvtec.list_categories(dataset_root)
        digest = mvtec.dataset_digest(dataset_root)
    except InspladError as exc:
        return problems + [exc.message]
    claimed_sha = doc.get("dataset", {}).get("manifest_sha256") if isinstance(doc.get("dataset"), dict) else None
    if claimed_sha != digest:
        problems.append(f"dataset.manifest_sha256: {claimed_sha!r} does not match the dataset at {dataset_root} "
                        f"({digest})")
    rows = {r["category"]: r for r in doc["categories"] if isinstance(r, dict) and isinstance(r.get("category"), str)}
    unknown = sorted(set(rows) - set(dataset_names))
    if unknown:
        problems.append(f"categories: {', '.join(unknown)} not in the dataset at {dataset_root}")
    listed = doc["dataset"].get("categories") if isinstance(doc.get("dataset"), dict) else None
    if isinstance(listed, list) and sorted(map(str, listed)) != sorted(dataset_names):
        problems.append(f"dataset.categories: {listed!r} are not the categories of the dataset at {dataset_root} "
                        f"({dataset_names})")
    missing = [n for n in dataset_names if n not in rows]
    if missing and not allow_partial:
        problems.append(f"categories: {len(missing)} of the dataset's {len(dataset_names)} categories missing "
                        f"({', '.join(missing)}): a mean over a subset is not the dataset mean "
                        "(accept a deliberate subset with --allow-partial)")
    dataset = mvtec.read_dataset(dataset_root, [n for n in rows if n in dataset_names])
    for name, category in dataset.items():
        _compare_counts(rows[name], category, problems)

    predictions = submission / "predictions"
    if not predictions.is_dir():
        return problems + [f"{predictions}: missing (a submission needs predictions/seed-<s>/ run folders)"]
    if not _inside(root, predictions):
        return problems + [f"{predictions}: resolves outside the submission folder (symlink)"]
    try:
        runs = run_dirs(submission)
    except PredictionsError as exc:
        return problems + [exc.message]
    seeds = doc["aggregation"].get("seeds")
    seeds = [s for s in seeds if isinstance(s, int) and not isinstance(s, bool)] if isinstance(seeds, list) else []
    for seed in sorted(set(seeds) - set(runs), key=str):
        problems.append(f"{predictions}/seed-{seed}: missing (aggregation.seeds lists it)")
    for seed in sorted(set(runs) - set(seeds)):
        problems.append(f"{runs[seed]}: run not listed in aggregation.seeds")

    recomputed: dict[str, list[dict]] = {name: [] for name in dataset}
    work = [(seed, name) for seed in sorted(set(runs) & set(seeds)) for name in dataset]
    if progress:
        from tqdm import tqdm
        work = tqdm(work, desc="checking", unit="run×category")
    for seed in sorted(set(runs) & set(seeds)):
        run_dir = runs[seed]
        if not _inside(root, run_dir):
            problems.append(f"{run_dir}: resolves outside the submission folder (symlink)")
            continue
        present = {p.name for p in run_dir.iterdir() if p.is_dir()}
        for extra in sorted(present - set(rows)):
            problems.append(f"{run_dir / extra}: predictions for a category that results.json does not list")
    for seed, name in work:
        run_dir = runs[seed]
        folder = run_dir / name
        if not _inside(root, run_dir):
            continue
        if not folder.is_dir():
            problems.append(f"{folder}: missing (no predictions for {name} in seed {seed})")
            continue
        if not _inside(root, folder) or not _inside(root, folder / PREDICTIONS_FILE):
            problems.append(f"{folder}: resolves outside the submission folder (symlink)")
            continue
        try:
            preds = read_category(folder)
        except PredictionsError as exc:
            problems.append(exc.message)
            continue
        if preds.category != name:
            problems.append(f"{folder / PREDICTIONS_FILE}: category {preds.category!r} does not match folder {name!r}")
            continue
        if crop_json(preds.crop) != doc.get("crop"):
            problems.append(f"{folder / PREDICTIONS_FILE}: maps cover "
                            f"{'a centre crop (' + preds.crop.describe() + ')' if preds.crop else 'the whole image'} "
                            f"but results.json records crop {doc.get('crop')!r}")
        found = prediction_problems(dataset[name], preds)
        maps_ok = _check_maps(preds, found)
        problems.extend(found)
        if found or not maps_ok:
            continue
        try:
            got = score_category(dataset[name], preds, thresholds=thresholds)
        except InspladError as exc:
            problems.append(exc.message)
            continue
        recomputed[name].append({"seed": seed, **{m: got[m] for m in METRICS}})
        claimed_runs = rows[name].get("runs") if isinstance(rows[name].get("runs"), list) else []
        claimed = next((r for r in claimed_runs if isinstance(r, dict) and r.get("seed") == seed), None)
        if claimed is None:
            problems.append(f"categories[{name}].runs: no entry for seed {seed}")
        else:
            _compare_run(name, seed, claimed, got, problems)

    # Aggregates from the recomputed runs (only where every run could be scored).
    report = doc["aggregation"].get("report")
    complete = {n: r for n, r in recomputed.items() if r and len(r) == len(set(seeds))}
    if report in ("best", "mean"):
        for name, runs_got in complete.items():
            for key, value in aggregate_runs(runs_got, report).items():
                if _mismatch(rows[name].get(key), value):
                    problems.append(f"categories[{name}].{key}: claims {rows[name].get(key)!r} "
                                    f"but the predictions give {value!r}")
        if len(complete) == len(rows) and isinstance(doc.get("mean"), dict):
            rebuilt = [dict(category=n, **aggregate_runs(r, report)) for n, r in complete.items()]
            for metric, value in mean_row(rebuilt).items():
                if _mismatch(doc["mean"].get(metric), value):
                    problems.append(f"mean.{metric}: claims {doc['mean'].get(metric)!r} but the predictions give {value!r}")
    return list(dict.fromkeys(problems))
