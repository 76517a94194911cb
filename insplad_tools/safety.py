"""Safety rules every command that writes output follows.

- :func:`ensure_disjoint`: an output folder may never be, contain or lie inside an input.
- :data:`OUTPUT_MARKER` / :func:`write_marker` / :func:`is_own_output`: ``--overwrite`` replaces
  only folders this tool wrote, never an arbitrary folder.
- :func:`output_lock`: one writer per output folder (pid + host + start time; stale locks of dead
  processes on this host are taken over).
- :func:`resolve_inside`: a path read from inside a file must stay inside its root.
- :func:`signals_raise`: SIGTERM/SIGINT unwind the stack, so temporary output is cleaned up.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from insplad_tools import __version__
from insplad_tools.errors import InspladError

OUTPUT_MARKER = ".insplad-output.json"
LOCK_SUFFIX = ".lock"


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def ensure_disjoint(out: Path, inputs: Mapping[str, Path | None]) -> None:
    """Raise :class:`InspladError` when ``out`` is, contains or lies inside any of ``inputs``.

    ``inputs`` maps an option name (``"RAW"``, ``"--masks"``) to a path; ``None`` entries are
    ignored. Paths are compared after resolving symlinks, so a link cannot hide an overlap.
    """
    out_r = _resolved(out)
    for option, path in inputs.items():
        if path is None:
            continue
        in_r = _resolved(path)
        if out_r == in_r:
            relation = "is"
        elif _inside(in_r, out_r):
            relation = "contains"
        elif _inside(out_r, in_r):
            relation = "lies inside"
        else:
            continue
        raise InspladError(f"OUT {out} {relation} the input {option} {path}: choose an output folder outside every input")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def marker_payload(command: str) -> dict[str, Any]:
    return {"tool": "insplad", "command": command, "version": __version__, "created": _now(),
            "pid": os.getpid(), "host": socket.gethostname()}


def write_marker(folder: Path, command: str) -> Path:
    """Write :data:`OUTPUT_MARKER` into ``folder`` (command, version, creation time, pid, host)."""
    path = Path(folder) / OUTPUT_MARKER
    path.write_text(json.dumps(marker_payload(command), indent=1) + "\n", encoding="utf-8")
    return path


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker's content, or ``None`` when ``folder`` has no valid marker."""
    path = Path(folder) / OUTPUT_MARKER
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 65536:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "insplad" else None


