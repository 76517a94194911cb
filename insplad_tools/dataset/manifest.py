"""``manifest.json``: what a build wrote and from what, deterministic to the byte.

No timestamps, no absolute paths, every list sorted: the same input and arguments always give the
same manifest, whose sha256 then identifies the dataset (``insplad_tools.mvtec.dataset_digest``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from insplad_tools.errors import DatasetError
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
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{path}: not an {FORMAT} manifest (format: {data.get('format') if isinstance(data, dict) else None!r})")
    files = data.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("path"), str) for f in files):
        raise DatasetError(f"{path}: 'files' must be a list of entries with a 'path'")
    return data
