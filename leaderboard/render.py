"""Result tables shaped like the papers' tables: categories as rows, methods/variants as columns.

Published rows come from the CSV files in ``leaderboard/reference/`` (transcribed from seed 000
Tables 2-5 and seed 003 Tables 2-4, one cited table per row); our columns come from
``insplad-results/1`` files. Values are percentages with two decimals; in each row the best value
is bold and the best column of the highlighted family (DifferNet variants by default) underlined.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leaderboard.results import is_test_selected

REFERENCE_DIR = Path(__file__).parent / "reference"
REFERENCES = ("insplad-fault", "mvtec", "wafer", "insplad-seg-auroc", "insplad-seg-aupro")
METRIC_TITLES = {"image_auroc": "Image AUROC", "pixel_auroc": "Pixel AUROC", "aupro": "AUPRO (FPR ≤ 0.3)",
                 "f1_max": "F1-max"}
MEAN = "mean"
ATTENTION_NAMES = {"se": "SENet", "cbam": "CBAM"}
FAMILY_NAMES = {"differnet": "DifferNet", "simplenet": "SimpleNet", "efficientad": "EfficientAD", "fastflow": "FastFlow",
                "rdpp": "RD++", "patchcore": "PatchCore", "cflow": "CFLOW-AD", "csflow": "CS-Flow", "padim": "PaDiM"}


@dataclass
class Column:
    label: str
    family: str
    source: str
    values: dict[str, float | None] = field(default_factory=dict)  # category (or "mean") -> percent
    ours: bool = False
    marks: dict[str, str] = field(default_factory=dict)  # category (or "mean") -> significance mark (↑ / ↓)


@dataclass
class Table:
    metric: str
    rows: list[tuple[str, str]]  # (category key, printed row name)
    columns: list[Column]
    underline_family: str | None
    notes: list[str] = field(default_factory=list)

    def cell(self, category: str, column: Column) -> float | None:
        return column.values.get(category)

    def marks(self, category: str) -> tuple[set[int], set[int]]:
        """Indices of the bold (best in row) and underlined (best of the family) columns of a row."""
        shown = {i: round(v, 2) for i, c in enumerate(self.columns) if (v := c.values.get(category)) is not None}
        bold = {i for i, v in shown.items() if v == max(shown.values())} if shown else set()
        family = {i: v for i, v in shown.items() if self.columns[i].family == self.underline_family}
        underline = {i for i, v in family.items() if v == max(family.values())} if len(family) > 1 else set()
        return bold, underline


def category_title(name: str) -> str:
    """A printable row name for one of our category folders (``vari_grip`` -> ``Vari Grip``)."""
    return name.replace("_", " ").title()


def read_reference(name: str) -> tuple[str, list[Column], list[tuple[str, str]], list[str]]:
    """Metric, published columns, rows (category, table row name) and sources of a reference CSV."""
    if name not in REFERENCES:
        raise ValueError(f"unknown reference {name!r}; choose from {', '.join(REFERENCES)}")
    with open(REFERENCE_DIR / f"{name}.csv", newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    columns: dict[str, Column] = {}
    rows: dict[str, str] = {}
    notes: list[str] = []
    for rec in records:
        col = columns.setdefault(rec["column"], Column(rec["column"], rec["family"], rec["source"]))
        col.values[rec["category"]] = float(rec["value"])
        rows.setdefault(rec["category"], rec["row"])
        if rec["note"]:
            notes.append(f"{rec['source']}, {rec['row']} / {rec['column']}: {rec['note']}")
    metrics = {rec["metric"] for rec in records}
    (metric,) = metrics
    ordered = [(c, r) for c, r in rows.items() if c != MEAN]
    return metric, list(columns.values()), ordered, notes


BACKBONE_SHORT = {"resnet18": "RN18", "wide_resnet50_2": "WRN-50-2", "wide_resnet101_2": "WRN-101-2"}  # the papers' names


def display_label(doc: dict[str, Any]) -> str:
    """A column label in the papers' style for one of our results files."""
    method, variant = doc["method"], doc.get("variant", {})
    attention = variant.get("attention") or "none"
    att_name = ATTENTION_NAMES.get(attention, attention)
    if method == "differnet":
        label = "DifferNet" if attention == "none" else f"AttentDifferNet ({att_name})"
        blocks = variant.get("blocks")
        if attention != "none" and blocks and sorted(blocks) != [1, 2, 3]:
            label = label[:-1] + ", " + "+".join(f"AB{b}" for b in sorted(blocks)) + ")"
    elif method in ("simplenet", "efficientad", "patchcore"):
        base = FAMILY_NAMES[method]
        backbone = BACKBONE_SHORT.get(str(variant.get("backbone", "")), variant.get("backbone") or "")
        parts = [p for p in (backbone, None if attention == "none" else att_name) if p]
        label = f"{base} ({'-'.join(parts)})" if parts else base
        if variant.get("backbone_label"):  # a non-default backbone, e.g. "EfficientNet-Lite0 (ImageNet, offline) — ..."
            label = (base if attention == "none" else f"{base} ({att_name})") + f" on {variant['backbone_label']}"
    elif method in ("fastflow", "rdpp"):  # seed 000 Tables 2-4 write the attention first: "FastFlow (SE-RN18)"
        backbone = BACKBONE_SHORT.get(str(variant.get("backbone", "")), variant.get("backbone") or "")
        parts = [p for p in (None if attention == "none" else attention.upper(), backbone) if p]
        label = f"{FAMILY_NAMES[method]} ({'-'.join(parts)})" if parts else FAMILY_NAMES[method]
    elif method in ("cflow", "csflow", "padim"):
        label = FAMILY_NAMES[method] + ("" if attention == "none" else f" ({att_name})")
    else:
        label = method + ("" if attention == "none" else f" ({att_name})")
    agg = doc.get("aggregation", {})
    seeds = agg.get("seeds", [])
    if len(seeds) > 1:
        label += f" [{agg.get('report')} of {len(seeds)}]"
    if is_test_selected(doc):
        label += " [test-set model selection]"
    return label + " — ours"


