"""The predictions format: what a method writes per category, and what scoring reads back.

A run's predictions folder holds one sub-folder per category::

    <run>/<category>/predictions.json
    <run>/<category>/maps/<defect>/<stem>.npz      (optional anomaly maps)

``predictions.json``::

    {"format": "insplad-predictions/1", "category": "glass_insulator",
     "items": [{"image": "glass_insulator/test/good/000.png", "score": 0.12,
                "map": "maps/good/000.npz"}, ...]}

``image`` is the path relative to the dataset root (as :mod:`insplad_tools.mvtec` names it),
``map`` is relative to the category folder or null. A map file is an ``.npz`` without pickles
holding one 2-D float16/float32 array under the key ``map``, at any resolution: scoring resizes
it bilinearly to the mask's size. An optional ``"crop": {"resize": R, "crop": C}`` says the maps
cover a resize-then-centre-crop view of each image (:mod:`leaderboard.region`); scoring then
transforms the masks identically. Absent or null: the maps cover the whole image.

A submission (the output of ``insplad benchmark``) is ``results.json`` plus
``predictions/seed-<seed>/`` run folders.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from insplad_tools.errors import InspladError
from insplad_tools.fsutil import atomic_write_bytes, atomic_write_text
from insplad_tools.jsonfile import load_json
from leaderboard.region import CentreCrop, crop_from_json

FORMAT = "insplad-predictions/1"
PREDICTIONS_FILE = "predictions.json"
MAX_JSON_BYTES = 64 << 20
MAX_MAP_BYTES = 64 << 20
MAX_MAP_PIXELS = 8192 * 8192
MAX_ITEMS = 1_000_000
ZIP_MAGIC = b"PK\x03\x04"


class PredictionsError(InspladError):
    """A predictions file or map is malformed or unsafe."""


@dataclass(frozen=True)
class Prediction:
    image: str
    score: float
    map: str | None = None


@dataclass
class CategoryPredictions:
    category: str
    folder: Path
    items: list[Prediction]
    crop: CentreCrop | None = None  # the view of each image the maps cover (None: the whole image)

    def load_map(self, item: Prediction) -> np.ndarray | None:
        return None if item.map is None else load_map_file(self.folder, item.map)


def safe_relative(base: Path, rel: str, *, what: str) -> Path:
    """Resolve ``rel`` under ``base``, refusing absolute paths, ``..`` and escapes via links."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or "\\" in rel or any(part == ".." for part in pure.parts) or not pure.parts:
        raise PredictionsError(f"{base}: {what} path {rel!r} escapes the folder")
    resolved = (base / pure).resolve()
    if not resolved.is_relative_to(base.resolve()):
        raise PredictionsError(f"{base}: {what} path {rel!r} escapes the folder")
    return resolved


