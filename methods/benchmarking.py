"""The per-category train -> score -> write loop behind ``insplad benchmark`` (and ``insplad demo``).

Method-agnostic: everything method-specific goes through :class:`methods.base.Detector`. The output
folder is a submission (``results.json`` + ``predictions/seed-<s>/<category>/``) plus
``checkpoints/seed-<s>/<category>.pt`` and ``benchmark-state.json``. Re-running the same command
on the same folder skips finished (seed, category) pairs and continues an interrupted training
from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from insplad_tools import __version__, mvtec
from insplad_tools.errors import InspladError
from insplad_tools.fsutil import atomic_write_text, sha256_file
from insplad_tools.jsonfile import load_json
from insplad_tools.provenance import git_commit
from insplad_tools.safety import OUTPUT_MARKER, ensure_disjoint, output_lock, read_marker, signals_raise, write_marker
from leaderboard.predictions import read_category, write_category
from leaderboard.region import crop_json
from leaderboard.results import METRICS, build_results, write_results
from methods.accel import Execution
from methods.precision import resolve_precision
from methods.base import CHECKPOINT_TMP_PREFIX, RunConfig, coerce_options, read_checkpoint, resolve_device
from methods.data import DEFAULT_CACHE_BUDGET_MB, DEFAULT_WORKERS
from methods.registry import build_detector, get_method, load_detector

STATE_FILE = "benchmark-state.json"
RESULTS_FILE = "results.json"
COMMAND = "insplad benchmark"


@dataclass
class BenchmarkConfig:
    """What ``insplad benchmark`` was asked to do; ``None`` fields take the method's defaults."""

    method: str
    data: Path
    out: Path
    options: dict[str, Any] = field(default_factory=dict)
    categories: list[str] | None = None
    epochs: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    seed: int = 0
    runs: int = 1
    report: str = "best"
    pretrained: bool = True
    weights: str | None = None
    progress: bool = True
    checkpoint_every: int = 1
    protocol: str = "clean"  # clean: last epoch, no test labels; paper: best test epoch (test-set model selection)
    eval_every: int | None = None  # paper: epochs between test evaluations (method's reference value when None)
    val_split: float = 0.0  # clean: fraction of train/good held out for methods that use validation data
    precision: str = "auto"  # --precision: fp32 | bf16 | fp16 autocast (auto: bf16 on capable CUDA, else fp32)
    workers: int = DEFAULT_WORKERS  # --workers: image-decoding processes (0: main process); results are identical
    cache_budget_mb: int = DEFAULT_CACHE_BUDGET_MB  # --cache-budget-mb: larger decoded train sets are memory-mapped
    channels_last: str = "auto"  # --channels-last / --compile / --cuda-graphs: inference execution (methods.accel)
    compile: bool = False
    cuda_graphs: bool = True
    notices: list[str] = field(default_factory=list)  # what resolved() changed, logged before the run

    def resolved(self) -> BenchmarkConfig:
        cls = get_method(self.method)
        if self.runs < 1:
            raise InspladError("--runs must be at least 1")
        if self.protocol not in PROTOCOLS:
            raise InspladError(f"--protocol {self.protocol!r}: choose one of {', '.join(PROTOCOLS)}")
        eval_every = self.eval_every
        if self.protocol == "paper":
            eval_every = eval_every or cls.paper_eval_every
            if not eval_every:
                raise InspladError(f"--protocol paper: {self.method}'s reference code evaluates on no test set during "
                                   "training; give --eval-every N to select the best test epoch anyway")
        elif eval_every:
            raise InspladError("--eval-every applies only to --protocol paper (clean never looks at test labels)")
        if not 0.0 <= self.val_split < 1.0:
            raise InspladError(f"--val-split {self.val_split}: expected a fraction in [0, 1)")
        if self.val_split and not cls.uses_validation:
            raise InspladError(f"--val-split: {self.method} uses no validation images (methods that do: efficientad)")
        options, notice = cls.resolve_options(dict(self.options), epochs_given=self.epochs is not None)
        return BenchmarkConfig(**{**self.__dict__, "eval_every": eval_every, "options": options,
                                  "notices": [*self.notices, notice] if notice else list(self.notices),
                                  "epochs": self.epochs or cls.default_epochs,
                                  "image_size": self.image_size or cls.default_image_size,
                                  "batch_size": self.batch_size or cls.default_batch_size,
                                  "device": resolve_device(self.device)})

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.runs))

    def run_config(self, seed: int) -> RunConfig:
        return RunConfig(epochs=self.epochs, batch_size=self.batch_size, image_size=self.image_size,
                         device=self.device, seed=seed, pretrained=self.pretrained, weights=self.weights,
                         progress=self.progress, checkpoint_every=self.checkpoint_every,
                         precision=resolve_precision(self.precision, self.device),
                         workers=self.workers, cache_budget_mb=self.cache_budget_mb, cache_dir=str(self.out),
                         channels_last=self.channels_last, compile=self.compile, cuda_graphs=self.cuda_graphs)

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the one that started the folder."""
        return {"method": self.method, "categories": sorted(self.categories) if self.categories else None,
                "options": {k: str(v) for k, v in sorted(self.options.items())},
                "epochs": self.epochs, "image_size": self.image_size, "batch_size": self.batch_size,
                "pretrained": self.pretrained, "weights": self.weights, **self.protocol_identity()}

    def protocol_identity(self) -> dict[str, Any]:
        """Protocol settings, only when they differ from the default (older identities stay valid)."""
        out: dict[str, Any] = {}
        if self.protocol != "clean":
            out.update(protocol=self.protocol, eval_every=self.eval_every)
        if self.val_split:
            out["val_split"] = self.val_split
        if resolve_precision(self.precision, self.device) != "fp32":  # fp32 runs keep their older identities
            out["precision"] = resolve_precision(self.precision, self.device)
        return out

    def protocol_record(self) -> dict[str, Any]:
        """The ``protocol`` entry of results.json."""
        return {"name": self.protocol, "eval_every": self.eval_every if self.protocol == "paper" else None,
                "val_split": self.val_split or None,
                "model_selection": TEST_SELECTION if self.protocol == "paper" else "last epoch"}


PROTOCOLS = ("clean", "paper")
TEST_SELECTION = "test-set model selection"


def checkpoint_identity(cfg: BenchmarkConfig, seed: int, category: str, digest: str) -> str:
    """Canonical JSON of everything that makes one (seed, category) model: a checkpoint is reused
    (finished) or resumed (unfinished) only when its identity is exactly this."""
    cls = get_method(cfg.method)
    options = dataclasses.asdict(coerce_options(cls.Options, cfg.options))
    for key, value in list(options.items()):  # a file option (e.g. teacher=PATH) is identified by its content
        if isinstance(value, str) and value.endswith((".pt", ".pth", ".bin")) and Path(value).is_file():
            options[key] = f"{value} sha256:{sha256_file(Path(value))}"
    weights = None
    if cfg.weights is not None:
        path = Path(cfg.weights)
        weights = f"sha256:{sha256_file(path)}" if path.is_file() else str(cfg.weights)
    return json.dumps({"method": cfg.method, "options": options, "category": category, "data": digest,
                       "epochs": cfg.epochs, "image_size": cfg.image_size, "batch_size": cfg.batch_size, "seed": seed,
                       "pretrained": cfg.pretrained, "weights": weights, **cfg.protocol_identity()},
                      sort_keys=True, default=str)


def _identity_difference(saved: str | None, wanted: str) -> str:
    """Which settings differ between two identities, for the refusal message."""
    if not isinstance(saved, str):
        return "it records no run identity"
    try:
        old, new = json.loads(saved), json.loads(wanted)
    except ValueError:
        return "its run identity is unreadable"
    if not isinstance(old, dict):
        return "its run identity is unreadable"
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    shown = [f"{k}: {old.get(k)!r} here, {new.get(k)!r} asked" if k not in ("options", "data") else f"{k} differ"
             for k in keys[:3]]
    return "; ".join(shown) or "identity differs"


def pretrained_source(cfg: BenchmarkConfig) -> str:
    if cfg.weights is not None:
        return f"file:{Path(cfg.weights).name}"
    return "imagenet" if cfg.pretrained else "none"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str) -> dict[str, Any]:
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else _cpu_name()
    return {"device": device, "device_name": name, "torch": torch.__version__}


def _load_state(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    path = out / STATE_FILE
    if not path.is_file():
        return {"identity": identity, "done": {}}
    try:
        state = load_json(path, max_bytes=64 << 20)
    except InspladError as exc:
        raise InspladError(f"{exc.message}; unreadable benchmark state: use a fresh --out folder") from None
    saved = state.get("identity") if isinstance(state, dict) else None
    if saved != identity or not isinstance(state.get("done"), dict):
        differ = sorted(k for k in set(identity) | set(saved or {}) if (saved or {}).get(k) != identity.get(k)) \
            if isinstance(saved, dict) else ["identity"]
        raise InspladError(f"{out}: holds a benchmark run with different settings ({', '.join(differ) or 'state'} "
                           f"differ, {path}); use another --out folder or repeat the original command to resume it")
    return state


class RunMismatch(InspladError):
    """The output folder holds work of a different run: never mixed in, whatever the category."""


def _checkpoint_finished(path: Path, identity: str) -> bool:
    """Whether ``path`` holds a finished model of exactly this run; refuses one of any other run."""
    if not path.is_file():
        return False
    saved = read_checkpoint(path)
    if saved.get("identity") != identity:
        raise RunMismatch(f"{path}: checkpoint of a different run ({_identity_difference(saved.get('identity'), identity)}); "
                          "use another --out folder (nothing of it is reused or overwritten)")
    return bool(saved["finished"])


def run_category(cfg: BenchmarkConfig, category: mvtec.Category, seed: int, log: Callable[[str], None],
                 digest: str = "") -> dict[str, Any]:
    """Train (or resume) one (seed, category), write its predictions; returns timings, notes and params."""
    checkpoint = cfg.out / "checkpoints" / f"seed-{seed}" / f"{category.name}.pt"
    folder = cfg.out / "predictions" / f"seed-{seed}" / category.name
    identity = checkpoint_identity(cfg, seed, category.name, digest)
    started = time.perf_counter()
    train_paths = [s.path for s in category.train]
    if _checkpoint_finished(checkpoint, identity):
        log(f"[seed {seed}] {category.name}: trained model found, predicting")
        detector = load_detector(checkpoint, cfg.device)
        detector.run.progress = cfg.progress
        detector.run.channels_last, detector.run.compile, detector.run.cuda_graphs = \
            cfg.channels_last, cfg.compile, cfg.cuda_graphs
        detector.run.workers = cfg.workers  # this run's --workers, not the loader's default
        train_s = 0.0
    else:
        log(f"[seed {seed}] {category.name}: training on {len(category.train)} images")
        detector = build_detector(cfg.method, cfg.options, cfg.run_config(seed))
        detector.identity = identity
        if cfg.val_split:
            train_paths, detector.validation_images = split_validation(train_paths, cfg.val_split, seed)
            log(f"[seed {seed}] {category.name}: {len(detector.validation_images)} train/good images held out "
                f"for validation (--val-split {cfg.val_split})")
        evaluate = _test_selection(detector, category, folder) if cfg.protocol == "paper" else None
        detector.fit(train_paths, checkpoint=checkpoint, evaluate=evaluate, eval_every=cfg.eval_every or 0)
        train_s = time.perf_counter() - started
    predict_started = time.perf_counter()
    selected = _selected_epoch(detector.history) if cfg.protocol == "paper" else None
    if selected is None or not (folder / "predictions.json").is_file():
        outputs = detector.predict([s.path for s in category.test])
        if len(outputs) != len(category.test):
            raise InspladError(f"{cfg.method}: returned {len(outputs)} results for {len(category.test)} test images of {category.name}")
        write_category(folder, category.name, [(s.rel, r.score, r.map) for s, r in zip(category.test, outputs)],
                       crop=detector.crop)
        selected = detector.epochs_done if cfg.protocol == "paper" else None
    notes = list(getattr(detector, "notes", []))
    if cfg.protocol == "paper":
        notes.append(f"{TEST_SELECTION} (--protocol paper): predictions of the epoch with the best test image AUROC, "
                     f"evaluated every {cfg.eval_every} epochs")
    return {"train_s": train_s, "predict_s": time.perf_counter() - predict_started,
            "trainable_params": detector.trainable_parameters(), "notes": notes, "selected_epoch": selected,
            "variant": detector.variant(), "final_loss": (detector.history[-1].get("loss") if detector.history else None),
            "crop": crop_json(detector.crop)}


def split_validation(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, validation): a seeded random ``fraction`` of ``paths`` (at least one of each) held out."""
    n_val = max(1, round(fraction * len(paths)))
    if len(paths) - n_val < 1:
        raise InspladError(f"--val-split {fraction}: {len(paths)} train/good images leave none to train on")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_val])
    return [p for i, p in enumerate(paths) if i not in held], [paths[i] for i in sorted(held)]


