"""One trial: one ``insplad benchmark`` unit (variant, category, seed), its key, folders and marker.

Layout of a grid's output folder ``RUNS``::

    RUNS/trials/<variant>/<category>/seed-<s>-<key10>/   the benchmark's own output: a valid submission
    RUNS/trials/<variant>/<category>/seed-<s>-<key10>.done.json   written only after the folder is complete
    RUNS/logs/<variant>--<category>--seed-<s>.log         every attempt's log (and traceback)

The key is the sha256 of everything that makes the trial's numbers (method, options, resolved
epochs / image size / batch size, pretrained, weights content, category, seed, dataset digest), so
a trial is done exactly when a done marker with its key exists; changing a setting makes new trials
and never mixes them with old ones.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from insplad_tools.errors import InspladError
from insplad_tools.fsutil import atomic_write_text, sha256_file
from insplad_tools.grid.spec import Variant

TRIALS_DIR = "trials"
LOGS_DIR = "logs"
DONE_SUFFIX = ".done.json"
RESULTS_FILE = "results.json"
PACK_SKIP = ("checkpoints",)  # not needed to merge or check a trial; stays on the worker


@dataclass(frozen=True)
class Trial:
    """One (variant, category, seed) of a grid on one dataset."""

    variant: Variant
    category: str
    seed: int
    data: str  # absolute dataset path, as every engine's workers must see it
    digest: str  # insplad_tools.mvtec.dataset_digest of the dataset

    @property
    def id(self) -> str:
        return f"{self.variant.name}--{self.category}--seed-{self.seed}"

    def settings(self) -> dict[str, Any]:
        """The benchmark settings with the method's defaults filled in (what the key covers)."""
        from methods.registry import get_method

        cls = get_method(self.variant.method)
        v = self.variant
        weights = v.weights
        if weights is not None and Path(weights).is_file():
            stat = Path(weights).stat()
            weights = f"sha256:{_file_digest(str(Path(weights).resolve()), stat.st_size, stat.st_mtime_ns)}"
        out = {"method": v.method, "options": dict(sorted(v.options.items())),
               "epochs": v.epochs or cls.default_epochs, "image_size": v.image_size or cls.default_image_size,
               "batch_size": v.batch_size or cls.default_batch_size, "pretrained": v.pretrained, "weights": weights}
        if v.protocol != "clean" or v.eval_every is not None:  # only when set: default keys stay as they were
            out.update(protocol=v.protocol, eval_every=v.eval_every)
        if v.val_split:
            out["val_split"] = v.val_split
        return out

    def key(self) -> str:
        import hashlib

        content = {**self.settings(), "category": self.category, "seed": self.seed, "data": self.digest}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def folder(self, runs: Path, key: str | None = None) -> Path:
        key = key or self.key()
        return Path(runs) / TRIALS_DIR / self.variant.name / self.category / f"seed-{self.seed}-{key[:10]}"

    def done_path(self, runs: Path, key: str | None = None) -> Path:
        folder = self.folder(runs, key)
        return folder.with_name(folder.name + DONE_SUFFIX)

    def log_path(self, runs: Path) -> Path:
        return Path(runs) / LOGS_DIR / f"{self.id}.log"

    def task(self, runs: Path | None, key: str) -> dict[str, Any]:
        """The plain-data description an engine ships to a worker (see :func:`execute_trial`).

        ``runs`` None: the worker writes to a private temporary folder and returns it packed
        (engines without shared storage for the output)."""
        v = self.variant
        return {"id": self.id, "key": key, "method": v.method, "options": dict(v.options), "category": self.category,
                "seed": self.seed, "data": self.data, "epochs": v.epochs, "image_size": v.image_size,
                "batch_size": v.batch_size, "device": v.device, "pretrained": v.pretrained, "weights": v.weights,
                "checkpoint_every": v.checkpoint_every, "threads": v.resources.cpus, "protocol": v.protocol,
                "eval_every": v.eval_every, "val_split": v.val_split,
                "resources": {"cpus": v.resources.cpus, "gpus": v.resources.gpus, "memory_gb": v.resources.memory_gb},
                "out": None if runs is None else str(self.folder(runs, key))}


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a (weights) file, hashed once per grid however many trials name it."""
    return sha256_file(Path(path))


def read_done(trial: Trial, runs: Path, key: str) -> dict[str, Any] | None:
    """The done marker of ``trial`` when the trial is complete (marker with this key and its results), else None."""
    path = trial.done_path(runs, key)
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("key") != key:
        return None
    return marker if (trial.folder(runs, key) / RESULTS_FILE).is_file() else None


def write_done(trial: Trial, runs: Path, key: str, outcome: dict[str, Any], engine: str, attempts: int) -> None:
    """Mark ``trial`` complete; called only once its folder holds valid results (checked here)."""
    from leaderboard.results import load_results

    doc = load_results(trial.folder(runs, key) / RESULTS_FILE)
    if [r["category"] for r in doc["categories"]] != [trial.category] or doc["aggregation"]["seeds"] != [trial.seed]:
        raise InspladError(f"{trial.folder(runs, key)}: results do not hold exactly {trial.category} seed {trial.seed}")
    marker = {"key": key, "trial": trial.id, "variant": trial.variant.name, "category": trial.category, "seed": trial.seed,
              "engine": engine, "attempts": attempts, "wall_s": round(float(outcome.get("wall_s", 0.0)), 3),
              "host": outcome.get("host"), "device": outcome.get("device"),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(trial.done_path(runs, key), json.dumps(marker, indent=1) + "\n")


def append_log(trial: Trial, runs: Path, attempt: int, engine: str, outcome: dict[str, Any]) -> Path:
    """Append one attempt's log to the trial's log file; returns its path."""
    path = trial.log_path(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    status = "ok" if outcome.get("ok") else f"FAILED: {outcome.get('error')}"
    head = (f"=== {trial.id} attempt {attempt} on {engine} ({outcome.get('host')}, {outcome.get('device')}), "
            f"{outcome.get('wall_s', 0):.1f} s: {status}\n")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(head + (outcome.get("log") or "") + "\n")
    return path


def pack_folder(folder: Path) -> bytes:
    """A trial's output folder as an uncompressed tar (checkpoints and lock files left out)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if rel.parts[0] in PACK_SKIP or path.is_symlink() or not path.is_file():
                continue
            tar.add(path, arcname=rel.as_posix(), recursive=False)
    return buffer.getvalue()


