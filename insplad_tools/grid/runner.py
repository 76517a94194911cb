"""Plan a grid (which trials exist, which are done) and run the rest on an engine, with retries."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insplad_tools import mvtec
from insplad_tools.errors import InspladError
from insplad_tools.fsutil import atomic_write_text
from insplad_tools.grid.engines import Engine
from insplad_tools.grid.progress import GridProgress
from insplad_tools.grid.spec import GridSpec
from insplad_tools.grid.trials import Trial, append_log, read_done, unpack_into, write_done

FAILURES_FILE = "failures.json"


@dataclass
class Plan:
    """Every trial of a grid on one dataset, and which are already done."""

    spec: GridSpec
    data: Path
    digest: str
    categories: list[str]  # the grid's categories
    available: list[str]  # every category of the dataset
    trials: list[Trial]
    keys: dict[str, str]  # trial id -> key
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial id -> done marker

    @property
    def remaining(self) -> list[Trial]:
        return [t for t in self.trials if t.id not in self.done]


def resolve_data(spec: GridSpec) -> Path:
    if spec.dataset is None:
        raise InspladError(f"{spec.path}: the grid names no dataset; give --data PATH (or grid.dataset)")
    data = spec.dataset.expanduser().resolve()
    if not data.is_dir():
        raise InspladError(f"{spec.dataset}: dataset folder not found (relative paths start at the current folder); "
                           "build it with insplad build-splits, or give --data PATH")
    return data


def make_plan(spec: GridSpec, runs: Path) -> Plan:
    """Expand the grid on its dataset and look up which trials ``runs`` already holds (by key)."""
    data = resolve_data(spec)
    available = mvtec.list_categories(data)
    categories = spec.categories or available
    unknown = [c for c in categories if c not in available]
    if unknown:
        raise InspladError(f"{spec.path}: grid.categories {', '.join(unknown)} not in {data} "
                           f"(it has {', '.join(available)})")
    digest = mvtec.dataset_digest(data)
    trials = [Trial(v, c, s, str(data), digest) for v in spec.variants for c in categories for s in spec.seeds]
    keys = {t.id: t.key() for t in trials}
    plan = Plan(spec, data, digest, list(categories), available, trials, keys)
    for trial in trials:
        marker = read_done(trial, runs, keys[trial.id])
        if marker is not None:
            plan.done[trial.id] = marker
    return plan


def read_failures(runs: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((Path(runs) / FAILURES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial id -> {error, log, attempts}


def run_plan(plan: Plan, runs: Path, engine: Engine, retries: int,
             on_progress: Callable[[GridProgress], None] | None = None, progress: GridProgress | None = None) -> RunSummary:
    """Run every remaining trial on ``engine``; a failing trial is tried ``retries`` more times, then
    reported with its log. Only a complete, valid trial gets its done marker."""
    runs = Path(runs)
    todo = plan.remaining
    progress = progress or GridProgress(total=len(plan.trials), skipped=len(plan.done), slots=engine.slots,
                                        engine=engine.name)
    progress.queued = len(todo)
    summary = RunSummary()
    queue: deque[tuple[Trial, int]] = deque((t, 1) for t in todo)
    running: dict[str, tuple[Trial, int]] = {}
    tell = on_progress or (lambda p: None)
    aborted = True
    try:
        while queue or running:
            while queue and len(running) < engine.slots:
                trial, attempt = queue.popleft()
                key = plan.keys[trial.id]
                engine.submit(trial.task(runs if engine.shared_output else None, key))
                running[trial.id] = (trial, attempt)
                progress.start(trial.id, attempt)
                tell(progress)
            for task, outcome in engine.wait(timeout=0.5):
                trial, attempt = running.pop(task["id"])
                key = plan.keys[trial.id]
                if outcome.get("ok"):
                    try:
                        if outcome.get("archive") is not None:
                            unpack_into(outcome["archive"], trial.folder(runs, key))
                        write_done(trial, runs, key, outcome, engine.name, attempt)
                    except (InspladError, OSError) as exc:
                        outcome = {**outcome, "ok": False, "error": f"could not collect the trial's output: {exc}"}
                log = append_log(trial, runs, attempt, engine.name, outcome)
                retry = not outcome.get("ok") and attempt <= retries
                if outcome.get("ok"):
                    summary.done.append(trial.id)
                elif retry:
                    queue.append((trial, attempt + 1))
                else:
                    summary.failed[trial.id] = {"error": outcome.get("error"), "log": str(log), "attempts": attempt}
                progress.finish(trial.id, bool(outcome.get("ok")), retry, str(outcome.get("error")))
                tell(progress)
        aborted = False
    finally:
        engine.close(abort=aborted)
        previous = read_failures(runs)
        for trial_id in summary.done:
            previous.pop(trial_id, None)
        previous.update(summary.failed)
        if previous or (runs / FAILURES_FILE).exists():
            atomic_write_text(runs / FAILURES_FILE, json.dumps(dict(sorted(previous.items())), indent=1) + "\n")
    return summary