def partial_note(doc: dict[str, Any], label: str, metric: str, scope: Sequence[str] | None = None) -> str | None:
    """A note for a results file that covers only some of its dataset's categories (or of ``scope``,
    the table's own categories, when given), else None."""
    from leaderboard.results import coverage

    found = coverage(doc, list(scope) if scope is not None else None)
    if found is None or not found[2]:
        return None
    covered, total, missing = found
    mean = doc["mean"].get(metric)
    shown = "–" if mean is None else f"{100.0 * mean:.2f}"
    return (f"{label}: PARTIAL, {covered} of {total} dataset categories (missing: {', '.join(missing)}); "
            f"its mean over those ({shown}) is not shown as an average")


def our_column(doc: dict[str, Any], metric: str, source: str, scope: Sequence[str] | None = None) -> Column:
    """Our column; a partial results file (categories of its dataset missing) is marked and gets no average.

    With ``scope`` (the table's categories, e.g. InsPLAD-seg's three masked ones) the column holds those
    categories only, it is partial when it lacks one of them, and its average is over them.
    """
    from leaderboard.results import coverage

    values: dict[str, float | None] = {}
    for row in doc["categories"]:
        value = row.get(metric)
        values[row["category"]] = None if value is None else 100.0 * value
    found = coverage(doc, list(scope) if scope is not None else None)
    label = display_label(doc)
    if scope is not None:
        values = {c: values[c] for c in scope if c in values}
    if found is not None and found[2]:
        label += f" [partial {found[0]}/{found[1]}]"
        values[MEAN] = None
    elif scope is not None:
        present = [values[c] for c in scope]
        values[MEAN] = None if any(v is None for v in present) or not present else sum(present) / len(present)
    else:
        mean = doc["mean"].get(metric)
        values[MEAN] = None if mean is None else 100.0 * mean
    return Column(label, doc["method"], source, values, ours=True)