def _selected_epoch(history: list[dict[str, Any]]) -> int | None:
    """The (1-based) epoch with the best test image AUROC (the earliest on ties), or None."""
    best: tuple[float, int] | None = None
    for entry in history:
        value = entry.get("test_image_auroc")
        if value is not None and (best is None or value > best[0]):
            best = (value, int(entry["epoch"]) + 1)
    return None if best is None else best[1]


def _test_selection(detector: Any, category: mvtec.Category, folder: Path) -> Callable[[int], dict[str, float]]:
    """The ``paper`` protocol's evaluation: score the test set, keep the predictions of the best epoch so far."""
    from leaderboard.metrics import image_auroc

    labels = [int(s.defect != mvtec.GOOD) for s in category.test]

    def evaluate(epoch: int) -> dict[str, float]:
        outputs = detector.predict([s.path for s in category.test])
        auroc = float(image_auroc(labels, [r.score for r in outputs]))
        best = max((h["test_image_auroc"] for h in detector.history[:-1] if "test_image_auroc" in h), default=None)
        if best is None or auroc > best or not (folder / "predictions.json").is_file():
            write_category(folder, category.name, [(s.rel, r.score, r.map) for s, r in zip(category.test, outputs)],
                           crop=detector.crop)
        return {"test_image_auroc": auroc}

    return evaluate