def load_map_file(folder: Path, rel: str) -> np.ndarray:
    """Load one anomaly map safely: no pickles, bounded size, 2-D finite floats."""
    path = safe_relative(folder, rel, what="map")
    if not path.is_file():
        raise PredictionsError(f"{path}: map file is missing")
    if path.suffix != ".npz":
        raise PredictionsError(f"{path}: map must be an .npz file")
    if path.stat().st_size > MAX_MAP_BYTES:
        raise PredictionsError(f"{path}: map file larger than {MAX_MAP_BYTES >> 20} MiB")
    # np.load on anything but a zip would hand back a bare array (or refuse a pickle): check the magic first.
    with open(path, "rb") as handle:
        if handle.read(4) != ZIP_MAGIC:
            raise PredictionsError(f"{path}: not an npz (zip) file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "map" not in data.files:
                raise PredictionsError(f"{path}: no array named 'map' in the npz")
            info = data.zip.getinfo("map.npy")
            if info.file_size > 8 * MAX_MAP_PIXELS + 4096:
                raise PredictionsError(f"{path}: map decompresses to more than {8 * MAX_MAP_PIXELS >> 20} MiB")
            array = data["map"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, KeyError,
            NotImplementedError, RuntimeError) as exc:
        raise PredictionsError(f"{path}: unreadable map ({type(exc).__name__}: {exc})") from exc
    if array.ndim != 2 or array.size == 0 or array.size > MAX_MAP_PIXELS:
        raise PredictionsError(f"{path}: map must be a non-empty 2-D array, got shape {array.shape}")
    if array.dtype not in (np.float16, np.float32, np.float64):
        raise PredictionsError(f"{path}: map dtype {array.dtype} is not float16/float32/float64")
    if not np.isfinite(array).all():
        raise PredictionsError(f"{path}: map contains NaN or inf")
    return array.astype(np.float32, copy=False)


def map_name(image_rel: str) -> str:
    """Where the map of a test image goes inside its category folder."""
    parts = PurePosixPath(image_rel).parts
    defect, stem = parts[-2], PurePosixPath(parts[-1]).stem
    return f"maps/{defect}/{stem}.npz"


def save_map_file(target: Path, amap: np.ndarray, dtype: str = "float32") -> None:
    """Write one map as an ``.npz`` (key ``map``, deflated) whose bytes depend only on the array,
    atomically: the same map always gives the same file, and a killed run leaves no half file."""
    array = io.BytesIO()
    np.lib.format.write_array(array, np.ascontiguousarray(np.asarray(amap, dtype=dtype)), allow_pickle=False)
    info = zipfile.ZipInfo("map.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(info, array.getvalue())
    atomic_write_bytes(Path(target), archive.getvalue())


def write_category(folder: Path, category: str, items: list[tuple[str, float, np.ndarray | None]],
                   *, map_dtype: str = "float32", crop: CentreCrop | None = None) -> None:
    """Write one category's predictions: (image rel path, score, optional 2-D map) per test image;
    ``crop`` when the maps cover a centre crop of each image rather than the whole image."""
    folder = Path(folder)
    records = []
    for image, score, amap in items:
        if not math.isfinite(float(score)):
            raise PredictionsError(f"{image}: image score is {score} (not finite)")
        entry: dict = {"image": image, "score": float(score), "map": None}
        if amap is not None:
            rel = map_name(image)
            save_map_file(folder / rel, amap, map_dtype)
            entry["map"] = rel
        records.append(entry)
    payload: dict = {"format": FORMAT, "category": category, "items": records}
    if crop is not None:
        payload["crop"] = crop.to_json()
    atomic_write_text(folder / PREDICTIONS_FILE, json.dumps(payload, indent=1) + "\n")


def read_category(folder: Path) -> CategoryPredictions:
    """Read and structurally check one category's ``predictions.json``."""
    folder = Path(folder)
    path = folder / PREDICTIONS_FILE
    if not path.is_file():
        raise PredictionsError(f"{path}: missing")
    try:
        data = load_json(path, max_bytes=MAX_JSON_BYTES)
    except InspladError as exc:
        raise PredictionsError(exc.message) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PredictionsError(f"{path}: not an {FORMAT} file (format field missing or different)")
    if not isinstance(data.get("items"), list) or not isinstance(data.get("category"), str):
        raise PredictionsError(f"{path}: needs a 'category' string and an 'items' list")
    items = []
    for i, raw in enumerate(data["items"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("image"), str):
            raise PredictionsError(f"{path}: item {i} has no 'image' string")
        score = raw.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise PredictionsError(f"{path}: item {i} ({raw['image']}) has no numeric 'score'")
        amap = raw.get("map")
        if amap is not None and not isinstance(amap, str):
            raise PredictionsError(f"{path}: item {i} ({raw['image']}) has a non-string 'map'")
        if amap is not None:
            safe_relative(folder, amap, what="map")
        try:
            value = float(score)
        except OverflowError as exc:
            raise PredictionsError(f"{path}: item {i} ({raw['image']}) has a score too large for a float") from exc
        items.append(Prediction(raw["image"], value, amap))
    if len(items) > MAX_ITEMS:
        raise PredictionsError(f"{path}: more than {MAX_ITEMS} items")
    try:
        crop = crop_from_json(data.get("crop"))
    except ValueError as exc:
        raise PredictionsError(f"{path}: {exc}") from None
    return CategoryPredictions(data["category"], folder, items, crop)


def read_run(run_dir: Path) -> dict[str, CategoryPredictions]:
    """Read every category folder of a run's predictions."""
    run_dir = Path(run_dir)
    folders = sorted(p.parent for p in run_dir.glob(f"*/{PREDICTIONS_FILE}"))
    if not folders:
        raise PredictionsError(f"{run_dir}: no <category>/{PREDICTIONS_FILE} found")
    out = {}
    for folder in folders:
        preds = read_category(folder)
        if preds.category != folder.name:
            raise PredictionsError(f"{folder / PREDICTIONS_FILE}: category {preds.category!r} does not match folder name")
        out[preds.category] = preds
    return out


def run_dirs(submission: Path) -> dict[int, Path]:
    """The ``predictions/seed-<seed>`` run folders of a submission, by seed."""
    base = Path(submission) / "predictions"
    runs = {}
    for child in sorted(base.glob("seed-*")):
        try:
            runs[int(child.name.removeprefix("seed-"))] = child
        except ValueError as exc:
            raise PredictionsError(f"{child}: run folder must be named seed-<integer>") from exc
    return runs
