"""``insplad distill-teacher``: make an EfficientAD teacher PDN from any folder of natural images."""

from __future__ import annotations

import io
import math
from pathlib import Path

import click
import torch

from insplad_tools.errors import InspladError, one_line_os_errors
from insplad_tools.fsutil import atomic_write_bytes
from insplad_tools.safety import ensure_disjoint, signals_raise
from methods.base import resolve_device
from methods.precision import PRECISIONS


def _finite(value: float, param: click.Parameter) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", param=param)
    return value


@click.command("distill-teacher")
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the teacher (.pt: state dict + config, loadable with weights_only=True).")
@click.option("--steps", default=60_000, show_default=True, type=click.IntRange(min=1, max=100_000_000),
              help="Optimiser steps (the reference distils for 60,000 at batch 16).")
@click.option("--image-size", default=256, show_default=True, type=click.IntRange(min=64, max=4096),
              help="PDN input size; the ResNet-18 sees twice this.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1, max=4096), help="Images per step.")
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(min=0, max=10, min_open=True),
              callback=lambda ctx, param, value: _finite(value, param), help="Adam learning rate (0 < lr <= 10).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0, max=2**31 - 1), help="Random seed.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0, max=256),
              help="Data-loading worker processes.")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Distil from ImageNet ResNet-18 (torchvision cache) or from a random one (for testing only).")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="State dict file of the --backbone to distil from instead of torchvision's ImageNet weights.")
@click.option("--backbone", type=click.Choice(["resnet18", "wide_resnet101_2"]), default="resnet18", show_default=True,
              help="Network to distil from: ResNet-18 (this project's default) or WideResNet-101-2 (the paper's).")
@click.option("--model-size", type=click.Choice(["small", "medium"]), default="small", show_default=True,
              help="Teacher PDN: small (EfficientAD-S) or medium (EfficientAD-M).")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Autocast precision: fp32, bf16 or fp16 (loss-scaled); auto = bf16 on CUDA with bf16 support, "
                   "fp32 on CPU.")
@one_line_os_errors
def distill_teacher(image_dir: Path, out: Path, steps: int, image_size: int, batch_size: int, lr: float, device: str,
                    seed: int, workers: int, pretrained: bool, weights: Path | None, backbone: str, model_size: str,
                    progress: bool, precision: str) -> None:
    """Distil an EfficientAD teacher (PDN-small or -medium, 384 channels) from --backbone features of IMAGE_DIR.

    \b
    IMAGE_DIR is any folder (searched recursively) of natural images, ideally ImageNet-like. Use the
    result with:  insplad benchmark --method efficientad --option teacher=teacher.pt ...
    \b
    Example:
      insplad distill-teacher imagenet_subset/ --out teacher.pt --steps 60000
    """
    from methods.efficientad.distill import distill_teacher as run_distill, list_images

    ensure_disjoint(out, {"IMAGE_DIR": image_dir, "--weights": weights})
    if out.is_dir() or out.is_symlink():
        raise InspladError(f"{out}: is a folder or a link; --out must be a file path")
    if out.exists():
        from methods.efficientad.distill import load_teacher

        try:
            load_teacher(out)
        except InspladError:
            raise InspladError(f"{out}: exists and is not an insplad teacher file; it is never overwritten "
                               "(remove it yourself or choose another --out)") from None
    paths = list_images(image_dir)
    with signals_raise():
        payload = run_distill(paths, steps=steps, image_size=image_size, batch_size=batch_size, lr=lr,
                              device=resolve_device(device), pretrained=pretrained, weights=weights, seed=seed,
                              workers=workers, progress=progress, backbone=backbone, model_size=model_size,
                              precision=precision)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, buffer.getvalue())
    cfg = payload["config"]
    click.echo(f"wrote {out}: teacher PDN from {cfg['n_images']} images, {steps} steps, "
               f"{cfg['backbone']} {cfg['backbone_weights']}; loss {cfg['first_loss']:.4f} -> {cfg['last_loss']:.4f}")
