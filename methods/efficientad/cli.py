"""``insplad distill-teacher``: make an EfficientAD teacher PDN from any folder of natural images."""

from __future__ import annotations

import io
from pathlib import Path

import click
import torch

from insplad_tools.fsutil import atomic_write_bytes
from methods.base import resolve_device


@click.command("distill-teacher")
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the teacher (.pt: state dict + config, loadable with weights_only=True).")
@click.option("--steps", default=60_000, show_default=True, type=click.IntRange(min=1),
              help="Optimiser steps (the reference distils for 60,000 at batch 16).")
@click.option("--image-size", default=256, show_default=True, type=click.IntRange(min=64),
              help="PDN input size; the ResNet-18 sees twice this.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Images per step.")
@click.option("--lr", default=1e-4, show_default=True, type=float, help="Adam learning rate.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Data-loading worker processes.")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Distil from ImageNet ResNet-18 (torchvision cache) or from a random one (for testing only).")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ResNet-18 state dict file to distil from instead of torchvision's ImageNet weights.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def distill_teacher(image_dir: Path, out: Path, steps: int, image_size: int, batch_size: int, lr: float, device: str,
                    seed: int, workers: int, pretrained: bool, weights: Path | None, progress: bool) -> None:
    """Distil an EfficientAD teacher (PDN-small, 384 channels) from ResNet-18 features of IMAGE_DIR.

    \b
    IMAGE_DIR is any folder (searched recursively) of natural images, ideally ImageNet-like. Use the
    result with:  insplad benchmark --method efficientad --option teacher=teacher.pt ...
    \b
    Example:
      insplad distill-teacher imagenet_subset/ --out teacher.pt --steps 60000
    """
    from methods.efficientad.distill import distill_teacher as run_distill, list_images

    paths = list_images(image_dir)
    payload = run_distill(paths, steps=steps, image_size=image_size, batch_size=batch_size, lr=lr,
                          device=resolve_device(device), pretrained=pretrained, weights=weights, seed=seed,
                          workers=workers, progress=progress)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    cfg = payload["config"]
    click.echo(f"wrote {out}: teacher PDN from {cfg['n_images']} images, {steps} steps, "
               f"ResNet-18 {cfg['backbone_weights']}; loss {cfg['first_loss']:.4f} -> {cfg['last_loss']:.4f}")
