"""Click commands ``insplad build-splits`` and ``insplad validate``."""

from __future__ import annotations

from pathlib import Path

import click

from insplad_tools.dataset.conditions import ConditionsError
from insplad_tools.dataset.pipeline import BuildFailed, BuildOptions, build_dataset
from insplad_tools.dataset.split import GROUP_PATTERNS
from insplad_tools.dataset.validate import validate_dataset


@click.command("build-splits")
@click.argument("raw_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["auto", "voc", "coco", "insplad-det"]), default="auto",
              show_default=True,
              help="Annotation format: Pascal VOC (RAW/annotations/voc/*.xml), COCO (RAW/annotations/coco.json) or the "
                   "released InsPLAD-det (RAW/annotations/instances_<split>.json, images in RAW/<split>/); auto picks "
                   "insplad-det, then COCO, then VOC.")
@click.option("--conditions", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              metavar="FILE",
              help="CSV or JSON giving each object's condition, keyed by image file name + annotation_id (or image + "
                   "x, y, width, height). `insplad link-crops` writes one from the released InsPLAD-fault crops. "
                   "Every row is checked; a bad one stops the build naming its line.")
@click.option("--missing-condition", type=click.Choice(["auto", "error", "normal", "skip"]), default="auto",
              show_default=True,
              help="Objects of a mapped category without a condition: error (stop, list them), normal (flawless) or "
                   "skip (leave out, listed). auto = error when --conditions is given, else normal (an absent "
                   "condition attribute means a flawless object).")
@click.option("--duplicate-images", type=click.Choice(["exclude", "first", "error"]), default="exclude",
              show_default=True,
              help="InsPLAD-det lists a few file names under two image ids with different boxes: exclude every such "
                   "record, keep the first (lowest id), or stop. Each one is reported and kept in manifest.json.")
@click.option("--taxonomy", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="JSON taxonomy replacing the built-in InsPLAD-fault one: categories with their raw class names "
                   "(aliases) and defect types, condition aliases, ignored classes.")
@click.option("--pad", type=float, default=0.1, show_default=True,
              help="Context added around each box on every side, as a fraction of the box's width/height "
                   "(clamped to the frame).")
@click.option("--min-size", type=int, default=16, show_default=True,
              help="Skip (and report) objects whose box is smaller than this many pixels on its short side.")
@click.option("--test-ratio", type=float, default=0.2, show_default=True,
              help="Fraction of groups whose normal crops go to test (0.2 matches the ~80/20 train/test-flawless "
                   "ratio of InsPLAD-fault, seed 000 Table 1). Anomalous crops always go to test, and so do the normal "
                   "crops of a category from a group that holds one of its anomalies.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Key of the split hash: a group's side depends only on (group id, seed).")
@click.option("--group-by", type=click.Choice(sorted(GROUP_PATTERNS)), default="frame", show_default=True,
              help="Crops of one group never end up on both train and test of a category: group by source frame, or by "
                   "the 'tower<N>' / 'flight<N>' part of the frame file name. InsPLAD-det names "
                   "(<tower>-<visit>_DJI_<n>.jpg) give tower and visit directly.")
@click.option("--group-regex", default=None, metavar="REGEX",
              help="Custom group id: a regex searched in the frame's file stem; the named group 'group', else group 1, "
                   "else the whole match is the id (overrides --group-by).")
@click.option("--jobs", "-j", type=int, default=1, show_default=True,
              help="Worker processes cropping frames in parallel (output is identical for any value).")
@click.option("--strict", is_flag=True, help="Exit non-zero and write nothing when any input problem is found "
                                             "(default: skip and report each one).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists (only once the new build is complete) "
                                                "and only when insplad wrote it (.insplad-output.json or its manifest).")
@click.option("--masks", type=click.Path(exists=True, path_type=Path), default=None, metavar="EXPORT",
              help="InsPLAD-seg: a Roboflow 'COCO Segmentation' export (folder or .zip) of the defect polygons; writes "
                   "OUT/<category>/ground_truth/<defect>/<stem>_mask.png for every anomalous crop.")
