"""The live table of a running grid: trials queued / running / done / failed, with an ETA."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class GridProgress:
    """Counts and running trials; rendered by rich on every refresh (so elapsed times move)."""

    total: int
    skipped: int
    slots: int
    engine: str
    queued: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    running: dict[str, tuple[int, float]] = field(default_factory=dict)  # trial id -> (attempt, started)
    durations: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def start(self, trial_id: str, attempt: int) -> None:
        self.queued -= 1
        self.running[trial_id] = (attempt, time.monotonic())

    def finish(self, trial_id: str, ok: bool, retry: bool, message: str = "") -> None:
        _, began = self.running.pop(trial_id)
        if ok:
            self.done += 1
            self.durations.append(time.monotonic() - began)
        elif retry:
            self.retried += 1
            self.queued += 1
        else:
            self.failed += 1
            self.failures.append(f"{trial_id}: {message}")

    def eta(self) -> float | None:
        """Seconds left: mean trial time of this session x trials left / parallel slots."""
        if not self.durations:
            return None
        left = self.queued + len(self.running)
        return sum(self.durations) / len(self.durations) * left / max(1, min(self.slots, left or 1))

    def __rich__(self) -> Group:
        table = Table(title=f"insplad grid — {self.total} trials on {self.engine} ({self.slots} at a time)")
        for name in ("already done", "queued", "running", "done", "failed", "retries", "elapsed", "ETA"):
            table.add_column(name, justify="right")
        eta = self.eta()
        table.add_row(str(self.skipped), str(self.queued), str(len(self.running)), str(self.done),
                      Text(str(self.failed), style="bold red" if self.failed else ""), str(self.retried),
                      _clock(time.monotonic() - self.started), "–" if eta is None else _clock(eta))
        parts: list = [table]
        now = time.monotonic()
        for trial_id, (attempt, began) in list(self.running.items())[:8]:
            parts.append(Text(f"  running {trial_id} (attempt {attempt}, {_clock(now - began)})"))
        for line in self.failures[-5:]:
            parts.append(Text(f"  failed {line}", style="red"))
        return Group(*parts)
