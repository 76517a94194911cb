"""Fault-injection harness shared by every tests/faults/ module.

One fault = run a command on bad input and assert what a user relies on:
- the exit code;
- one ``Error:`` line naming the offending file/entry (and never a Python traceback);
- nothing written, changed or deleted outside OUT (hashes of the whole work tree before/after);
- no partial OUT and no stray temporary folders or locks beside it.

Use :func:`run_fault` for a whole case, or the pieces (:func:`snapshot`, :func:`run_cli`,
:func:`assert_one_line_error`, :func:`assert_no_leftovers`) for custom ones.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from insplad_tools.cli import main


@dataclass
class Outcome:
    """What a command did: exit code, combined stdout+stderr, stderr alone, and the exception if any."""

    exit_code: int
    output: str
    stderr: str
    exception: BaseException | None = None

    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("Error:")]


def snapshot(root: Path, *, exclude: Iterable[Path] = ()) -> dict[str, str]:
    """Relative path -> sha256 (files), ``link:TARGET`` (symlinks) or ``dir`` for everything under
    ``root`` except the ``exclude`` paths (and their contents)."""
    root = Path(root)
    skip = {Path(os.path.abspath(p)) for p in exclude}
    state: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(os.path.abspath(dirpath))
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            path = here / name
            if path in skip:
                continue
            rel = path.relative_to(os.path.abspath(root)).as_posix()
            if path.is_symlink():
                state[rel] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                state[rel] = "dir"
            else:
                state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def diff_snapshots(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Human-readable list of what was added, removed or changed between two snapshots."""
    lines = [f"removed {k}" for k in sorted(before.keys() - after.keys())]
    lines += [f"added {k}" for k in sorted(after.keys() - before.keys())]
    lines += [f"changed {k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return lines


def run_cli(args: Sequence[str | Path], *, input: str | None = None, env: Mapping[str, str] | None = None) -> Outcome:
    """Run ``insplad ARGS`` in-process (click's CliRunner)."""
    result = CliRunner().invoke(main, [str(a) for a in args], input=input, env=dict(env or {}))
    exc = result.exception if not isinstance(result.exception, SystemExit) else None
    return Outcome(result.exit_code, result.output, result.stderr, exc)


def insplad_exe() -> list[str]:
    """The command line of the ``insplad`` console script (falls back to ``python -m``-style entry)."""
    exe = shutil.which("insplad")
    if exe:
        return [exe]
    return [sys.executable, "-c", "from insplad_tools.cli import main; main()"]


def run_subprocess(args: Sequence[str | Path], *, cwd: Path | None = None, timeout: float = 120) -> Outcome:
    """Run ``insplad ARGS`` as a real process (for signals, locks and environment faults)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*insplad_exe(), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)
    return Outcome(proc.returncode, proc.stdout + proc.stderr, proc.stderr)


def assert_no_traceback(outcome: Outcome) -> None:
    assert outcome.exception is None, f"uncaught {type(outcome.exception).__name__}: {outcome.exception}\n{outcome.output}"
    assert "Traceback" not in outcome.output, outcome.output


def assert_line_naming(outcome: Outcome, detail: Sequence[str]) -> str:
    """Some single output line contains every string of ``detail`` (case-insensitive); returns it."""
    wanted = [d.lower() for d in detail]
    for line in outcome.output.splitlines():
        if all(d in line.lower() for d in wanted):
            return line
    raise AssertionError(f"no line names all of {list(detail)}:\n{outcome.output}")


def assert_one_line_error(outcome: Outcome, *, code: int = 1, names: Sequence[str] = (),
                          detail: Sequence[str] = (), error_line: bool = True) -> str:
    """Exit ``code``, no traceback, exactly one ``Error:`` line containing every string of ``names``
    (case-insensitive); with ``detail``, some line (a per-problem line, e.g. of ``--strict`` or
    ``validate``) names all of those. ``error_line=False``: commands that report findings instead
    (``validate``, ``annotations check``) print no ``Error:`` line. Returns the Error line (or "")."""
    assert_no_traceback(outcome)
    assert outcome.exit_code == code, f"exit {outcome.exit_code}, expected {code}:\n{outcome.output}"
    if detail:
        assert_line_naming(outcome, detail)
    if not error_line:
        return ""
    lines = outcome.error_lines()
    assert len(lines) == 1, f"expected one Error: line, got {len(lines)}:\n{outcome.output}"
    for name in names:
        assert name.lower() in lines[0].lower(), f"{name!r} not named in: {lines[0]}"
    return lines[0]


def assert_no_leftovers(out: Path) -> None:
    """No temporary folder, old copy or lock of ``out`` beside it."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    stray = [p.name for p in out.parent.iterdir()
             if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-", f".{out.name}.lock"))]
    assert not stray, f"left beside {out}: {stray}"


def run_fault(args: Sequence[str | Path], *, world: Path, out: Path | None = None, code: int = 1,
              names: Sequence[str] = (), detail: Sequence[str] = (), error_line: bool = True,
              out_may_change: bool = False, subprocess_run: bool = False) -> Outcome:
    """Run one fault case and assert the whole contract.

    ``world`` is the folder holding every input (typically ``tmp_path``): nothing under it may
    change except OUT (and, with ``out_may_change=False``, not even OUT). ``names``: strings the
    single error line must contain (the offending file or entry).
    """
    exclude = [out] if (out is not None and out_may_change) else []
    before = snapshot(world, exclude=exclude)
    outcome = run_subprocess(args) if subprocess_run else run_cli(args)
    assert_one_line_error(outcome, code=code, names=names, detail=detail, error_line=error_line)
    changes = diff_snapshots(before, snapshot(world, exclude=exclude))
    assert not changes, f"files changed by a failing command: {changes}"
    if out is not None:
        assert_no_leftovers(out)
    return outcome
