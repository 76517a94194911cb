"""``insplad synth``: write a synthetic InsPLAD-det-like raw set."""

from __future__ import annotations

import os

import click

from insplad_tools.errors import InspladError
from insplad_tools.synth.assets import FAULT_CLASSES
from insplad_tools.synth.generate import DIFFICULTIES, SynthConfig, generate


def _frame_size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise InspladError(f"--frame-size {value!r}: expected WIDTHxHEIGHT, e.g. 1280x960") from None
    return w, h


def _categories(value: str) -> tuple[str, ...]:
    names = [v.strip().lower().replace("_", "-").replace(" ", "-") for v in value.split(",") if v.strip()]
    return tuple(names)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("raw_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed; the same seed and options give byte-identical files.")
@click.option("--frames", type=int, default=60, show_default=True, help="Number of UAV frames to draw.")
@click.option("--towers", type=int, default=None,
              help="Number of towers the frames are spread over (several frames per tower). [default: frames/5]")
@click.option("--frame-size", "frame_size", default="1280x960", show_default=True,
              help="Frame size WIDTHxHEIGHT; asset sizes scale with the width.")
@click.option("--difficulty", type=click.Choice(DIFFICULTIES), default="easy", show_default=True,
              help="easy: large high-contrast defects; hard: small, faint, low-contrast ones.")
@click.option("--defect-rate", type=float, default=0.25, show_default=True,
              help="Share of the physical assets of each category that are defective.")
@click.option("--categories", default=",".join(FAULT_CLASSES), show_default=True,
              help="Comma list of InsPLAD-fault classes to place.")
@click.option("--no-distractors", is_flag=True, help="Do not place damper distractors.")
@click.option("--no-roboflow", is_flag=True, help="Skip the Roboflow COCO-segmentation export.")
@click.option("--overwrite", is_flag=True, help="Replace RAW_DIR if it exists and is not empty (only a folder "
                                                "insplad wrote: one carrying .insplad-output.json).")
@click.option("--jobs", type=click.IntRange(min=0), default=1, show_default=True,
              help="Frames rendered in parallel processes (0 = all cores); output is identical to --jobs 1.")
@click.option("--layout", type=click.Choice(["raw", "insplad-det"]), default="raw", show_default=True,
              help="raw: images/ + VOC/COCO annotations carrying the condition (what build-splits reads directly). "
                   "insplad-det: the release's shape - RAW/InsPLAD-det/ (per-split COCO files without conditions, "
                   "<tower>-<visit>_DJI_<n>.jpg frames, a few duplicate-name records, the 18 classes) and "
                   "RAW/InsPLAD-fault/ (released-style crops sorted by condition), for link-crops -> build-splits "
                   "--conditions -> audit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth(raw_dir: str, seed: int, frames: int, towers: int | None, frame_size: str, difficulty: str,
          defect_rate: float, categories: str, no_distractors: bool, no_roboflow: bool, overwrite: bool,
          jobs: int, quiet: bool, layout: str = "raw") -> None:
    """Generate a SYNTHETIC InsPLAD-det-like raw set of UAV frames in RAW_DIR.

    Procedurally drawn drone photos of power-line towers: glass insulators, lightning-rod
    suspensions, polymer-insulator upper shackles, vari-grips and yoke suspensions (plus damper
    distractors), some of them defective (missing cap, corrosion, bird nest). Several frames show
    the same tower from different angles, so splits must group by tower to avoid leakage.

    \b
    RAW_DIR/images/               flightFF_towerTTT_KKK.jpg frames
    RAW_DIR/annotations/voc/      Pascal VOC XML per frame (condition attribute)
    RAW_DIR/annotations/coco.json COCO detection annotations
    RAW_DIR/roboflow/             Roboflow COCO-segmentation export of the defect polygons
    RAW_DIR/truth.json            the generator's exact ground truth
    (--layout insplad-det writes RAW_DIR/InsPLAD-det/ and RAW_DIR/InsPLAD-fault/ instead)

    The data is synthetic: use it to exercise the tools and never in place of real InsPLAD.

    \b
    Example:
      insplad synth raw/ && insplad build-splits raw/ data/
    """
    config = SynthConfig(
        seed=seed, frames=frames, towers=towers, frame_size=_frame_size(frame_size), difficulty=difficulty,
        defect_rate=defect_rate, categories=_categories(categories), distractors=not no_distractors,
        roboflow=not no_roboflow, jobs=jobs if jobs > 0 else (os.cpu_count() or 1), progress=not quiet)
    if layout == "insplad-det":
        from insplad_tools.synth.released import generate_released
        summary = generate_released(raw_dir, config, overwrite=overwrite)
    else:
        summary = generate(raw_dir, config, overwrite=overwrite)
    click.echo(summary.describe())
