"""Leak-free, stable train/test assignment of normal crops by group.

A crop's group is a key taken from its source frame's name (the frame itself, its tower, its
flight, or any regex). A group's side is decided by a keyed hash of ``(seed, group)`` compared
with the test ratio, so it never depends on which other frames exist: adding frames later never
moves an existing crop. Within a category, a group that contributes an anomalous crop (always a
test image) sends all of its normal crops of that category to test as well, so no group appears on
both sides of a category. (That is the one case in which adding frames can move existing crops:
a new anomaly arriving in a group that was on the train side.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from insplad_tools.dataset.det import parse_frame_name
from insplad_tools.errors import InspladError

GROUP_PATTERNS: dict[str, str] = {
    "frame": r"^(?P<group>.+)$",
    "tower": r"(?i)(?P<group>tower[-_ ]?\d+)",
    "flight": r"(?i)(?P<group>flight[-_ ]?\d+)",
    "visit": r"(?i)(?P<group>tower[-_ ]?\d+[-_ ]?visit[-_ ]?\d+)",
}
# InsPLAD-det frames are named <tower>-<visit>_DJI_<n>.jpg: tower and visit are read from that naming first.
_DET_KEYS = ("tower", "visit")
TRAIN, TEST = "train", "test"


@dataclass(frozen=True)
class Grouper:
    """Maps a frame file name to its group id."""

    key: str            # "frame", "tower", "flight" or "regex"
    pattern: str

    @classmethod
    def create(cls, group_by: str = "frame", group_regex: str | None = None) -> Grouper:
        if group_regex:
            try:
                re.compile(group_regex)
            except re.error as exc:
                raise InspladError(f"--group-regex {group_regex!r}: not a valid regular expression ({exc})") from exc
            return cls("regex", group_regex)
        if group_by not in GROUP_PATTERNS:
            raise InspladError(f"--group-by {group_by!r}: choose from {', '.join(GROUP_PATTERNS)} (or give --group-regex)")
        return cls(group_by, GROUP_PATTERNS[group_by])

    def group_of(self, frame_name: str) -> str | None:
        """The group id of a frame (searched in its stem), ``None`` when the pattern does not match."""
        stem = PurePosixPath(frame_name).stem
        if self.key in _DET_KEYS and (det := parse_frame_name(frame_name)) is not None:
            return f"tower{det.tower}" if self.key == "tower" else f"tower{det.tower}-visit{det.visit}"
        match = re.search(self.pattern, stem)
        if match is None:
            return None
        if "group" in match.re.groupindex:
            value = match.group("group")
        elif match.re.groups:
            value = match.group(1)
        else:
            value = match.group(0)
        if not value:
            return None
        # tower007, Tower_007 and tower-007 are the same tower
        return value if self.key in ("frame", "regex") else re.sub(r"[-_ ]", "", value.lower())


def unit_hash(group: str, seed: int) -> float:
    """A uniform number in [0, 1) that depends only on ``(seed, group)``."""
    digest = hashlib.blake2b(group.encode("utf-8"), digest_size=8, key=f"insplad-split:{seed}".encode()).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def side_of(group: str, seed: int, test_ratio: float) -> str:
    """``"test"`` for about ``test_ratio`` of all groups, ``"train"`` for the rest; stable per (group, seed)."""
    return TEST if unit_hash(group, seed) < test_ratio else TRAIN


def assign_sides(groups: Iterable[str], anomalous_groups: Iterable[str], seed: int, test_ratio: float) -> dict[str, str]:
    """Side of every group of one category: hashed, but forced to test when it holds an anomaly."""
    forced = set(anomalous_groups)
    return {g: TEST if g in forced else side_of(g, seed, test_ratio) for g in groups}


def split_items(items: Sequence[tuple[str, str, bool]], seed: int, test_ratio: float) -> list[str]:
    """Split of each ``(category, group, anomalous)`` item: anomalies to test, normals by their group's side."""
    groups: dict[str, set[str]] = {}
    anomalous: dict[str, set[str]] = {}
    for category, group, is_anomalous in items:
        groups.setdefault(category, set()).add(group)
        if is_anomalous:
            anomalous.setdefault(category, set()).add(group)
    sides = {cat: assign_sides(gs, anomalous.get(cat, ()), seed, test_ratio) for cat, gs in groups.items()}
    return [TEST if is_anomalous else sides[category][group] for category, group, is_anomalous in items]
