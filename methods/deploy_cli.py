"""``insplad export`` and ``insplad explain``: trained checkpoints out of the lab and into figures."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino"]), default="onnx", show_default=True,
              help="onnx (run with ONNX Runtime) or openvino (IR .xml/.bin; needs the openvino package).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create: the model plus preprocess.json describing input and outputs.")
@click.option("--overwrite", is_flag=True, help="Replace an existing export folder written by insplad.")
def export(checkpoint, fmt, out, overwrite) -> None:
    """Export the scoring graph of a finished CHECKPOINT (score, and map where the method has one).

    \b
    The graph takes RGB images resized to the run's image size and scaled to [0, 1]; normalisation
    and test-time transforms are inside it (see preprocess.json). Run it with:
      insplad export runs/pc/checkpoints/seed-0/glass_insulator.pt --out edge/pc
      insplad predict --model edge/pc new/*.jpg
    """
    from methods.export import export_detector
    from methods.registry import load_detector

    _check_out(out, {"CHECKPOINT": checkpoint})
    load_detector(checkpoint, "cpu")  # refuses unfinished or foreign checkpoints before any work
    path = export_detector(checkpoint, out, fmt, overwrite=overwrite, log=lambda line: click.echo(line, err=True))
    click.echo(f"wrote {path} and {out / 'preprocess.json'}")


@click.command("explain")
@click.option("--checkpoint", "checkpoints", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A finished checkpoint (repeat to show variants side by side, e.g. DifferNet, SE, CBAM).")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create: one PNG per image, plus explain.json.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def explain(checkpoints, images, out, device) -> None:
    """Grad-CAM of each checkpoint's backbone on IMAGES (seed 000 Figs 5-6), variants side by side.

    \b
    Methods with anomaly maps also show the map; those whose score is gradient-free show the map only.
      insplad explain --checkpoint runs/d/checkpoints/seed-0/vari_grip.pt \\
                      --checkpoint runs/se/checkpoints/seed-0/vari_grip.pt crops/*.png --out figs/
    """
    from insplad_tools.fsutil import atomic_output_dir
    from methods.base import resolve_device
    from methods.explain import explain_images, render_explanations
    from methods.registry import load_detector

    _check_out(out, {**{f"--checkpoint {c}": c for c in checkpoints}, **{str(i): i for i in images}})
    detectors = [load_detector(c, resolve_device(device)) for c in checkpoints]
    sizes = {d.run.image_size for d in detectors}
    for d in detectors:
        d.run.progress = False
    per_variant = [explain_images(d, list(images)) for d in detectors]
    with atomic_output_dir(out) as tmp:
        written = render_explanations(list(images), per_variant, tmp, max(sizes))
        summary = {
            "checkpoints": [str(c) for c in checkpoints],
            "images": [str(i) for i in images],
            "figures": [p.name for p in written],
            "scores": {e[0].label if e else "": [x.score for x in e] for e in per_variant},
            "notes": sorted({x.note for e in per_variant for x in e if x.note}),
        }
        (tmp / "explain.json").write_text(json.dumps(summary, indent=1) + "\n")
    for note in summary["notes"]:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {len(written)} figure(s) to {out}")


def _check_out(out: Path, inputs: dict[str, Path]) -> None:
    from insplad_tools.safety import ensure_disjoint

    ensure_disjoint(Path(out), {k: Path(v) for k, v in inputs.items()})
