"""``manifest.json``: what a build wrote and from what, deterministic to the byte.

No timestamps, no absolute paths, every list sorted: the same input and arguments always give the
same manifest, whose sha256 then identifies the dataset (``insplad_tools.mvtec.dataset_digest``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from insplad_tools.errors import DatasetError, InspladError
from insplad_tools.jsonfile import load_json
from insplad_tools.mvtec import MANIFEST

FORMAT = "insplad-manifest/1"


LIST_KEYS = ("files", "problems", "skipped")


def dumps(manifest: dict[str, Any]) -> str:
    """Canonical text: sorted keys, ASCII, one line per file entry (readable diffs, compact for 10k files)."""
    lines = ["{"]
    keys = sorted(manifest)
    for i, key in enumerate(keys):
        comma = "," if i < len(keys) - 1 else ""
        value = manifest[key]
        if key in LIST_KEYS and isinstance(value, list):
            items = [json.dumps(v, sort_keys=True, ensure_ascii=True, separators=(", ", ": ")) for v in value]
            body = ",\n".join(f"  {item}" for item in items)
            lines.append(f" {json.dumps(key)}: [" + (f"\n{body}\n ]" if items else "]") + comma)
        else:
            text = json.dumps(value, sort_keys=True, ensure_ascii=True, indent=1).replace("\n", "\n ")
            lines.append(f" {json.dumps(key)}: {text}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def load_manifest(root: Path) -> dict[str, Any]:
    """Read and sanity-check ``ROOT/manifest.json``; :class:`DatasetError` naming the file otherwise."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{path}: no manifest (was this dataset built by `insplad build-splits`?)")
    try:
        data = load_json(path)
    except InspladError as exc:
        raise DatasetError(f"unreadable manifest: {exc.message}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{path}: not an {FORMAT} manifest (format: {data.get('format') if isinstance(data, dict) else None!r})")
    files = data.get("files")
    if not isinstance(files, list):
        raise DatasetError(f"{path}: 'files' must be a list of entries")
    for i, entry in enumerate(files):
        if why := _entry_problem(entry):
            raise DatasetError(f"{path}: files[{i}]{why}")
    return data


_SHA = re.compile(r"^[0-9a-f]{64}$")
_STRING_FIELDS = ("category", "split", "defect")


def _relative(value: object) -> bool:
    """A plain relative POSIX path that stays inside the dataset (no '..', not absolute)."""
    if not isinstance(value, str) or not value or "\\" in value or "\x00" in value:
        return False
    pure = PurePosixPath(value)
    return not pure.is_absolute() and ".." not in pure.parts and not re.match(r"^[A-Za-z]:", value)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= 1e9


def _entry_problem(entry: object) -> str | None:
    """Why one ``files`` entry is malformed (as ``.key: reason``), or None."""
    if not isinstance(entry, dict):
        return " must be an object"
    if not _relative(entry.get("path")):
        return f".path {str(entry.get('path'))[:80]!r} must be a relative path inside the dataset"
    if not isinstance(entry.get("sha256"), str) or not _SHA.match(entry["sha256"]):
        return ".sha256 must be 64 lowercase hex digits"
    for key in _STRING_FIELDS:
        if not isinstance(entry.get(key), str):
            return f".{key} must be a string"
    if not isinstance(entry.get("group"), (str, int, type(None))) or isinstance(entry.get("group"), bool):
        return ".group must be a string or an integer"
    for key, length in (("frame_size", 2), ("box", 4), ("crop_box", 4)):  # optional, but typed when present
        value = entry.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == length
                                      and all(_finite(v) for v in value)):
            return f".{key} must be a list of {length} finite numbers"
    if entry.get("frame") is not None and not isinstance(entry["frame"], str):
        return ".frame must be a string"
    mask = entry.get("mask")
    if mask is not None:
        if not isinstance(mask, dict) or not _relative(mask.get("path")):
            return ".mask must be null or an object with a relative 'path' inside the dataset"
        if not isinstance(mask.get("sha256"), str) or not _SHA.match(mask["sha256"]):
            return ".mask.sha256 must be 64 lowercase hex digits"
    return None
