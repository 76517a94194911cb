"""``stats.md`` / ``stats.csv``: per-category counts in the shape of InsPLAD Table 1.

Columns follow seed 000 Table 1 (train flawless, test flawless, test anomalous, split by defect
type as "63/48" when a category has two) and, for datasets with masks, seed 003 Table 1 (plus the
number of masks).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class CategoryStats:
    category: str
    title: str
    defects: tuple[str, ...]
    train_flawless: int = 0
    test_flawless: int = 0
    anomalous: dict[str, int] = field(default_factory=dict)
    masks: int = 0

    @property
    def test_anomalous(self) -> int:
        return sum(self.anomalous.values())


def compute(entries: Iterable[Mapping], defects: Mapping[str, tuple[str, ...]], titles: Mapping[str, str]) -> list[CategoryStats]:
    """Counts per category from manifest file entries (``category``, ``split``, ``defect``, ``mask``)."""
    rows: dict[str, CategoryStats] = {}
    for entry in entries:
        cat = entry["category"]
        if cat not in rows:
            rows[cat] = CategoryStats(cat, titles.get(cat, cat), tuple(defects.get(cat, ())))
        row = rows[cat]
        if entry["defect"] == "good":
            if entry["split"] == "train":
                row.train_flawless += 1
            else:
                row.test_flawless += 1
        else:
            row.anomalous[entry["defect"]] = row.anomalous.get(entry["defect"], 0) + 1
            row.masks += entry.get("mask") is not None
    return [rows[c] for c in sorted(rows)]


def to_csv(rows: list[CategoryStats], with_masks: bool) -> str:
    defect_types = sorted({d for r in rows for d in r.defects} | {d for r in rows for d in r.anomalous})
    header = ["category", "train_flawless", "test_flawless", "test_anomalous", *[f"test_{d}" for d in defect_types]]
    if with_masks:
        header.append("masks")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    totals = [0] * (len(header) - 1)
    for r in rows:
        values = [r.train_flawless, r.test_flawless, r.test_anomalous]
        values += [r.anomalous.get(d, 0) if d in r.defects or d in r.anomalous else "" for d in defect_types]
        if with_masks:
            values.append(r.masks)
        writer.writerow([r.category, *values])
        totals = [t + (v if isinstance(v, int) else 0) for t, v in zip(totals, values)]
    writer.writerow(["total", *totals])
    return buf.getvalue()


def to_markdown(rows: list[CategoryStats], name: str, with_masks: bool) -> str:
    lines = [f"# {name}: dataset description", ""]
    header = "| Asset category | Train flawless | Test flawless | Test anomalous |" + (" Masks |" if with_masks else "")
    lines += [header, "|---|---:|---:|---:|" + ("---:|" if with_masks else "")]
    for r in rows:
        kinds = [d for d in r.defects if d in r.anomalous] + sorted(set(r.anomalous) - set(r.defects))
        anomalous = "/".join(str(r.anomalous[d]) for d in kinds) if len(kinds) > 1 else str(r.test_anomalous)
        line = f"| {r.title} | {r.train_flawless} | {r.test_flawless} | {anomalous} |"
        lines.append(line + (f" {r.masks} |" if with_masks else ""))
    total = (f"| **Total** | {sum(r.train_flawless for r in rows)} | {sum(r.test_flawless for r in rows)} | "
             f"{sum(r.test_anomalous for r in rows)} |")
    lines.append(total + (f" {sum(r.masks for r in rows)} |" if with_masks else ""))
    lines.append("")
    notes = []
    for r in rows:
        kinds = [d for d in r.defects if d in r.anomalous] + sorted(set(r.anomalous) - set(r.defects))
        if kinds:
            notes.append(f"{r.title}: " + " / ".join(k.replace("_", " ") for k in kinds))
    if notes:
        lines.append("Anomaly types (in the order of split counts): " + "; ".join(notes) + ".")
        lines.append("")
    return "\n".join(lines)