@click.option("--roboflow", default=None, metavar="WORKSPACE/PROJECT/VERSION",
              help="InsPLAD-seg: download the segmentation export from Roboflow (needs ROBOFLOW_API_KEY; cached).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache for Roboflow downloads [default: $INSPLAD_CACHE/roboflow or ~/.cache/insplad/roboflow].")
@click.option("--name", default=None, help="Dataset name stored in the manifest [default: insplad-fault, or insplad-seg "
                                           "with masks].")
@click.option("--verbose", "-v", is_flag=True, help="Also list every object skipped for --min-size (always listed "
                                                  "in manifest.json under 'skipped').")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no per-problem lines (summary only).")
def build_splits(raw_dir: Path, out_dir: Path, fmt: str, taxonomy: Path | None, pad: float, min_size: int,
                 test_ratio: float, seed: int, group_by: str, group_regex: str | None, jobs: int, strict: bool,
                 overwrite: bool, masks: Path | None, roboflow: str | None, cache_dir: Path | None, name: str | None,
                 verbose: bool, quiet: bool, conditions: Path | None = None, missing_condition: str = "auto",
                 duplicate_images: str = "exclude") -> None:
    """Crop annotated power-line assets out of UAV frames into an MVTec-AD-layout dataset.

    \b
    RAW_DIR holds images/<frame> plus annotations/voc/<frame>.xml or annotations/coco.json
    (the layout `insplad synth` writes). OUT_DIR gets, per category:
      <category>/train/good/*.png         normal crops (about 80% of the groups)
      <category>/test/good/*.png          normal crops of the other groups
      <category>/test/<defect>/*.png      every anomalous crop
      <category>/ground_truth/<defect>/   masks, with --masks / --roboflow
    plus manifest.json (sha256, source frame, box, split and group of every file), stats.md and
    stats.csv (InsPLAD Table 1 shape). The split is by group and stable: adding frames later
    never renames an existing crop, nor moves one unless a new anomaly joins its group. Bad
    input is reported one line per problem and skipped (--strict: nothing written, exit 1).
    Check a result with `insplad validate OUT_DIR`.

    \b
    Example:
      insplad build-splits raw/ data/ --group-by tower --jobs 4
    \b
    The released InsPLAD-det (annotations/instances_*.json, train/, val/) carries no conditions:
      insplad link-crops InsPLAD-det/ InsPLAD-fault/ --out link/
      insplad build-splits InsPLAD-det/ data/ --conditions link/conditions.csv --group-by tower \\
          --missing-condition skip
    """
    opts = BuildOptions(fmt=fmt, taxonomy=taxonomy, pad=pad, min_size=min_size, test_ratio=test_ratio, seed=seed,
                        group_by=group_by, group_regex=group_regex, strict=strict, overwrite=overwrite, jobs=jobs,
                        masks=masks, roboflow=roboflow, cache_dir=cache_dir, name=name, progress=not quiet,
                        conditions=conditions, missing_condition=missing_condition, duplicate_images=duplicate_images)
    try:
        report = build_dataset(raw_dir, out_dir, opts)
    except (BuildFailed, ConditionsError) as exc:
        if not quiet:
            for line in exc.problems:
                click.echo(line, err=True)
        raise
    if not quiet:
        for line in report.problems:
            click.echo(line, err=True)
        if verbose:
            for line in report.skipped:
                click.echo(line, err=True)
    click.echo(report.summary())


@click.command("validate")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def validate(out_dir: Path, quiet: bool) -> None:
    """Re-check a dataset built by `insplad build-splits` against its manifest.json.

    \b
    Reports, one line each: missing, extra, changed (sha256) or moved files; a group on both
    train and test of a category (leakage); identical decoded pixels in train and test; masks
    of the wrong size, not binary 0/255, empty, missing for an anomalous image of a category
    with masks, or present for a normal image; symbolic links (never followed); manifest
    entries of the wrong type or with paths leading outside the dataset. Exit status 0 and one
    OK line when clean, 1 otherwise. Categories that cannot be trained or evaluated as they are
    (no train/good, an empty test/good, no anomalous test image) get a warning line.
    """
    result = validate_dataset(out_dir, progress=not quiet)
    for line in result.problems:
        click.echo(line)
    for line in result.warnings:
        click.echo(line, err=True)
    click.echo(result.summary(), err=not result.ok)
    if not result.ok:
        raise SystemExit(1)
