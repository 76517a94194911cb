"""Where a detector looks: Grad-CAM of its backbone (seed 000 Figs 5-6) and, for map methods, its map.

Grad-CAM comes from the ``grad-cam`` package (``pytorch_grad_cam``): it is made for exactly this
(CAM variants for CNN layers, hook bookkeeping, upsampling and overlays), whereas captum is a general
attribution library that would need the same CAM plumbing written around it. The explained output is
the detector's anomaly score, so the heat map shows which regions raise the score.

A method opts in through :meth:`methods.base.Detector.explain_target`. DifferNet/AttentDifferNet
explain the full-resolution pass's last AlexNet map before the final pool (AB3's output when present,
so attention's effect is visible) for the unrotated image; methods whose scoring is gradient-free (nearest
neighbours, for instance) show their anomaly map instead, and say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from insplad_tools.errors import InspladError


@dataclass
class Explanation:
    label: str
    cam: np.ndarray | None  # (H, W) in [0, 1], Grad-CAM
    amap: np.ndarray | None  # anomaly map (method resolution), for map methods
    score: float
    note: str = ""


def variant_label(detector) -> str:
    variant = detector.variant()
    attention = variant.get("attention", "none")
    label = detector.name if attention in ("none", None) else f"{detector.name}-{attention}"
    blocks = variant.get("blocks")
    if attention not in ("none", None) and blocks:
        label += " AB" + "".join(str(b) for b in blocks)
    return label


def _load01(path: Path, size: int) -> torch.Tensor:
    from methods.data import load_images_uint8

    return load_images_uint8([path], size).float() / 255.0


def explain_images(detector, images: Sequence[Path]) -> list[Explanation]:
    """Grad-CAM (or the anomaly map) of ``detector`` for each image, in order."""
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError as exc:
        raise InspladError('Grad-CAM needs the grad-cam package: pip install "insplad[deploy]"') from exc

    label = variant_label(detector)
    try:
        scorer, layer = detector.explain_target()
    except InspladError as exc:
        if not detector.produces_maps:
            raise
        results = detector.predict(list(images))
        return [Explanation(label, None, np.asarray(r.map, np.float32), r.score, note=str(exc.message))
                for r in results]
    scorer = scorer.eval()
    cam = GradCAM(model=scorer, target_layers=[layer])
    cam.compute_input_gradient = True  # frozen backbones: the graph must start at the input
    out: list[Explanation] = []
    try:
        for path in images:
            x = _load01(Path(path), detector.run.image_size).to(detector.device)
            with torch.no_grad():
                score = float(scorer(x)[0])
            heat = cam(input_tensor=x, targets=[lambda output: output])[0]
            amap = None
            if detector.produces_maps:
                amap = np.asarray(detector.predict([path])[0].map, np.float32)
            out.append(Explanation(label, np.asarray(heat, np.float32), amap, score))
    finally:
        cam.activations_and_grads.release()
    return out


def render_explanations(images: Sequence[Path], per_variant: list[list[Explanation]], out: Path, size: int) -> list[Path]:
    """One PNG per image: the input, then each variant's Grad-CAM overlay (and anomaly map) side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    written: list[Path] = []
    for i, path in enumerate(images):
        rgb = _load01(Path(path), size)[0].permute(1, 2, 0).numpy()
        panels: list[tuple[str, np.ndarray, str | None]] = [("input", rgb, None)]
        for explanations in per_variant:
            e = explanations[i]
            if e.cam is not None:
                panels.append((f"{e.label}\nGrad-CAM (score {e.score:.3g})", show_cam_on_image(rgb, e.cam, use_rgb=True), None))
            if e.amap is not None:
                panels.append((f"{e.label}\nanomaly map (score {e.score:.3g})", e.amap, "inferno"))
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
        for ax, (title, img, cmap) in zip(axes[0], panels):
            ax.imshow(img, cmap=cmap)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        target = out / f"{i:04d}_{Path(path).stem}.png"
        fig.savefig(target, dpi=110)
        plt.close(fig)
        written.append(target)
    return written