def score(category: mvtec.Category, folder: Path) -> dict[str, Any]:
    from leaderboard.scoring import score_category

    return score_category(category, read_category(folder))


def check_out_folder(out: Path, data: Path, weights: str | None) -> None:
    """Refuse, before anything is written, an --out that overlaps an input or holds foreign files."""
    ensure_disjoint(out, {"--data": data, "--weights": Path(weights) if weights else None})
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InspladError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        marker = read_marker(out)
        if marker is None and not (out / STATE_FILE).is_file():
            raise InspladError(f"{out}: folder is not empty and was not written by {COMMAND} (no {OUTPUT_MARKER}); "
                               "choose an empty or new --out")
        if marker is not None and marker.get("command") != COMMAND:
            raise InspladError(f"{out}: holds the output of {marker.get('command')!r}, not of {COMMAND}; choose another --out")


def remove_stale_temporaries(out: Path) -> list[str]:
    """Remove half-written files that a killed run of ours left in ``out``; one line per file.

    Called with the folder's lock held, so no live run of ours is writing there.
    """
    lines = []
    patterns = [f"checkpoints/seed-*/{CHECKPOINT_TMP_PREFIX}*.pt.tmp-*", f".{STATE_FILE}.*", f".{RESULTS_FILE}.*",
                "predictions/seed-*/*/.predictions.json.*", "predictions/seed-*/*/maps/*/.*.npz.*"]
    for pattern in patterns:
        for path in sorted(out.glob(pattern)):
            if path.is_file() and not path.is_symlink():
                path.unlink()
                lines.append(f"removed stale temporary file {path} (left by an interrupted run)")
    return lines


