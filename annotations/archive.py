"""Safe extraction of export archives: no zip-slip, no links, bounded size and entry count."""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from insplad_tools.errors import InspladError

MAX_TOTAL_BYTES = 8 << 30  # 8 GiB uncompressed: far above any annotation export, far below a zip bomb
MAX_ENTRIES = 200_000
_DRIVE = re.compile(r"^[A-Za-z]:")


def _entry_parts(info: zipfile.ZipInfo, archive: Path) -> tuple[str, ...]:
    """The path components of an entry, refusing anything that could land outside the target."""
    name = info.filename
    if "\x00" in name:
        raise InspladError(f"{archive}: refusing entry with a NUL byte in its name ({name!r})")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or _DRIVE.match(unified):
        raise InspladError(f"{archive}: refusing entry with an absolute path ({name!r})")
    parts = tuple(p for p in PurePosixPath(unified).parts if p not in ("", "."))
    if ".." in parts:
        raise InspladError(f"{archive}: refusing entry with a '..' path component ({name!r})")
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # unix attributes are only meaningful when written on unix
        kind = stat.S_IFMT(mode)  # 0 when only permission bits were stored
        if kind == stat.S_IFLNK:
            raise InspladError(f"{archive}: refusing link entry {name!r}")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise InspladError(f"{archive}: refusing special-file entry {name!r}")
    if info.flag_bits & 0x1:
        raise InspladError(f"{archive}: entry {name!r} is encrypted")
    return parts


def safe_extract(archive: Path, target: Path, *, max_total_bytes: int = MAX_TOTAL_BYTES,
                 max_entries: int = MAX_ENTRIES) -> Path:
    """Extract ``archive`` (a zip) into ``target``, which must not exist or be empty.

    Every entry is checked before anything is written; sizes are also counted while inflating,
    because a zip's declared sizes can lie. On any refusal ``target`` is removed again (or left
    empty if it existed), so a failed extraction leaves nothing behind.
    """
    archive, target = Path(archive), Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InspladError(f"{target}: extraction target exists and is not empty")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InspladError(f"{archive}: not a readable zip archive ({exc})") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            raise InspladError(f"{archive}: {len(infos)} entries exceed the limit of {max_entries}")
        declared = sum(i.file_size for i in infos)
        if declared > max_total_bytes:
            raise InspladError(f"{archive}: {declared} bytes uncompressed exceed the limit of {max_total_bytes}")
        plan = [(info, _entry_parts(info, archive)) for info in infos]
        created = not target.exists()
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        try:
            written = 0
            for info, parts in plan:
                if not parts:
                    continue
                dest = root.joinpath(*parts)
                if root not in dest.parents:  # belt and braces: the checks above already exclude this
                    raise InspladError(f"{archive}: entry {info.filename!r} would land outside {target}")
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                entry_bytes = 0
                with zf.open(info) as src, open(dest, "xb") as out:
                    while block := src.read(1 << 20):
                        entry_bytes += len(block)
                        written += len(block)
                        if entry_bytes > info.file_size or written > max_total_bytes:
                            raise InspladError(f"{archive}: entry {info.filename!r} inflates beyond its declared "
                                               f"size or the {max_total_bytes}-byte limit")
                        out.write(block)
        except FileExistsError as exc:
            _cleanup(target, created)
            raise InspladError(f"{archive}: duplicate entry {exc.filename}") from exc
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            _cleanup(target, created)
            raise InspladError(f"{archive}: corrupt archive ({exc})") from exc
        except BaseException:
            _cleanup(target, created)
            raise
    return target


def _cleanup(target: Path, created: bool) -> None:
    if created:
        shutil.rmtree(target, ignore_errors=True)
    else:
        for child in target.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
