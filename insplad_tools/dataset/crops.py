"""The per-frame work of a build: decode the frame once, cut every planned object out of it.

Runs in worker processes (``--jobs``), so everything here is plain picklable data and a
module-level function. Crops are written to a flat staging folder under their final file name;
the parent process decides their split afterwards and moves them into place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from insplad_tools.dataset.imaging import DecodeError, decode_frame, encode_png, object_box, padded_box, pixel_digest
from insplad_tools.dataset.sources import Problem
from insplad_tools.fsutil import sha256_bytes


@dataclass(frozen=True)
class CropJob:
    """One object to cut out, already mapped through the taxonomy."""

    stem: str                                   # output file stem: <frame stem>_<object index>
    index: int
    category: str
    defect: str
    raw_class: str
    condition: str | None
    box: tuple[float, float, float, float]
    annotation_id: str
    source: str
    label: str                                  # how problems name the object


@dataclass(frozen=True)
class FrameJob:
    name: str
    path: Path
    rel: str                                    # frame path relative to the raw folder, for messages
    size: tuple[int, int] | None                # declared (W, H)
    group: str
    crops: tuple[CropJob, ...]


@dataclass
class CropResult:
    job: CropJob
    frame: str
    group: str
    frame_size: tuple[int, int]
    object_box: tuple[int, int, int, int]
    crop_box: tuple[int, int, int, int]
    sha256: str
    pixel_sha256: str
    pixels: np.ndarray | None = None            # kept only for anomalous crops when masks are wanted

    @property
    def file_name(self) -> str:
        return f"{self.job.stem}.png"


@dataclass
class FrameResult:
    crops: list[CropResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)


def process_frame(job: FrameJob, *, pad: float, min_size: int, staging: Path, keep_anomalous_pixels: bool) -> FrameResult:
    """Decode ``job``'s frame and write a PNG crop per object into ``staging``."""
    out = FrameResult()
    try:
        frame = decode_frame(job.path)
    except DecodeError as exc:
        out.problems.append(Problem(job.rel, f"{exc}; frame skipped"))
        return out
    width, height = frame.size
    if job.size is not None and job.size != (width, height):
        out.problems.append(Problem(job.rel, f"annotation says {job.size[0]}x{job.size[1]} but the (upright) image is "
                                             f"{width}x{height}; frame skipped"))
        return out
    for crop_job in job.crops:
        box = object_box(crop_job.box, width, height)
        if box is None:
            out.problems.append(Problem(crop_job.source, f"box {_fmt(crop_job.box)} lies outside the {width}x{height} "
                                                         f"frame {job.name}; skipped", crop_job.label))
            continue
        side = min(box[2] - box[0], box[3] - box[1])
        if side < min_size:
            out.skipped.append(Problem(crop_job.source, f"object is {box[2] - box[0]}x{box[3] - box[1]} px, below "
                                                        f"--min-size {min_size}; skipped", crop_job.label))
            continue
        crop_box = padded_box(box, pad, width, height)
        crop = frame.crop(crop_box)
        data = encode_png(crop)
        (staging / f"{crop_job.stem}.png").write_bytes(data)
        pixels = np.asarray(crop) if keep_anomalous_pixels and crop_job.defect != "good" else None
        out.crops.append(CropResult(crop_job, job.name, job.group, (width, height), box, crop_box,
                                    sha256_bytes(data), pixel_digest(crop), pixels))
    return out


def _fmt(box: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"
