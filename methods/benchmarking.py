"""The per-category train -> score -> write loop behind ``insplad benchmark`` (and ``insplad demo``).

Method-agnostic: everything method-specific goes through :class:`methods.base.Detector`. The output
folder is a submission (``results.json`` + ``predictions/seed-<s>/<category>/``) plus
``checkpoints/seed-<s>/<category>.pt`` and ``benchmark-state.json``. Re-running the same command
on the same folder skips finished (seed, category) pairs and continues an interrupted training
from its last finished epoch.
"""

from __future__ import annotations

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
from insplad_tools.fsutil import atomic_write_text
from insplad_tools.provenance import git_commit
from leaderboard.predictions import read_category, write_category
from leaderboard.results import METRICS, build_results, write_results
from methods.base import RunConfig, read_checkpoint, resolve_device
from methods.registry import build_detector, get_method, load_detector

STATE_FILE = "benchmark-state.json"
RESULTS_FILE = "results.json"


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

    def resolved(self) -> BenchmarkConfig:
        cls = get_method(self.method)
        if self.runs < 1:
            raise InspladError("--runs must be at least 1")
        return BenchmarkConfig(**{**self.__dict__,
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
                         progress=self.progress, checkpoint_every=self.checkpoint_every)

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the one that started the folder."""
        return {"method": self.method, "categories": sorted(self.categories) if self.categories else None,
                "options": {k: str(v) for k, v in sorted(self.options.items())},
                "epochs": self.epochs, "image_size": self.image_size, "batch_size": self.batch_size,
                "pretrained": self.pretrained, "weights": self.weights}


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
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InspladError(f"{path}: unreadable benchmark state ({exc}); use a fresh --out folder") from exc
    if state.get("identity") != identity:
        raise InspladError(f"{out}: holds a benchmark run with different settings ({path}); "
                           f"use another --out folder or repeat the original command to resume it")
    return state


def _checkpoint_finished(path: Path) -> bool:
    return path.is_file() and bool(read_checkpoint(path).get("finished"))


def run_category(cfg: BenchmarkConfig, category: mvtec.Category, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Train (or resume) one (seed, category), write its predictions; returns timings, notes and params."""
    checkpoint = cfg.out / "checkpoints" / f"seed-{seed}" / f"{category.name}.pt"
    folder = cfg.out / "predictions" / f"seed-{seed}" / category.name
    started = time.perf_counter()
    if _checkpoint_finished(checkpoint):
        log(f"[seed {seed}] {category.name}: trained model found, predicting")
        detector = load_detector(checkpoint, cfg.device)
        detector.run.progress = cfg.progress
        train_s = 0.0
    else:
        log(f"[seed {seed}] {category.name}: training on {len(category.train)} images")
        detector = build_detector(cfg.method, cfg.options, cfg.run_config(seed))
        detector.fit([s.path for s in category.train], checkpoint=checkpoint)
        train_s = time.perf_counter() - started
    predict_started = time.perf_counter()
    outputs = detector.predict([s.path for s in category.test])
    if len(outputs) != len(category.test):
        raise InspladError(f"{cfg.method}: returned {len(outputs)} results for {len(category.test)} test images of {category.name}")
    write_category(folder, category.name, [(s.rel, r.score, r.map) for s, r in zip(category.test, outputs)])
    return {"train_s": train_s, "predict_s": time.perf_counter() - predict_started,
            "trainable_params": detector.trainable_parameters(), "notes": list(getattr(detector, "notes", [])),
            "variant": detector.variant(), "final_loss": (detector.history[-1].get("loss") if detector.history else None)}


def score(category: mvtec.Category, folder: Path) -> dict[str, Any]:
    from leaderboard.scoring import score_category

    return score_category(category, read_category(folder))


def run_benchmark(config: BenchmarkConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (seed, category), then write ``results.json``; returns the results document."""
    cfg = config.resolved()
    cfg.out = Path(cfg.out)
    dataset = mvtec.read_dataset(Path(cfg.data), cfg.categories)
    digest = mvtec.dataset_digest(Path(cfg.data))
    cfg.out.mkdir(parents=True, exist_ok=True)
    identity = cfg.identity()
    state = _load_state(cfg.out, identity)
    state["identity"] = identity
    for seed in cfg.seeds:
        for name, category in dataset.items():
            key = f"{seed}/{name}"
            folder = cfg.out / "predictions" / f"seed-{seed}" / name
            if key in state["done"] and (folder / "predictions.json").is_file():
                log(f"[seed {seed}] {name}: already finished, skipped")
                continue
            state["done"][key] = run_category(cfg, category, seed, log)
            atomic_write_text(cfg.out / STATE_FILE, json.dumps(state, indent=1) + "\n")

    per_category: dict[str, dict[str, Any]] = {}
    where_noted: dict[str, list[str]] = {}
    for name, category in dataset.items():
        runs = []
        for seed in cfg.seeds:
            metrics = score(category, cfg.out / "predictions" / f"seed-{seed}" / name)
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
    doc = build_results(
        method=cfg.method, variant=done[0]["variant"], dataset={"name": mvtec.dataset_name(Path(cfg.data)), "manifest_sha256": digest},
        seeds=cfg.seeds, report=cfg.report, per_category=per_category,
        training={"epochs": cfg.epochs, "image_size": cfg.image_size, "batch_size": cfg.batch_size,
                  "pretrained": pretrained_source(cfg), "options": {k: str(v) for k, v in sorted(cfg.options.items())}},
        hardware=hardware(cfg.device),
        wall_time_s=round(sum(d["train_s"] + d["predict_s"] for d in done), 3),
        trainable_params=int(done[0]["trainable_params"]),
        package_version=__version__, git_commit=git_commit(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
    )
    write_results(cfg.out / RESULTS_FILE, doc)
    return doc
