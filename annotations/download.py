"""Download a Roboflow dataset version as "COCO Segmentation" with the roboflow SDK, cached on disk.

``WORKSPACE/PROJECT/VERSION`` is downloaded once into
``<cache>/<workspace>/<project>/<version>/``; a later call finds the completed folder (marked by
``.insplad-complete``) and does not touch the network. The download lands in a temporary sibling
and is renamed into place only when complete, so an interrupted download is never mistaken for
a cached one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from insplad_tools.errors import InspladError

FORMAT = "coco-segmentation"
COMPLETE = ".insplad-complete"
_SPEC = re.compile(r"^(?P<ws>[A-Za-z0-9][\w.-]*)/(?P<project>[A-Za-z0-9][\w.-]*)/(?:v)?(?P<version>\d+)$")


def parse_spec(spec: str) -> tuple[str, str, int]:
    """``"ws/project/3"`` -> ``("ws", "project", 3)``; a clear error for anything else."""
    match = _SPEC.match(spec.strip().strip("/"))
    if not match:
        raise InspladError(f"--roboflow {spec!r}: expected WORKSPACE/PROJECT/VERSION, e.g. my-team/insplad-seg/2")
    return match["ws"], match["project"], int(match["version"])


def default_cache_dir() -> Path:
    base = os.environ.get("INSPLAD_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "insplad") / "roboflow"


def cached_path(spec: str, cache_dir: Path | None = None) -> Path:
    ws, project, version = parse_spec(spec)
    return Path(cache_dir or default_cache_dir()) / ws / project / str(version)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def download_export(spec: str, *, cache_dir: Path | None = None, api_key: str | None = None) -> Path:
    """The local folder of the export ``spec``, downloading it first unless it is cached."""
    target = cached_path(spec, cache_dir)
    if (target / COMPLETE).is_file():
        return target
    ws, project, version = parse_spec(spec)
    key = api_key or os.environ.get("ROBOFLOW_API_KEY", "").strip()
    if not key:
        raise InspladError(f"--roboflow {spec}: ROBOFLOW_API_KEY is not set (export your key from Roboflow's "
                           "settings, or download the export yourself and pass its folder or .zip)")
    try:
        from roboflow import Roboflow
    except ImportError as exc:
        raise InspladError(f"--roboflow {spec}: the roboflow package is not installed (pip install roboflow)") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.download-", dir=target.parent))
    try:
        try:
            client = Roboflow(api_key=key)
            dataset = client.workspace(ws).project(project).version(version).download(
                FORMAT, location=str(staging / "export"), overwrite=True)
        except Exception as exc:  # the SDK raises requests, RuntimeError and its own errors alike
            raise InspladError(f"--roboflow {spec}: download failed ({_first_line(exc)}); check the name, "
                               "the key and the network, or pass a downloaded export instead") from exc
        folder = Path(getattr(dataset, "location", staging / "export"))
        if not folder.is_dir() or not any(folder.rglob("_annotations.coco.json")):
            raise InspladError(f"--roboflow {spec}: the download has no _annotations.coco.json "
                               f"(is version {version} exported as COCO Segmentation?)")
        for path in folder.rglob("*"):
            if path.is_symlink():
                raise InspladError(f"--roboflow {spec}: refusing a download containing a link ({path.name})")
        (folder / COMPLETE).write_text(f"{spec}\n")
        if target.exists():  # a stale, incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(folder, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