def unpack_into(archive: bytes, target: Path) -> None:
    """Replace ``target`` with the packed folder, atomically (a temporary sibling renamed into place).

    Extraction uses tarfile's ``data`` filter: no absolute paths, ``..``, links or devices."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpack-", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        if target.exists():
            trash = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def execute_trial(task: dict[str, Any]) -> dict[str, Any]:
    """Run one trial (``run_benchmark`` on one category and seed); what every engine executes.

    Never raises for a failing trial: returns ``{"ok": False, "error": ..., "log": ...}``. Torch
    runs with ``task["threads"]`` threads, so a trial gives the same numbers on every engine. With
    ``task["out"]`` None the output is written to a temporary folder and returned packed
    (``"archive"``), for engines whose workers do not share the output storage.
    """
    import torch

    from methods.benchmarking import BenchmarkConfig, run_benchmark

    started = time.perf_counter()
    lines: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(int(task["threads"]))
    scratch = None if task["out"] else Path(tempfile.mkdtemp(prefix="insplad-trial-"))
    out = Path(task["out"]) if task["out"] else scratch / "trial"
    result: dict[str, Any] = {"ok": False}
    try:
        cfg = BenchmarkConfig(method=task["method"], data=Path(task["data"]), out=out, options=dict(task["options"]),
                              categories=[task["category"]], epochs=task["epochs"], image_size=task["image_size"],
                              batch_size=task["batch_size"], device=task["device"], seed=int(task["seed"]), runs=1,
                              report="best", pretrained=bool(task["pretrained"]), weights=task["weights"],
                              progress=False, checkpoint_every=int(task["checkpoint_every"]),
                              **{k: task[k] for k in ("protocol", "eval_every", "val_split")
                                 if task.get(k) not in (None, "clean", 0.0)})
        doc = run_benchmark(cfg, log=lines.append)
        result = {"ok": True, "device": doc.get("hardware", {}).get("device")}
        if scratch is not None:
            result["archive"] = pack_folder(out)
    except InspladError as exc:
        result = {"ok": False, "error": exc.message}
        lines.append(f"error: {exc.message}")
    except Exception as exc:  # a crash inside a method: recorded with its traceback, the grid goes on
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
        lines.append(traceback.format_exc())
    finally:
        torch.set_num_threads(threads)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    result.update({"log": "\n".join(lines), "wall_s": time.perf_counter() - started, "host": socket.gethostname()})
    return result
