"""Predictions + dataset -> metrics: the only place where a method's outputs become numbers.

Every method's numbers on the leaderboard come from :func:`score_category`, so image AUROC,
pixel AUROC and AUPRO mean the same thing in every row of every table.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from insplad_tools import mvtec
from insplad_tools.errors import DatasetError
from insplad_tools.safety import image_size_guard
from leaderboard import metrics
from leaderboard.predictions import CategoryPredictions, Prediction, PredictionsError, read_run
from leaderboard.region import crop_json
from leaderboard.resize import resize_bilinear

MAX_LISTED = 5


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def prediction_problems(category: mvtec.Category, preds: CategoryPredictions) -> list[str]:
    """Every way ``preds`` fails to hold exactly one finite score per test image of ``category``."""
    where = preds.folder / "predictions.json"
    problems = []
    if preds.category != category.name:
        problems.append(f"{where}: predictions are for category {preds.category!r}, not {category.name!r}")
    test = {s.rel for s in category.test}
    train = {s.rel for s in category.train}
    counts = Counter(p.image for p in preds.items)
    duplicated = sorted(name for name, n in counts.items() if n > 1)
    training = sorted(name for name in counts if name in train)
    unknown = sorted(name for name in counts if name not in test and name not in train)
    missing = sorted(test - set(counts))
    if duplicated:
        problems.append(f"{where}: {len(duplicated)} image(s) predicted more than once: {_listing(duplicated)}")
    if training:
        problems.append(f"{where}: {len(training)} training image(s) among the predictions: {_listing(training)}")
    if unknown:
        problems.append(f"{where}: {len(unknown)} image(s) that are not test images of {category.name}: {_listing(unknown)}")
    if missing:
        problems.append(f"{where}: {len(missing)} test image(s) without a prediction: {_listing(missing)}")
    bad_scores = sorted(p.image for p in preds.items if not np.isfinite(p.score))
    if bad_scores:
        problems.append(f"{where}: {len(bad_scores)} score(s) are NaN or infinite: {_listing(bad_scores)}")
    return problems


def matched_predictions(category: mvtec.Category, preds: CategoryPredictions) -> list[Prediction]:
    """The predictions in the order of ``category.test``; raises :class:`PredictionsError` on any mismatch."""
    problems = prediction_problems(category, preds)
    if problems:
        raise PredictionsError("; ".join(problems))
    by_image = {p.image: p for p in preds.items}
    return [by_image[s.rel] for s in category.test]


def read_mask(sample: mvtec.Sample) -> np.ndarray:
    """The boolean ground-truth mask of an anomalous test image (any non-zero pixel is anomalous)."""
    try:
        with image_size_guard(sample.mask_path), Image.open(sample.mask_path) as img:
            mask = np.asarray(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{sample.mask_path}: unreadable mask ({exc})") from exc
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    return mask > 0


def image_shape(sample: mvtec.Sample) -> tuple[int, int]:
    """(rows, cols) of a test image, read from its header only."""
    try:
        with image_size_guard(sample.path), Image.open(sample.path) as img:
            width, height = img.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{sample.path}: unreadable image ({exc})") from exc
    return height, width


def pixel_inputs(category: mvtec.Category, preds: CategoryPredictions,
                 ordered: list[Prediction]) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """Masks and maps resized to the masks for every test image, or None when pixel metrics do not apply.

    They apply when every test image has a map and every anomalous test image has a mask. Normal
    images get an all-zero mask of the image's size. When the predictions declare a centre crop
    (:mod:`leaderboard.region`), each mask is cropped as the method cropped its image, so the
    metrics cover the crop.
    """
    if not all(p.map is not None for p in ordered):
        return None
    if not all(s.mask_rel is not None for s in category.test if s.label == 1):
        return None
    masks, maps = [], []
    for sample, pred in zip(category.test, ordered):
        if sample.label == 1:
            mask = read_mask(sample)
            if preds.crop is not None:
                mask = preds.crop.mask(mask)
        else:
            mask = np.zeros(image_shape(sample) if preds.crop is None else preds.crop.shape, dtype=bool)
        amap = preds.load_map(pred)
        masks.append(mask)
        maps.append(resize_bilinear(amap, mask.shape))
    return masks, maps


def score_category(category: mvtec.Category, preds: CategoryPredictions, *, thresholds: int | None = None) -> dict:
    """Metrics of one category's predictions.

    Returns ``image_auroc``, ``f1_max``, ``pixel_auroc`` and ``aupro`` (None without a map for
    every test image or without masks), ``n_test_good``, ``n_test_anomalous``, ``n_masks`` and, when
    the maps cover a centre crop, ``crop`` (its JSON form, :mod:`leaderboard.region`). ``thresholds=N``
    uses the binned AUPRO (see :mod:`leaderboard.metrics.aupro`).
    """
    ordered = matched_predictions(category, preds)
    labels = np.array([s.label for s in category.test])
    scores = np.array([p.score for p in ordered], dtype=np.float64)
    counts = category.counts()
    where = preds.folder / "predictions.json"
    try:
        result: dict = {"image_auroc": metrics.image_auroc(labels, scores), "f1_max": metrics.f1_max(labels, scores)}
    except ValueError as exc:
        raise PredictionsError(f"{where}: cannot score {category.name}: {exc}") from exc
    result.update(pixel_auroc=None, aupro=None)
    pixel = pixel_inputs(category, preds, ordered) if counts["masks"] else None
    if pixel is not None:
        masks, maps = pixel
        try:
            result["pixel_auroc"] = metrics.pixel_auroc(masks, maps)
            result["aupro"] = metrics.aupro(masks, maps, thresholds=thresholds)
        except ValueError as exc:
            raise PredictionsError(f"{where}: cannot compute pixel metrics of {category.name}: {exc}") from exc
    result.update(n_test_good=counts["test_good"], n_test_anomalous=counts["test_anomalous"], n_masks=counts["masks"])
    if preds.crop is not None:
        result["crop"] = crop_json(preds.crop)
    return result


def score_run(dataset_root: Path, run_dir: Path, *, categories: list[str] | None = None,
              thresholds: int | None = None, progress: bool = False) -> dict[str, dict]:
    """Score every category of a run folder (``<run>/<category>/predictions.json``) against the dataset.

    ``categories`` restricts (and requires) the named categories; by default every category the run
    holds is scored, and each must exist in the dataset.
    """
    run = read_run(run_dir)
    wanted = list(categories) if categories else sorted(run)
    absent = [c for c in wanted if c not in run]
    if absent:
        raise PredictionsError(f"{run_dir}: no predictions for categor{'y' if len(absent) == 1 else 'ies'} {', '.join(absent)}")
    dataset = mvtec.read_dataset(Path(dataset_root), wanted)
    names = wanted
    if progress:
        from tqdm import tqdm
        names = tqdm(wanted, desc=f"scoring {Path(run_dir).name}", unit="category")
    return {name: score_category(dataset[name], run[name], thresholds=thresholds) for name in names}
