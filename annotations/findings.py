"""One QA finding: what is wrong, where, and how bad."""

from __future__ import annotations

from dataclasses import asdict, dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    level: str                      # "error" (the batch cannot be accepted) or "warning" (look at it)
    code: str                       # stable machine name, e.g. "degenerate-polygon"
    file: str                       # export file relative to the export root (or a raw/dataset path)
    message: str
    image: str | None = None        # image file name inside the export (or crop path in the dataset)
    annotation_id: int | str | None = None

    def to_dict(self) -> dict:
        return asdict(self)
