"""The grid file: a TOML description of a papers' table as benchmark variants x categories x seeds.

A grid file (see ``grids/*.toml``)::

    [grid]
    name = "seed000-table2"          # what it reproduces
    dataset = "data/insplad-fault"   # relative to the current folder; --data overrides it
    categories = []                  # empty or absent: every category of the dataset
    seeds = [0, 1]                   # one trial per seed
    report = "best"                  # per-category value over the seeds: best (seed 000) or mean
    retries = 1                      # a failed trial is run again up to this many times
    reference = "insplad-fault"      # published columns beside ours (optional; a list: one per metric)
    metrics = ["image_auroc"]        # one leaderboard table per metric

    [defaults]                       # insplad benchmark settings of every variant
    epochs = 100
    device = "auto"

    [resources]                      # what one trial asks of a Ray node (cpus = torch threads too)
    cpus = 4
    gpus = 1
    memory_gb = 16

    [[variants]]                     # list values expand: 1 method x 3 attentions = 3 variants
    method = "differnet"
    attention = ["none", "se", "cbam"]
    blocks = [1, 2, 3]               # or a list of lists: one variant per block subset
    options = { flow_width = 2048 }  # --option KEY=VALUE of insplad benchmark
    # epochs = ..., resources = { gpus = 1 }: per-variant overrides of [defaults] / [resources]
    # protocol = "paper" (+ eval_every), val_split: as insplad benchmark --protocol / --eval-every / --val-split
    # name = "...": a variant's folder name (only for an entry that expands to one variant)

Every problem is reported as ``GRID_FILE: where: what`` (:class:`GridError`), never a traceback.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insplad_tools.errors import InspladError

GRID_KEYS = {"name", "description", "dataset", "categories", "seeds", "report", "retries", "reference", "metrics"}
DEFAULT_KEYS = {"epochs", "image_size", "batch_size", "device", "pretrained", "weights", "checkpoint_every",
                "protocol", "eval_every", "val_split"}
PROTOCOLS = ("clean", "paper")
RESOURCE_KEYS = {"cpus", "gpus", "memory_gb"}
VARIANT_KEYS = {"name", "method", "attention", "blocks", "options", "resources"} | DEFAULT_KEYS
ATTENTIONS = ("none", "se", "cbam")
METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")
MAX_SEED = 2**31 - 1
MAX_FILE_BYTES = 1 << 20


class GridError(InspladError):
    """A grid file does not follow the format; the message names the file and the key."""


@dataclass(frozen=True)
class Resources:
    """What one trial asks for: CPU threads (torch and Ray), GPUs and memory (Ray)."""

    cpus: int = 1
    gpus: float = 0
    memory_gb: float = 0


@dataclass(frozen=True)
class Variant:
    """One configured method: a column of the table and a ``RUNS/results/<name>/`` submission."""

    name: str
    method: str
    options: dict[str, str]
    epochs: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    pretrained: bool = True
    weights: str | None = None
    checkpoint_every: int = 1
    protocol: str = "clean"  # insplad benchmark --protocol: clean (last epoch) or paper (best test epoch)
    eval_every: int | None = None
    val_split: float = 0.0
    resources: Resources = Resources()


@dataclass
class GridSpec:
    """A validated grid file."""

    path: Path
    name: str
    description: str
    dataset: Path | None
    categories: list[str] | None
    seeds: list[int]
    report: str
    retries: int
    references: list[str]  # published tables beside ours, one per metric at most
    metrics: list[str]
    variants: list[Variant] = field(default_factory=list)


def _fail(path: Path, where: str, what: str) -> GridError:
    return GridError(f"{path}: {where}: {what}")


def _check_keys(path: Path, where: str, table: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _fail(path, where, "must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(path, where, f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    return table


def _int(path: Path, where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(path, where, f"{value!r} is not an integer in {low}..{high}")
    return value


def _number(path: Path, where: str, value: Any, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise _fail(path, where, f"{value!r} is not a number >= {low}")
    return value


def _str(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, where, f"{value!r} is not a non-empty string")
    return value


def _resources(path: Path, where: str, table: Any, base: Resources) -> Resources:
    table = _check_keys(path, where, table, RESOURCE_KEYS)
    return Resources(cpus=_int(path, f"{where}.cpus", table.get("cpus", base.cpus), 1, 1024),
                     gpus=_number(path, f"{where}.gpus", table.get("gpus", base.gpus), 0),
                     memory_gb=_number(path, f"{where}.memory_gb", table.get("memory_gb", base.memory_gb), 0))


def _settings(path: Path, where: str, table: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The benchmark settings of [defaults] or a variant, checked, on top of ``base``."""
    out = dict(base)
    for key in ("epochs", "image_size", "batch_size", "checkpoint_every"):
        if key in table:
            out[key] = _int(path, f"{where}.{key}", table[key], 16 if key == "image_size" else 1, 1_000_000)
    if "device" in table:
        out["device"] = _str(path, f"{where}.device", table["device"])
    if "pretrained" in table:
        if not isinstance(table["pretrained"], bool):
            raise _fail(path, f"{where}.pretrained", "must be true or false")
        out["pretrained"] = table["pretrained"]
    if "weights" in table:
        out["weights"] = _str(path, f"{where}.weights", table["weights"])
    if "protocol" in table:
        if table["protocol"] not in PROTOCOLS:
            raise _fail(path, f"{where}.protocol", f"{table['protocol']!r} is not one of {', '.join(PROTOCOLS)}")
        out["protocol"] = table["protocol"]
    if "eval_every" in table:
        out["eval_every"] = _int(path, f"{where}.eval_every", table["eval_every"], 1, 1_000_000)
    if "val_split" in table:
        split = _number(path, f"{where}.val_split", table["val_split"], 0)
        if split >= 1:
            raise _fail(path, f"{where}.val_split", f"{split} is not a fraction in [0, 1)")
        out["val_split"] = float(split)
    return out


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _blocks_choices(path: Path, where: str, value: Any) -> list[list[int] | None]:
    if value is None:
        return [None]
    if not isinstance(value, list) or not value:
        raise _fail(path, where, "must be a list of block numbers (e.g. [1, 2, 3]) or a list of such lists")
    subsets = value if all(isinstance(v, list) for v in value) else [value]
    out = []
    for subset in subsets:
        if not subset or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 3 for b in subset) \
                or len(set(subset)) != len(subset):
            raise _fail(path, where, f"{subset!r} is not a non-empty set of attention blocks from 1, 2, 3")
        out.append(sorted(subset))
    return out


