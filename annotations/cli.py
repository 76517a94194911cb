"""``insplad annotations``: QA of Roboflow segmentation exports (InsPLAD-seg masks)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import click

from annotations.findings import ERROR, WARNING, Finding


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def annotations() -> None:
    """Annotation tools for pixel-level sets (InsPLAD-seg): Roboflow segmentation exports.

    \b
    Label defects in Roboflow (polygons, on full frames or on crops), export the version as
    "COCO Segmentation", then:
      insplad annotations check export.zip --raw raw/          # QA before accepting the batch
      insplad build-splits raw/ data/ --masks export.zip       # masks next to anomalous crops
    """


def _where(f: Finding) -> str:
    parts = [f.file]
    if f.image:
        parts.append(f.image)
    if f.annotation_id is not None:
        parts.append(f"annotation {f.annotation_id}")
    return "  ".join(parts)


def render_text(report, max_lines: int) -> str:
    """The human-readable report: findings grouped by level and code, with counts."""
    s = report.stats
    lines = [f"Annotation QA of {report.export}: {s['files']} JSON file(s), {s['images']} image(s) "
             f"({s['images_without_annotations']} without annotations), {s['annotations']} annotation(s)",
             f"Categories: {', '.join(s['categories']) or '(none)'}"]
    for key, title in (("raw", "Raw cross-check"), ("data", "Dataset cross-check")):
        if key in s:
            lines.append(f"{title}: " + ", ".join(f"{k.replace('_', ' ')} {v if not isinstance(v, list) else ', '.join(v) or '-'}"
                                                 for k, v in s[key].items()))
    for level, title, colour in ((ERROR, "ERRORS", "red"), (WARNING, "WARNINGS", "yellow")):
        groups: dict[str, list[Finding]] = defaultdict(list)
        for f in report.findings:
            if f.level == level:
                groups[f.code].append(f)
        if not groups:
            continue
        total = sum(len(v) for v in groups.values())
        lines.append("")
        lines.append(click.style(f"{title} ({total})", fg=colour, bold=True))
        for code in sorted(groups, key=lambda c: (-len(groups[c]), c)):
            items = groups[code]
            lines.append(f"  {code} ({len(items)})")
            shown = items if max_lines <= 0 else items[:max_lines]
            lines.extend(f"    {_where(f)}: {f.message}" for f in shown)
            if len(shown) < len(items):
                lines.append(f"    ... and {len(items) - len(shown)} more (--max-lines 0 shows all)")
    lines.append("")
    if report.errors:
        lines.append(click.style(f"FAILED: {report.errors} error(s), {report.warnings} warning(s)", fg="red", bold=True))
    else:
        lines.append(click.style(f"OK: 0 errors, {report.warnings} warning(s)", fg="green", bold=True))
    return "\n".join(lines)


@annotations.command("check")
@click.argument("export", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--roboflow", metavar="WORKSPACE/PROJECT/VERSION",
              help="Download this Roboflow version (COCO Segmentation; needs ROBOFLOW_API_KEY) instead of EXPORT.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where --roboflow downloads are cached [default: $INSPLAD_CACHE/roboflow or ~/.cache/insplad/roboflow].")
@click.option("--raw", "raw_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Raw folder (images/ + annotations/) of frame-drawn masks: checks each mask lies on an "
                   "anomalous object and each anomalous object of a masked category has a mask.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Built dataset (MVTec layout): checks masks against its normal/anomalous crops.")
@click.option("--taxonomy", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Taxonomy JSON for category/condition names [default: the built-in InsPLAD-fault one].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (findings with level, code, file, "
                                                      "image, annotation_id, message).")
@click.option("--max-lines", type=click.IntRange(min=0), default=20, show_default=True,
              help="Findings listed per group in the text report (0 lists all).")
def check(export: Path | None, roboflow: str | None, cache_dir: Path | None, raw_dir: Path | None,
          data_dir: Path | None, taxonomy: Path | None, as_json: bool, max_lines: int) -> None:
    """QA a Roboflow "COCO Segmentation" EXPORT (folder or .zip) before accepting the batch.

    Finds degenerate and self-intersecting polygons, bad RLE, duplicate and overlapping
    annotations, category names the taxonomy does not know, image files whose size disagrees with
    the JSON, and, with --raw or --data, masks outside the objects, masks on normal objects and
    anomalous objects without a mask. Exits with status 1 when any error-level finding exists.
    """
    from annotations.coco_export import open_export
    from annotations.qa import check_export
    from insplad_tools.dataset.taxonomy import load_taxonomy

    if (export is None) == (roboflow is None):
        raise click.UsageError("give an EXPORT folder/zip or --roboflow WORKSPACE/PROJECT/VERSION (exactly one)")
    tax = load_taxonomy(taxonomy)
    if roboflow is not None:
        from annotations.download import download_export

        opened = open_export(download_export(roboflow, cache_dir=cache_dir), label=roboflow)
    else:
        opened = open_export(export)  # type: ignore[arg-type]
    try:
        report = check_export(opened, taxonomy=tax, raw_dir=raw_dir, data_dir=data_dir, progress=True)
    finally:
        opened.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        click.echo(render_text(report, max_lines))
    sys.exit(1 if report.errors else 0)
