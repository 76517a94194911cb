"""Builders of hostile input for the fault suite: crafted PNG headers, zips, JSON edits."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` (a decompression bomb for large sizes) with one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    """Load ``path``, apply ``change`` (which edits in place or returns a new document), write it back."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    new = change(doc)
    path.write_text(json.dumps(doc if new is None else new), encoding="utf-8")


def deep_json(levels: int = 100_000) -> str:
    return '{"images": ' + "[" * levels + "]" * levels + "}"


def big_int_json() -> str:
    return '{"images": [{"id": ' + "9" * 5000 + ', "file_name": "a.jpg"}], "annotations": [], "categories": []}'


def zip_with(path: Path, entries: dict[str, bytes], *, symlink: str | None = None) -> Path:
    """A zip of ``entries`` (names written verbatim, so '../x' and '/abs' stay hostile); with ``symlink``,
    an extra entry that is a symbolic link to that target."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        if symlink is not None:
            info = zipfile.ZipInfo("train/link.jpg")
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, symlink)
    path.write_bytes(buf.getvalue())
    return path


def export_json(width: int = 100, height: int = 80, segmentation: Any = None, *, file_name: str = "a.jpg",
                category: str = "corrosion") -> dict:
    """A one-image, one-annotation Roboflow-style COCO segmentation document."""
    seg = [[10, 10, 40, 10, 40, 40, 10, 40]] if segmentation is None else segmentation
    return {"images": [{"id": 0, "file_name": file_name, "width": width, "height": height}],
            "categories": [{"id": 0, "name": "defects", "supercategory": "none"},
                           {"id": 1, "name": category, "supercategory": "defects"}],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "segmentation": seg, "iscrowd": 0}]}