def align_categories(values: dict[str, float | None], known: set[str]) -> dict[str, float | None]:
    """Rename our categories to the reference's rows through the taxonomy's aliases, so a released folder's
    ``glass-insulator`` or ``isolador_vidro`` lines up with the papers' ``glass_insulator`` row."""
    from insplad_tools.dataset.taxonomy import UnknownClassError, load_taxonomy

    if not known or all(c in known or c == MEAN for c in values):
        return values
    taxonomy = load_taxonomy()
    out: dict[str, float | None] = {}
    for category, value in values.items():
        try:
            canonical = taxonomy.category_of(category) if category not in known and category != MEAN else None
        except UnknownClassError:  # not an InsPLAD name: it keeps a row of its own
            canonical = None
        key = canonical if canonical in known and canonical not in values and canonical not in out else category
        out[key] = value
    return out


def build_table(results: list[tuple[str, dict[str, Any]]], *, reference: str | None = None, metric: str | None = None,
                underline_family: str | None = "differnet", scope: Sequence[str] | None = None) -> Table:
    """Combine published columns (``reference``) and our results files into one table; ``scope``
    restricts our columns to those categories and averages each over them (see :func:`our_column`)."""
    columns: list[Column] = []
    rows: list[tuple[str, str]] = []
    notes: list[str] = []
    if reference:
        ref_metric, columns, rows, notes = read_reference(reference)
        if metric and metric != ref_metric:
            raise ValueError(f"reference {reference} reports {ref_metric}, not {metric}")
        metric = ref_metric
    metric = metric or "image_auroc"
    known = {c for c, _ in rows}
    for source, doc in results:
        col = our_column(doc, metric, source, scope)
        col.values = align_categories(col.values, known)
        columns.append(col)
        note = partial_note(doc, col.label, metric, scope)
        if note:
            notes.append(note)
        for category in col.values:
            if category != MEAN and category not in known:
                rows.append((category, category_title(category)))
                known.add(category)
        for note in list(dict.fromkeys(doc.get("notes") or []))[:5]:
            notes.append(f"{col.label}: {note}")
        if reference:
            missing = sorted({c for c, _ in rows} - set(col.values))
            if missing:
                notes.append(f"{col.label}: no result for {', '.join(missing)}; its mean is over its own categories")
    if scope is not None:
        notes.append(f"Average over the table's {len(scope)} categories ({', '.join(scope)})")
    rows.append((MEAN, "Average"))
    return Table(metric, rows, columns, underline_family, notes)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def caption(table: Table) -> str:
    text = f"{METRIC_TITLES.get(table.metric, table.metric)} in %. Bold: best in the row"
    if table.underline_family is None:
        return text + "."
    return text + f"; underlined: best {FAMILY_NAMES.get(table.underline_family, table.underline_family)} variant."


def to_markdown(table: Table) -> str:
    lines = [f"**{caption(table)}**", "", "| Category | " + " | ".join(c.label for c in table.columns) + " |",
             "|---|" + "---:|" * len(table.columns)]
    for category, title in table.rows:
        bold, underline = table.marks(category)
        cells = []
        for i, col in enumerate(table.columns):
            text = _fmt(col.values.get(category)) + col.marks.get(category, "")
            if i in underline:
                text = f"<u>{text}</u>"
            if i in bold:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"- {line}" for line in _sources(table))
    return "\n".join(lines) + "\n"


def _sources(table: Table) -> list[str]:
    by_source: dict[tuple[bool, str], list[str]] = {}
    for col in table.columns:
        by_source.setdefault((col.ours, col.source), []).append(col.label)
    lines = [f"{'ours, from' if ours else 'published in'} {source}: {', '.join(labels)}"
             for (ours, source), labels in by_source.items()]
    return lines + table.notes


