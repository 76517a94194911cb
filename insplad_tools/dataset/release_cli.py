"""Click commands for the released InsPLAD data: ``insplad link-crops`` and ``insplad audit``."""

from __future__ import annotations

from pathlib import Path

import click

from insplad_tools.dataset.link import DEFAULT_PADS, LinkOptions, link_crops
from insplad_tools.errors import InspladError
from insplad_tools.fsutil import atomic_write_bytes

MAX_LISTED = 20


def _pads(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise InspladError(f"--pads {value!r}: expected comma-separated fractions, e.g. 0,0.05,0.1") from None


@click.command("link-crops")
@click.argument("det_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("fault_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder for conditions.csv and provenance.csv (must not overlap DET_DIR or FAULT_DIR).")
@click.option("--pads", default=",".join(f"{p:g}" for p in DEFAULT_PADS), show_default=True,
              help="Paddings tried around each box, as fractions of its size on every side (the crop's context).")
@click.option("--min-score", type=float, default=0.93, show_default=True,
              help="Lowest normalised cross-correlation (-1..1) accepted as a match.")
@click.option("--margin", type=float, default=0.02, show_default=True,
              help="How much the best box must beat the best other box; closer calls are reported as ambiguous.")
@click.option("--thumb", type=int, default=24, show_default=True,
              help="Side of the greyscale thumbnails compared (pixels).")
@click.option("--aspect-tolerance", type=float, default=0.04, show_default=True,
              help="Allowed |log| difference between crop and padded-box aspect ratios (plus 1 px of rounding).")
@click.option("--duplicate-images", type=click.Choice(["exclude", "first", "error"]), default="exclude",
              show_default=True, help="InsPLAD-det file names listed under two image ids (as in build-splits).")
@click.option("--taxonomy", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="JSON taxonomy replacing the built-in one (asset and condition folder names are matched through it).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it is an earlier output of this tool.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no per-crop lines (summary only).")
def link_crops_cmd(det_dir: Path, fault_dir: Path, out_dir: Path, pads: str, min_score: float, margin: float,
                   thumb: int, aspect_tolerance: float, duplicate_images: str, taxonomy: Path | None,
                   overwrite: bool, quiet: bool) -> None:
    """Find the InsPLAD-det frame and annotation each released InsPLAD-fault crop was cut from.

    \b
    DET_DIR   the released InsPLAD-det (annotations/instances_*.json, frames in train/ and val/),
              or any raw folder build-splits reads
    FAULT_DIR released crops: <asset>/<condition>/* or <asset>/{train,test}/<condition>/*
              (hyphenated or Portuguese asset names, good / rust / missing-cap / bird-nest ...)

    Each crop is compared with every box of its asset category (several paddings, any rescale)
    by normalised cross-correlation of small greyscale thumbnails; a match needs --min-score and
    a --margin over the runner-up, otherwise the crop is listed as ambiguous or unmatched, never
    guessed. Writes OUT/conditions.csv (image, annotation_id, condition: the input of
    `build-splits --conditions`) and OUT/provenance.csv (one row per crop: status, frame, box,
    padding, score, runner-up, margin; the input of `audit --provenance`) and OUT/scores.png
    (score and margin histograms by status, with the thresholds).

    \b
    Example:
      insplad link-crops InsPLAD-det/ InsPLAD-fault/ --out link/
      insplad build-splits InsPLAD-det/ refit/ --conditions link/conditions.csv --group-by tower --missing-condition skip
    """
    opts = LinkOptions(pads=_pads(pads), thumb=thumb, min_score=min_score, margin=margin,
                       aspect_tolerance=aspect_tolerance, duplicates=duplicate_images, taxonomy=taxonomy,
                       progress=not quiet)
    report = link_crops(det_dir, fault_dir, out_dir, opts, overwrite=overwrite)
    if not quiet:
        for line in report.problems:
            click.echo(line, err=True)
        for status in ("ambiguous", "unmatched", "conflict", "skipped"):
            listed = [l for l in report.links if l.status == status]
            for link in listed[:MAX_LISTED]:
                click.echo(f"{status}: {link.crop.rel}: {link.note}", err=True)
            if len(listed) > MAX_LISTED:
                click.echo(f"{status}: ... and {len(listed) - MAX_LISTED} more (see provenance.csv)", err=True)
    click.echo(report.summary())


@click.command("audit")
@click.argument("dataset", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--provenance", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="provenance.csv from `insplad link-crops` (crop -> frame); without it a build-splits manifest.json "
                   "in DATASET is used when present.")
@click.option("--hamming", type=int, default=6, show_default=True,
              help="Perceptual-hash distance (bits of 64) at or under which a train and a test image are near-duplicates.")
@click.option("--examples", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PNG",
              help="Save up to 8 leak pairs side by side (train | test) to this PNG (outside DATASET).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (format insplad-audit/1) instead of a table.")
@click.option("--strict", is_flag=True, help="Exit 1 when any leak is found.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def audit_cmd(dataset: Path, provenance: Path | None, hamming: int, examples: Path | None, as_json: bool,
              strict: bool, quiet: bool) -> None:
    """Report train/test leakage in an MVTec-layout dataset (the official InsPLAD-fault split included).

    \b
    Per category, the number of test images that have
      exact  a train image with identical pixels
      near   a train image within --hamming bits of perceptual hash (same object, re-cropped or
             from a neighbouring frame)
      frame  a train image cut from the same frame     (needs provenance)
      tower  a train image of the same tower           (needs provenance)
    plus duplicates inside one side. Provenance comes from --provenance (link-crops) or from the
    manifest.json of a build-splits dataset. Exit 0 unless --strict and a leak is found.

    \b
    Example:
      insplad audit InsPLAD-fault/ --provenance link/provenance.csv --examples leaks.png --strict
    """
    from insplad_tools.dataset.audit import audit_dataset, examples_png

    if examples is not None:
        from insplad_tools.safety import ensure_disjoint
        ensure_disjoint(examples, {"DATASET": dataset, "--provenance": provenance})
        if examples.suffix.lower() != ".png":
            raise InspladError(f"--examples {examples}: give a .png file name")
    report = audit_dataset(dataset, provenance=provenance, hamming=hamming, progress=not quiet and not as_json)
    if as_json:
        click.echo(report.to_json())
    else:
        _print_table(report)
    if examples is not None:
        if report.leaks:
            atomic_write_bytes(examples, examples_png(report, dataset))
            if not as_json:
                click.echo(f"leak examples: {examples}")
        elif not as_json:
            click.echo(f"no leak pairs: {examples} not written")
    if strict and report.leaks:
        raise SystemExit(1)


def _print_table(report) -> None:  # noqa: ANN001 - AuditReport, imported lazily
    from rich.console import Console
    from rich.table import Table

    prov = report.provenance or "none (frame/tower need --provenance or a manifest)"
    table = Table(title=f"leakage audit of {report.dataset} (hamming <= {report.hamming}, provenance: {prov})")
    for col in ("category", "train", "test", "exact", "near", "frame", "tower", "test w/ leak", "dup. in side"):
        table.add_column(col, justify="left" if col == "category" else "right")
    has_prov = report.provenance is not None
    for c in report.categories:
        share = f"{c.test_with_leak} ({100 * c.test_with_leak / c.test:.0f}%)" if c.test else "0"
        table.add_row(c.category, str(c.train), str(c.test), str(c.counts["exact"]), str(c.counts["near"]),
                      str(c.counts["frame"]) if has_prov else "-", str(c.counts["tower"]) if has_prov else "-",
                      share, str(c.duplicates))
    console = Console(width=max(120, Console().width))
    console.print(table)
    verdict = f"{report.leaks} leak(s) found" if report.leaks else "no leakage found"
    console.print(verdict)
