"""Small filesystem helpers: hashing and all-or-nothing output folders."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import click

from insplad_tools.errors import InspladError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TMP_TAG = ".tmp-"
OLD_TAG = ".old-"


def _own_pid(name: str, prefix: str) -> int | None:
    """The pid encoded in a temporary sibling's name (``.OUT.tmp-PID-XXXX``), or None."""
    if not name.startswith(prefix):
        return None
    head = name[len(prefix):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def remove_stale_temporaries(target: Path) -> list[str]:
    """Remove the temporary siblings of ``target`` left by dead runs of this tool; returns one line
    per folder removed (or restored). Folders of live processes and folders without our marker
    (unless empty) are left alone."""
    from insplad_tools.safety import is_own_output, pid_alive, read_marker

    target = Path(target)
    lines: list[str] = []
    if not target.parent.is_dir():
        return lines
    tmp_prefix, old_prefix = f".{target.name}{TMP_TAG}", f".{target.name}{OLD_TAG}"
    for sibling in sorted(target.parent.iterdir()):
        for prefix in (tmp_prefix, old_prefix):
            pid = _own_pid(sibling.name, prefix)
            if pid is None or sibling.is_symlink() or not sibling.is_dir() or pid_alive(pid):
                continue
            marker = read_marker(sibling)
            if prefix == tmp_prefix:  # a temporary folder carries the marker its own run wrote
                is_ours = (marker is not None and marker.get("pid") == pid) or not any(sibling.iterdir())
            else:  # an old output moved aside carries the marker of whoever built it
                is_ours = is_own_output(sibling)
            if not is_ours:
                continue
            if prefix == old_prefix and not target.exists():
                os.replace(sibling, target)  # a run died between moving the old output aside and renaming the new one
                lines.append(f"restored {target} from {sibling.name} (left by an interrupted run, pid {pid})")
            else:
                shutil.rmtree(sibling, ignore_errors=True)
                lines.append(f"removed stale temporary folder {sibling} (left by an interrupted run, pid {pid})")
    return lines


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGTERM/SIGINT while the output is swapped into place (two renames that belong together)."""
    sigs = {signal.SIGTERM, signal.SIGINT}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first and put back if that fails."""
    if not target.exists():
        os.replace(tmp, target)
        return
    trash = target.with_name(f".{target.name}{OLD_TAG}{os.getpid()}")
    os.replace(target, trash)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(trash, target)
        raise
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(target: Path, *, overwrite: bool = False, command: str = "insplad",
                      inputs: Mapping[str, Path | None] | None = None) -> Iterator[Path]:
    """Yield a temporary folder next to ``target`` and rename it into place on success.

    Before anything is written: ``target`` must be disjoint from every path in ``inputs``
    (:func:`insplad_tools.safety.ensure_disjoint`), an existing non-empty ``target`` is replaced only
    with ``overwrite`` and only when it is this tool's own output, and the output lock is taken
    (a concurrent run on the same ``target`` fails). Stale temporary folders of dead runs are
    removed and reported. The new folder carries :data:`~insplad_tools.safety.OUTPUT_MARKER`.

    On any exception, SIGTERM or SIGINT the temporary folder is removed, so ``target`` is either the
    complete new output or untouched; file-system errors become one-line :class:`InspladError`.
    """
    from insplad_tools.safety import ensure_disjoint, check_replaceable, output_lock, signals_raise, write_marker

    target = Path(os.path.abspath(target))  # "." and ".." have no name to put a sibling beside
    ensure_disjoint(target, inputs or {})
    check_replaceable(target, overwrite=overwrite)
    with output_lock(target, command), signals_raise():
        for line in remove_stale_temporaries(target):
            click.echo(f"warning: {line}", err=True)
        check_replaceable(target, overwrite=overwrite)  # again, now that we hold the lock
        tmp: Path | None = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_TAG}{os.getpid()}-", dir=target.parent))
            write_marker(tmp, command)
            yield tmp
            with _signals_blocked():
                _swap_into_place(tmp, target)
        except OSError as exc:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            where = exc.filename or target
            raise InspladError(f"{where}: {exc.strerror or exc}; nothing was written to {target}") from None
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file via a temporary sibling and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