def to_html(table: Table) -> str:
    esc = html.escape
    out = ["<table>", f"<caption>{esc(caption(table))}</caption>", "<thead><tr><th>Category</th>"
           + "".join(f"<th>{esc(c.label)}</th>" for c in table.columns) + "</tr></thead>", "<tbody>"]
    for category, title in table.rows:
        bold, underline = table.marks(category)
        cells = []
        for i, col in enumerate(table.columns):
            text = esc(_fmt(col.values.get(category)) + col.marks.get(category, ""))
            if i in underline:
                text = f"<u>{text}</u>"
            if i in bold:
                text = f"<b>{text}</b>"
            cells.append(f"<td>{text}</td>")
        out.append(f"<tr><th>{esc(title)}</th>{''.join(cells)}</tr>")
    out.append("</tbody>")
    out.append("</table>")
    out.append("<ul>" + "".join(f"<li>{esc(s)}</li>" for s in _sources(table)) + "</ul>")
    return "\n".join(out) + "\n"


def to_csv(table: Table) -> str:
    """Long format, one line per cell, with the bold/underline marks as 0/1 columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "category", "row", "column", "family", "ours", "source", "value_percent", "best", "best_in_family"])
    for category, title in table.rows:
        bold, underline = table.marks(category)
        for i, col in enumerate(table.columns):
            value = col.values.get(category)
            writer.writerow([table.metric, category, title, col.label, col.family, int(col.ours), col.source,
                             "" if value is None else f"{value:.2f}", int(i in bold), int(i in underline)])
    return buffer.getvalue()


FORMATS = {"md": to_markdown, "html": to_html, "csv": to_csv}


def plot(table: Table, path: Path) -> None:
    """A grouped bar chart: one group per row (category), one bar per column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n_rows, n_cols = len(table.rows), len(table.columns)
    width = 0.8 / max(n_cols, 1)
    fig, ax = plt.subplots(figsize=(min(24.0, max(8.0, 3.0 + n_rows * (0.18 * n_cols + 0.3))), 5.0))
    x = np.arange(n_rows)
    cmap = plt.get_cmap("tab20")
    for j, col in enumerate(table.columns):
        heights = [col.values.get(c) for c, _ in table.rows]
        ys = [np.nan if h is None else h for h in heights]
        ax.bar(x - 0.4 + width * (j + 0.5), ys, width, label=col.label, color=cmap(j % 20),
               edgecolor="black" if col.ours else "none", linewidth=1.2 if col.ours else 0, hatch="//" if col.ours else None)
    values = [v for col in table.columns for v in col.values.values() if v is not None]
    low = min(values) if values else 0.0
    ax.set_ylim(max(0.0, np.floor(low / 10) * 10 - 5), 100.5)
    ax.set_xticks(x, [t for _, t in table.rows], rotation=30, ha="right")
    ax.set_ylabel(f"{METRIC_TITLES.get(table.metric, table.metric)} [%]")
    ax.grid(axis="y", alpha=0.3)
    longest = max((len(col.label) for col in table.columns), default=0)
    ax.legend(fontsize=7, ncol=1 if longest > 40 else 2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # grows the canvas to hold the outside legend, whatever its labels
    plt.close(fig)


def mark_significance(table: Table, comparison: dict[str, Any]) -> bool:
    """Mark A's cells where ``insplad leaderboard compare A B --json`` found A − B significant (its
    bootstrap interval excludes 0): ↑ above B, ↓ below. Returns False when A is not a column of the table."""
    target = f"{comparison['a_label']} — ours"
    columns = [c for c in table.columns if c.ours and c.label.startswith(target)]
    if not columns or table.metric != comparison.get("metric"):
        return False
    rows = [(r["category"], r["ci_low"], r["ci_high"]) for r in comparison["categories"]]
    rows.append((MEAN, *comparison["mean_ci"]))
    for category, low, high in rows:
        if low > 0 or high < 0:
            for col in columns:
                col.marks[category] = "↑" if low > 0 else "↓"
    level = round(100 * comparison["confidence"])
    table.notes.append(f"↑/↓ on {comparison['a_label']}: significantly above/below {comparison['b_label']} "
                       f"({level}% bootstrap CI of the difference over seeds and test images excludes 0; "
                       "insplad leaderboard compare)")
    return True