def _category_problem(category: mvtec.Category) -> str | None:
    counts = category.counts()
    if counts["test_good"] == 0:
        return f"{category.root / category.name / 'test' / mvtec.GOOD}: no normal test images (AUROC needs test/good)"
    if counts["test_anomalous"] == 0:
        return f"{category.root / category.name / 'test'}: no anomalous test images (AUROC needs a defect folder)"
    return None


def run_benchmark(config: BenchmarkConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (seed, category), then write ``results.json``; returns the results document.

    The output folder is checked (disjoint from the inputs, empty or ours) and locked before
    anything is written. A category that fails is named at the end (exit non-zero) after the
    results of the categories that succeeded have been written.
    """
    cfg = config.resolved()
    cfg.out = Path(cfg.out)
    data = Path(cfg.data)
    check_out_folder(cfg.out, data, cfg.weights)
    available = mvtec.list_categories(data)
    names = list(dict.fromkeys(cfg.categories)) if cfg.categories else available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InspladError(f"{data}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} "
                           f"(available: {', '.join(available)})")
    build_detector(cfg.method, cfg.options, cfg.run_config(cfg.seed))  # bad options fail before anything is written
    digest = mvtec.dataset_digest(data)
    with output_lock(cfg.out, COMMAND), signals_raise():
        return _run_locked(cfg, data, names, available, digest, log)


def _run_locked(cfg: BenchmarkConfig, data: Path, names: list[str], available: list[str], digest: str,
                log: Callable[[str], None]) -> dict[str, Any]:
    cfg.out.mkdir(parents=True, exist_ok=True)
    if read_marker(cfg.out) is None:
        write_marker(cfg.out, COMMAND)
    for line in remove_stale_temporaries(cfg.out):
        log(f"warning: {line}")
    for line in cfg.notices:
        log(f"note: {line}")
    identity = {**cfg.identity(), "data": digest}
    if not (cfg.out / STATE_FILE).is_file():  # checkpoints without a state: a run killed early; never adopt another's
        for seed in cfg.seeds:
            for name in names:
                _checkpoint_finished(cfg.out / "checkpoints" / f"seed-{seed}" / f"{name}.pt",
                                     checkpoint_identity(cfg, seed, name, digest))
    state = _load_state(cfg.out, identity)
    state["identity"] = identity
    atomic_write_text(cfg.out / STATE_FILE, json.dumps(state, indent=1) + "\n")  # the folder's identity, from the start
    failed: dict[str, str] = {}
    dataset: dict[str, mvtec.Category] = {}
    for name in names:
        try:
            dataset[name] = mvtec.read_category(data, name)
        except InspladError as exc:
            failed[name] = exc.message
            continue
        problem = _category_problem(dataset[name])
        if problem:
            failed[name] = problem
            del dataset[name]
    for seed in cfg.seeds:
        for name, category in dataset.items():
            key = f"{seed}/{name}"
            folder = cfg.out / "predictions" / f"seed-{seed}" / name
            if name in failed:
                continue
            if key in state["done"] and (folder / "predictions.json").is_file():
                log(f"[seed {seed}] {name}: already finished, skipped")
                continue
            try:
                state["done"][key] = run_category(cfg, category, seed, log, digest)
            except RunMismatch:
                raise
            except InspladError as exc:
                failed[name] = exc.message
                log(f"[seed {seed}] {name}: FAILED: {exc.message}")
                continue
            atomic_write_text(cfg.out / STATE_FILE, json.dumps(state, indent=1) + "\n")
    for name in list(dataset):
        if name not in failed:
            continue
        del dataset[name]
    scored: dict[str, list[dict[str, Any]]] = {}
    for name, category in dataset.items():
        try:
            scored[name] = [score(category, cfg.out / "predictions" / f"seed-{seed}" / name) for seed in cfg.seeds]
        except InspladError as exc:
            failed[name] = exc.message
    dataset = {n: c for n, c in dataset.items() if n in scored}
    if not dataset:
        raise InspladError("every category failed, no results written: "
                           + "; ".join(f"{n}: {m}" for n, m in failed.items()))
    doc = _write_results(cfg, data, dataset, scored, state, digest, available, failed)
    if failed:
        raise InspladError(f"{len(failed)} categor{'y' if len(failed) == 1 else 'ies'} failed "
                           f"({'; '.join(f'{n}: {m}' for n, m in failed.items())}); "
                           f"{cfg.out / RESULTS_FILE} holds the {len(dataset)} that succeeded")
    return doc


def _protocol_entry(cfg: BenchmarkConfig, state: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    record = cfg.protocol_record()
    if cfg.protocol == "paper":
        record["selected_epochs"] = {name: {str(seed): state["done"][f"{seed}/{name}"].get("selected_epoch")
                                            for seed in cfg.seeds} for name in dataset}
    return record


def _write_results(cfg: BenchmarkConfig, data: Path, dataset: dict[str, mvtec.Category],
                   scored: dict[str, list[dict[str, Any]]], state: dict[str, Any], digest: str,
                   available: list[str], failed: dict[str, str]) -> dict[str, Any]:
    per_category: dict[str, dict[str, Any]] = {}
    where_noted: dict[str, list[str]] = {}
    for name, category in dataset.items():
        runs = []
        for seed, metrics in zip(cfg.seeds, scored[name]):
            runs.append({"seed": seed, **{m: metrics.get(m) for m in METRICS}})
            for note in state["done"][f"{seed}/{name}"]["notes"]:
                where_noted.setdefault(note, []).append(f"{name} seed {seed}")
        counts = category.counts()
        per_category[name] = {"n_test_good": counts["test_good"], "n_test_anomalous": counts["test_anomalous"],
                              "n_masks": counts["masks"], "runs": runs}
    done = [state["done"][f"{s}/{n}"] for s in cfg.seeds for n in dataset]
    notes = [note if len(places) == len(done) else f"{note} ({', '.join(places)})" for note, places in where_noted.items()]
    if not cfg.pretrained and cfg.weights is None:
        notes.append("backbone randomly initialised (--no-pretrained)")
    notes.extend(cfg.notices)
    if resolve_precision(cfg.precision, cfg.device) != "fp32":
        notes.append(f"mixed precision: {resolve_precision(cfg.precision, cfg.device)} autocast in training and "
                     "scoring (--precision); scores differ slightly from an fp32 run")
    notes.extend(f"category {name} failed: {message}" for name, message in failed.items())
    doc = build_results(
        method=cfg.method, variant=done[0]["variant"],
        dataset={"name": mvtec.dataset_name(data), "manifest_sha256": digest, "categories": list(available)},
        seeds=cfg.seeds, report=cfg.report, per_category=per_category,
        training={"epochs": cfg.epochs, "image_size": cfg.image_size, "batch_size": cfg.batch_size,
                  "pretrained": pretrained_source(cfg), "options": {k: str(v) for k, v in sorted(cfg.options.items())},
                  "precision": resolve_precision(cfg.precision, cfg.device),
                  "workers": cfg.workers, "cache_budget_mb": cfg.cache_budget_mb,
                  **Execution.of(cfg, cfg.device, get_method(cfg.method).cuda_graph_batch).record()},
        hardware=hardware(cfg.device),
        wall_time_s=round(sum(d["train_s"] + d["predict_s"] for d in done), 3),
        trainable_params=int(done[0]["trainable_params"]),
        package_version=__version__, git_commit=git_commit(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=notes, protocol=_protocol_entry(cfg, state, dataset),
        **({"crop": done[0]["crop"]} if done[0].get("crop") else {}),  # maps over a centre crop (leaderboard.region)
    )
    write_results(cfg.out / RESULTS_FILE, doc)
    return doc