def _option_value(path: Path, where: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise _fail(path, where, f"{value!r} must be a string, number or boolean")


def _has_option(method: str, name: str) -> bool:
    import dataclasses

    from methods.registry import get_method

    return any(f.name == name for f in dataclasses.fields(get_method(method).Options))


def _check_options(path: Path, where: str, method: str, options: dict[str, str]) -> None:
    """The method accepts these options (names and values), checked before any trial starts."""
    from methods.base import coerce_options
    from methods.registry import get_method

    try:
        coerce_options(get_method(method).Options, options)
    except InspladError as exc:
        raise _fail(path, f"{where} ({method})", exc.message) from None


def _check_protocol(path: Path, where: str, method: str, settings: dict[str, Any]) -> None:
    """``protocol = "paper"`` needs an evaluation interval: the method's reference one or ``eval_every``."""
    from methods.registry import get_method

    if settings.get("protocol", "clean") == "paper":
        if not (settings.get("eval_every") or getattr(get_method(method), "paper_eval_every", None)):
            raise _fail(path, f"{where} ({method})", "protocol 'paper' needs eval_every: the method's reference code "
                        "evaluates on no test set during training")
    elif settings.get("eval_every") is not None:
        raise _fail(path, f"{where}.eval_every", "applies only to protocol = 'paper'")


def default_variant_name(method: str, attention: str, blocks: list[int] | None) -> str:
    """``differnet-se``, ``differnet-se-ab23``: the folder name of an unnamed variant."""
    name = f"{method}-{attention}"
    return name + (f"-ab{''.join(str(b) for b in blocks)}" if blocks is not None else "")


def _variants(path: Path, entries: Any, defaults: dict[str, Any], resources: Resources) -> list[Variant]:
    from methods.registry import METHODS

    if not isinstance(entries, list) or not entries:
        raise _fail(path, "variants", "give at least one [[variants]] table")
    variants: list[Variant] = []
    for i, entry in enumerate(entries):
        where = f"variants[{i}]"
        entry = _check_keys(path, where, entry, VARIANT_KEYS)
        if "method" not in entry:
            raise _fail(path, where, "needs a 'method'")
        methods = [_str(path, f"{where}.method", m) for m in _as_list(entry["method"])]
        for method in methods:
            if method not in METHODS:
                raise _fail(path, f"{where}.method", f"unknown method {method!r} (registered: {', '.join(sorted(METHODS))})")
        attentions = [_str(path, f"{where}.attention", a) for a in _as_list(entry.get("attention", "none"))]
        for attention in attentions:
            if attention not in ATTENTIONS:
                raise _fail(path, f"{where}.attention", f"{attention!r} is not one of {', '.join(ATTENTIONS)}")
        blocks = _blocks_choices(path, f"{where}.blocks", entry.get("blocks"))
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise _fail(path, f"{where}.options", "must be a table of KEY = value (insplad benchmark --option)")
        opts = {str(k): _option_value(path, f"{where}.options.{k}", v) for k, v in sorted(options.items())}
        for reserved in ("attention", "blocks"):
            if reserved in opts:
                raise _fail(path, f"{where}.options.{reserved}", f"give {reserved} as a key of the variant, not an option")
        settings = _settings(path, where, entry, defaults)
        res = _resources(path, f"{where}.resources", entry["resources"], resources) if "resources" in entry else resources
        combos = list(itertools.product(methods, attentions, blocks))
        if "name" in entry and len(combos) > 1:
            raise _fail(path, f"{where}.name", f"a name fits one variant, but this entry expands to {len(combos)}")
        for method, attention, subset in combos:
            name = entry["name"] if "name" in entry else default_variant_name(method, attention, subset)
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise _fail(path, f"{where}.name", f"{name!r} must be lowercase letters, digits, '.', '_' or '-' (<= 80)")
            variant_options = {**opts, "attention": attention}
            if attention == "none" and not _has_option(method, "attention"):
                del variant_options["attention"]  # methods without attention blocks (CFLOW-AD, PaDiM)
            if subset is not None:
                variant_options["blocks"] = ",".join(str(b) for b in subset)
            _check_options(path, where, method, variant_options)
            _check_protocol(path, where, method, settings)
            variants.append(Variant(name=name, method=method, options=variant_options, resources=res, **settings))
    seen: dict[str, int] = {}
    for variant in variants:
        seen[variant.name] = seen.get(variant.name, 0) + 1
    twice = sorted(n for n, count in seen.items() if count > 1)
    if twice:
        raise _fail(path, "variants", f"variant name(s) {', '.join(twice)} appear twice; give each entry a distinct 'name'")
    return variants


def load_grid(path: Path, data: Path | None = None) -> GridSpec:
    """Read and validate a grid file; ``data`` (``--data``) replaces its dataset."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path}: grid file not found")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise GridError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; not a grid file")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise GridError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{path}: not valid TOML ({exc})") from None
    _check_keys(path, "top level", doc, {"grid", "defaults", "resources", "variants"})
    grid = _check_keys(path, "[grid]", doc.get("grid", {}), GRID_KEYS)
    name = grid.get("name", path.stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _fail(path, "grid.name", f"{name!r} must be lowercase letters, digits, '.', '_' or '-'")
    seeds = grid.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise _fail(path, "grid.seeds", "must be a non-empty list of integers")
    seeds = [_int(path, "grid.seeds", s, 0, MAX_SEED) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise _fail(path, "grid.seeds", f"{seeds} repeats a seed")
    categories = grid.get("categories")
    if categories is not None:
        if not isinstance(categories, list):
            raise _fail(path, "grid.categories", "must be a list of category folder names")
        categories = [_str(path, "grid.categories", c) for c in categories] or None
        if categories and len(set(categories)) != len(categories):
            raise _fail(path, "grid.categories", "repeats a category")
    report = grid.get("report", "best")
    if report not in ("best", "mean"):
        raise _fail(path, "grid.report", f"{report!r} is not 'best' or 'mean'")
    retries = _int(path, "grid.retries", grid.get("retries", 1), 0, 100)
    references = _as_list(grid.get("reference", []))
    from leaderboard.render import REFERENCES

    for reference in references:
        if reference not in REFERENCES:
            raise _fail(path, "grid.reference", f"{reference!r} is not one of {', '.join(REFERENCES)}")
    metrics = grid.get("metrics", ["image_auroc"])
    if not isinstance(metrics, list) or not metrics or not all(m in METRICS for m in metrics):
        raise _fail(path, "grid.metrics", f"{metrics!r} must be a non-empty list from {', '.join(METRICS)}")
    description = grid.get("description", "")
    if not isinstance(description, str):
        raise _fail(path, "grid.description", "must be a string")
    dataset = data if data is not None else grid.get("dataset")
    if dataset is not None and not isinstance(dataset, Path):
        dataset = Path(_str(path, "grid.dataset", dataset))
    defaults = _settings(path, "[defaults]", _check_keys(path, "[defaults]", doc.get("defaults", {}), DEFAULT_KEYS),
                         {"device": "auto", "pretrained": True, "weights": None, "checkpoint_every": 1})
    resources = _resources(path, "[resources]", doc.get("resources", {}), Resources())
    variants = _variants(path, doc.get("variants"), defaults, resources)
    return GridSpec(path=path, name=name, description=description, dataset=dataset, categories=categories, seeds=seeds,
                    report=report, retries=retries, references=references, metrics=list(dict.fromkeys(metrics)),
                    variants=variants)
