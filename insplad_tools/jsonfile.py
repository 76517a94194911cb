"""Reading JSON files we did not write: one loader that turns every hostile shape into one line.

:func:`load_json` refuses, naming the file: unreadable or oversize files, non-UTF-8 text, syntax
errors (with line and column), nesting too deep for the parser, integers longer than
:data:`MAX_INT_DIGITS` digits, and ``NaN``/``Infinity`` constants. Structure checks stay with each
format's reader; :func:`json_path` formats the location they report (``images[3].width``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from insplad_tools.errors import InspladError

MAX_BYTES = 1 << 30
MAX_INT_DIGITS = 30


class _Refused(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text.lstrip('-'))} digits (more than {MAX_INT_DIGITS})")
    return int(text)


def _parse_constant(name: str) -> Any:
    raise _Refused(f"the non-standard constant {name}")


def loads(text: str, label: str) -> Any:
    """Parse JSON ``text``; ``label`` names the source in the error."""
    try:
        return json.loads(text, parse_int=_parse_int, parse_constant=_parse_constant)
    except _Refused as exc:
        raise InspladError(f"{label}: JSON holds {exc}") from None
    except json.JSONDecodeError as exc:
        raise InspladError(f"{label}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise InspladError(f"{label}: JSON nested too deeply to read") from None
    except ValueError as exc:
        raise InspladError(f"{label}: unreadable JSON ({exc})") from None


def load_json(path: Path, label: str | None = None, *, max_bytes: int = MAX_BYTES) -> Any:
    """Read and parse the JSON file ``path``; any problem is one :class:`InspladError` naming ``label``
    (default: the path)."""
    path = Path(path)
    label = label or str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InspladError(f"{label}: {size} bytes, larger than the {max_bytes}-byte limit for a JSON file")
        raw = path.read_bytes()
    except IsADirectoryError:
        raise InspladError(f"{label}: is a folder, expected a JSON file") from None
    except OSError as exc:
        raise InspladError(f"{label}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InspladError(f"{label}: not UTF-8 text (byte {exc.start})") from None
    return loads(text, label)


def json_path(*parts: str | int) -> str:
    """``json_path("images", 3, "width")`` -> ``images[3].width``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out