def is_own_output(path: Path) -> bool:
    """True when ``path`` is a folder this tool wrote: it carries :data:`OUTPUT_MARKER`, or (datasets
    built before the marker existed) a ``manifest.json`` whose ``tool.name`` is an insplad command."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    if read_marker(path) is not None:
        return True
    manifest = path / "manifest.json"
    try:
        if manifest.is_file() and not manifest.is_symlink() and manifest.stat().st_size < 512 << 20:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            tool = data.get("tool") if isinstance(data, dict) else None
            name = tool.get("name") if isinstance(tool, dict) else None
            return isinstance(name, str) and name.startswith("insplad ")
    except (OSError, ValueError, RecursionError):
        return False
    return False


def check_replaceable(out: Path, *, overwrite: bool) -> None:
    """Refuse to write into an existing ``out`` unless it is empty, or ``overwrite`` is set and the
    folder is this tool's own output."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    with contextlib.suppress(OSError):
        if _inside(_resolved(Path.cwd()), _resolved(out)):
            raise InspladError(f"{out}: is (or contains) the current folder, which the output would replace; "
                               "choose a new folder")
    if out.is_symlink() or not out.is_dir():
        raise InspladError(f"{out}: exists and is not a folder; choose another output path")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise InspladError(f"{out}: output folder exists and is not empty (use --overwrite)")
    if not is_own_output(out):
        raise InspladError(f"{out}: not a folder written by insplad (no {OUTPUT_MARKER}); --overwrite replaces only "
                           "insplad's own output: remove it yourself or choose another folder")


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_path(out: Path) -> Path:
    """The lock file beside ``out`` (``out`` itself may not exist yet)."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _try_create(path: Path, payload: dict[str, Any]) -> bool:
    """Create ``path`` holding ``payload`` atomically; False when it already exists.

    The content is written to a private file first and hard-linked into place, so another process
    never sees a half-written lock.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # file systems without hard links: fall back to O_EXCL on the lock itself
            try:
                fd2 = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd2, "w", encoding="utf-8") as handle:
                json.dump(payload, handle)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _remove_stale(path: Path, judged: dict[str, Any] | None) -> bool:
    """Remove the lock ``path`` only if it still is the stale one we judged. Renaming is atomic, so two
    processes taking over one stale lock cannot remove each other's fresh lock: whoever moves a lock that
    turns out not to be the judged one puts it back."""
    grave = path.with_name(f"{path.name}.stale-{os.getpid()}-{threading.get_ident()}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return False
    try:
        if _read_lock(grave) != judged:
            with contextlib.suppress(FileExistsError):
                os.link(grave, path)
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(grave)


@contextlib.contextmanager
def output_lock(out: Path, command: str) -> Iterator[Path]:
    """Hold the lock of output folder ``out`` for the duration of the block.

    A second writer fails with a line naming the holder. A lock left by a dead process on this host
    (kill -9, power loss) is stale: it is taken over and reported on stderr.
    """
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InspladError(f"{path.parent}: cannot create the output's parent folder ({exc.strerror})") from None
    host = socket.gethostname()
    payload = {"pid": os.getpid(), "host": host, "started": _now(), "command": command}
    for _ in range(3):
        try:
            if _try_create(path, payload):
                break
        except OSError as exc:
            raise InspladError(f"{path}: cannot create the lock file ({exc.strerror})") from None
        held = _read_lock(path)
        if held is None or (held.get("host") == host and isinstance(held.get("pid"), int)
                            and not pid_alive(held["pid"])):
            who = "unreadable lock" if held is None else f"pid {held.get('pid')} is gone"
            if _remove_stale(path, held):
                click.echo(f"warning: removed stale lock {path} ({who})", err=True)
            continue
        raise InspladError(f"another {held.get('command', 'insplad')} (pid {held.get('pid')} on host {held.get('host')} "
                           f"since {held.get('started')}) is writing {out}; wait for it, or remove {path} if it is gone")
    else:
        raise InspladError(f"{path}: could not take the lock (it keeps reappearing)")
    try:
        yield path
    finally:
        held = _read_lock(path)
        if held is not None and held.get("pid") == os.getpid() and held.get("host") == host:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def resolve_inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel`` with symlinks resolved; an :class:`InspladError` naming ``what`` when ``rel``
    is not a string, is absolute, or leads outside ``root`` (``..`` or a symlink)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise InspladError(f"{what}: path {rel!r} is not a non-empty string")
    if rel.startswith(("/", "\\")) or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        raise InspladError(f"{what}: absolute path {rel!r} is not allowed; paths must be relative to {root}")
    root_r = _resolved(root)
    target = _resolved(root_r / rel)
    if not _inside(target, root_r):
        raise InspladError(f"{what}: path {rel!r} leads outside {root}")
    return target


class Interrupted(SystemExit):
    """Raised by the signal handler of :func:`signals_raise`; exits with 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


_announced: set[int] = set()
_REDELIVERY_DELAY_S = 0.05


def _deliver_later(signum: int) -> None:
    """Send ``signum`` to this process again shortly, from another thread, so the handler runs
    once the main thread is back in ordinary code."""
    timer = threading.Timer(_REDELIVERY_DELAY_S, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


def _in_finaliser(frame: Any) -> bool:
    """Whether ``frame`` runs inside a ``__del__`` or our unraisable hook, where a raised exception
    would only be reported and dropped by Python."""
    depth = 0
    while frame is not None and depth < 500:
        code = frame.f_code
        if code.co_name == "__del__" or code is _swallow_hook.__code__:
            return True
        frame, depth = frame.f_back, depth + 1
    return False


def _raise(signum: int, frame: Any) -> None:
    if signum not in _announced:
        _announced.add(signum)
        click.echo(f"insplad: interrupted by {signal.Signals(signum).name}; removing temporary output", err=True)
    if _in_finaliser(frame):
        # tqdm's __del__ in the CI run that exited 0 after SIGTERM: raising here would be swallowed.
        _deliver_later(signum)
        return
    raise Interrupted(signum)


_previous_unraisable: list[Callable[[Any], None]] = []


def _swallow_hook(info: Any) -> None:
    """``sys.unraisablehook`` inside :func:`signals_raise`: an :class:`Interrupted` raised in a
    finaliser other than ``__del__`` (a weakref callback) was dropped, so send the signal again."""
    if isinstance(info.exc_value, Interrupted):
        _deliver_later(info.exc_value.signum)
        return
    (_previous_unraisable[-1] if _previous_unraisable else sys.__unraisablehook__)(info)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` inside the block, so ``finally`` and
    ``except BaseException`` cleanups run. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    _previous_unraisable.append(sys.unraisablehook)
    sys.unraisablehook = _swallow_hook
    for s in previous:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        sys.unraisablehook = _previous_unraisable.pop()


def worker_signals() -> None:
    """Initializer of worker processes: SIGINT is left to the parent (which cleans up and stops the pool),
    SIGTERM ends the worker outright, so a signal never prints one message per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# -- images: one decompression-bomb policy for every command that decodes images --------------
MAX_IMAGE_PIXELS = 178_956_970  # Pillow's hard limit (2 x Image.MAX_IMAGE_PIXELS); UAV frames are 45-100 MP


@contextlib.contextmanager
def image_size_guard(path: Path) -> Iterator[None]:
    """Decode images inside this block. Up to :data:`MAX_IMAGE_PIXELS` is fine (Pillow's bomb
    *warning* is silenced); above it Pillow's ``DecompressionBombError`` becomes one
    :class:`InspladError` naming the file, never a traceback."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except Image.DecompressionBombError as exc:
            import re

            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
            raise InspladError(f"{path}: image too large to decode ({size}; the limit is {MAX_IMAGE_PIXELS:,}, "
                               "decompression-bomb guard)") from None
