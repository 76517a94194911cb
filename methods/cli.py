"""``insplad benchmark``, ``insplad predict`` and ``insplad profile``: method-agnostic commands."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click
import numpy as np

from insplad_tools.errors import InspladError, one_line_os_errors
from insplad_tools.safety import OUTPUT_MARKER, ensure_disjoint, read_marker, write_marker
from leaderboard.region import CentreCrop
from leaderboard.results import coverage
from methods.data import DEFAULT_CACHE_BUDGET_MB, MAX_CACHE_BUDGET_MB
from methods.registry import METHODS

MAX_EPOCHS = 1_000_000
MAX_IMAGE_SIZE = 4096
MAX_BATCH = 4096
MAX_RUNS = 100
MAX_SEED = 2**31 - 1
PREDICT_COMMAND = "insplad predict"
PRECISION_HELP = ("Autocast precision: fp32, bf16 or fp16 (mixed precision); auto = bf16 on CUDA devices that "
                  "support it, fp32 on CPU.")


def precision_option(func):  # type: ignore[no-untyped-def]
    """The shared ``--precision`` option (methods.precision)."""
    from methods.precision import PRECISIONS

    return click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                        help=PRECISION_HELP)(func)


def execution_options(func):  # type: ignore[no-untyped-def]
    """The shared GPU execution options --channels-last, --compile and --cuda-graphs (methods.accel)."""
    from methods.accel import CHANNELS_LAST

    func = click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
                        help="On CUDA, replay a captured CUDA graph for small batches where the method supports it "
                             "(efficientad: batch 1); --no-cuda-graphs runs eagerly. No effect on the CPU.")(func)
    func = click.option("--compile", "compile_", is_flag=True,
                        help="torch.compile the inference module (inductor; the first call per input shape compiles, "
                             "tens of seconds; on the CPU it needs a C++ compiler).")(func)
    return click.option("--channels-last", type=click.Choice(CHANNELS_LAST), default="auto", show_default=True,
                        help="NHWC memory layout for convolutions at inference; auto = on for CUDA, off on the CPU "
                             "(CPU scores stay those of plain eager fp32).")(func)


def workers_option(func):  # type: ignore[no-untyped-def]
    """The shared ``--workers`` option: image-decoding processes (methods.data)."""
    from methods.data import DEFAULT_WORKERS, MAX_WORKERS

    return click.option("--workers", type=click.IntRange(min=0, max=MAX_WORKERS), default=DEFAULT_WORKERS,
                        show_default=True,
                        help="Worker processes that decode and resize images (default: half the CPU cores, at "
                             "most 4; none below 4 cores); 0: the main process, which sets under 64 images always "
                             "use. Results are identical whatever the number.")(func)


class BatchSizes(click.ParamType):
    """A comma-separated list of batch sizes, each an integer in 1..MAX_BATCH."""

    name = "N[,N...]"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, list):
            return value
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        sizes = []
        for part in parts:
            try:
                size = int(part)
            except ValueError:
                self.fail(f"{part!r} is not an integer (expected e.g. 1,32)", param, ctx)
            if not 1 <= size <= MAX_BATCH:
                self.fail(f"batch size {size} is not in 1..{MAX_BATCH}", param, ctx)
            sizes.append(size)
        if not sizes:
            self.fail("give at least one batch size, e.g. 1,32", param, ctx)
        return sizes


def _check_predict_out(out: Path, model: Path, images: tuple[Path, ...]) -> None:
    """predict --out may not overlap its inputs, and may only reuse a folder it wrote itself."""
    inputs: dict[str, Path | None] = {"the model": model}
    inputs.update({f"IMAGE {path}": path for path in images})
    ensure_disjoint(out, inputs)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InspladError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        marker = read_marker(out)
        if marker is None or marker.get("command") != PREDICT_COMMAND:
            raise InspladError(f"{out}: folder is not empty and was not written by {PREDICT_COMMAND} "
                               f"(no {OUTPUT_MARKER}); choose an empty or new --out")


def _parse_options(pairs: tuple[str, ...], attention: str | None = None, blocks: str | None = None) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InspladError(f"--option {pair!r}: expected key=value")
        options[key.strip()] = value.strip()
    if attention is not None:
        options["attention"] = attention
    if blocks is not None:
        options["blocks"] = blocks
    return options


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _print_results(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    multi = len(doc["aggregation"]["seeds"]) > 1
    table = Table(title=f"{doc['method']} ({doc['variant'].get('attention', '')}) on {doc['dataset']['name']} — "
                        f"report: {doc['aggregation']['report']}")
    table.add_column("category")
    table.add_column("good/anom", justify="right")
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
        table.add_column(metric.replace("_", " ") + (" mean ± std" if multi else ""), justify="right")
        if multi:
            table.add_column("best", justify="right")
    for row in doc["categories"]:
        cells = [row["category"], f"{row['n_test_good']}/{row['n_test_anomalous']}"]
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            if multi:
                cells += [_fmt(row[f"{metric}_mean"], row[f"{metric}_std"]), _fmt(row[f"{metric}_best"])]
            else:
                cells.append(_fmt(row[metric]))
        table.add_row(*cells)
    mean = doc["mean"]
    found = coverage(doc)
    label = "mean" if not found or not found[2] else f"mean of {found[0]}/{found[1]} (partial)"
    table.add_row(label, "", *sum(([_fmt(mean[m])] + ([""] if multi else []) for m in ("image_auroc", "pixel_auroc", "aupro")), []),
                  style="bold")
    Console().print(table)


@click.command("benchmark")
@click.option("--method", required=True, type=click.Choice(sorted(METHODS)), help="Method to train (see the registry).")
@click.option("--attention", type=click.Choice(["none", "se", "cbam"]), default=None,
              help="Attention blocks in the backbone (method default when omitted).")
@click.option("--blocks", default=None, metavar="1,2,3", help="Which attention blocks to insert (DifferNet: AB1..AB3).")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset root in MVTec AD layout.")
@click.option("--category", "categories", multiple=True, help="Only this category (repeatable); default: all.")
@click.option("--epochs", type=click.IntRange(min=1, max=MAX_EPOCHS), default=None,
              help="Training epochs (method default when omitted).")
@click.option("--image-size", type=click.IntRange(min=16, max=MAX_IMAGE_SIZE), default=None,
              help="Square input size in pixels (method default).")
@click.option("--batch-size", type=click.IntRange(min=1, max=MAX_BATCH), default=None,
              help="Training batch size (method default).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=0, show_default=True, help="First random seed.")
@click.option("--runs", type=click.IntRange(min=1, max=MAX_RUNS), default=1, show_default=True,
              help="Independent runs with seeds seed..seed+N-1.")
@click.option("--report", type=click.Choice(["best", "mean"]), default="best", show_default=True,
              help="Per-category value reported over the runs (seed 000 reports the best of two).")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="Method-specific option (repeatable), e.g. --option flow_width=512.")
@click.option("--no-pretrained", is_flag=True, help="Randomly initialise the backbone instead of ImageNet weights.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Backbone state dict file to use instead of torchvision's ImageNet weights.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: results.json, predictions/, checkpoints/ (re-run to resume).")
@click.option("--checkpoint-every", type=click.IntRange(min=1, max=MAX_EPOCHS), default=1, show_default=True,
              help="Epochs between resumable checkpoints (a full DifferNet checkpoint with optimiser state is ~2 GB).")
@click.option("--protocol", type=click.Choice(["clean", "paper"]), default="clean", show_default=True,
              help="clean: fixed epochs, last epoch, no look at test labels. paper: evaluate on the test set every "
                   "--eval-every epochs and report the best epoch (test-set model selection, as the original "
                   "DifferNet/SimpleNet code; labelled so in results and tables).")
@click.option("--eval-every", type=click.IntRange(min=1, max=MAX_EPOCHS), default=None,
              help="--protocol paper: epochs between test evaluations (default: the method's reference code, "
                   "differnet 8, simplenet 4).")
@click.option("--val-split", type=click.FloatRange(min=0, max=1, max_open=True), default=0.0, show_default=True,
              help="Fraction of train/good held out (seeded) as validation data for methods that use it "
                   "(efficientad: map quantiles).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@precision_option
@execution_options
@workers_option
@click.option("--cache-budget-mb", type=click.IntRange(min=0, max=MAX_CACHE_BUDGET_MB), default=DEFAULT_CACHE_BUDGET_MB,
              show_default=True,
              help="Memory for a category's decoded training images (uint8); a larger set is memory-mapped from a "
                   "temporary file inside --out (unlinked at once; its space is freed when the run ends). "
                   "0: always memory-map.")
@one_line_os_errors
def benchmark(method, attention, blocks, data, categories, epochs, image_size, batch_size, device, seed, runs, report,
              option_pairs, no_pretrained, weights, out, checkpoint_every, protocol, eval_every, val_split,
              quiet, precision, channels_last, compile_, cuda_graphs, workers, cache_budget_mb) -> None:
    """Train a method on train/good of every category, score test/*, write a checkable submission.

    \b
    Example (AttentDifferNet-SE on a built InsPLAD-fault set):
      insplad benchmark --method differnet --attention se --data data/ --out runs/se
      insplad leaderboard check runs/se --data data/
    Re-running the same command on the same --out resumes an interrupted run.
    Omitted --epochs/--image-size/--batch-size take the method's defaults
    (differnet: 100 epochs, 448 px, batch 24, as seed 000 §4.2 and DifferNet).
    Method knobs go through --option, e.g. differnet: flow_width, coupling_blocks,
    clamp, n_transforms, n_transforms_test, lr, se_reduction, cbam_kernel,
    cbam_reduction, cbam_residual, feature_norm (none: the paper | rms | auto),
    rotation, brightness, contrast, saturation.
    """
    from methods.benchmarking import BenchmarkConfig, run_benchmark

    if weights is not None and no_pretrained:
        raise InspladError("--weights and --no-pretrained exclude each other")
    if seed + runs - 1 > MAX_SEED:
        raise InspladError(f"--seed {seed} with --runs {runs}: seeds above {MAX_SEED} are not supported")
    cfg = BenchmarkConfig(method=method, data=data, out=out, options=_parse_options(option_pairs, attention, blocks),
                          categories=list(categories) or None, epochs=epochs, image_size=image_size,
                          batch_size=batch_size, device=device, seed=seed, runs=runs, report=report,
                          pretrained=not no_pretrained, weights=str(weights) if weights else None, progress=not quiet,
                          checkpoint_every=checkpoint_every, protocol=protocol, eval_every=eval_every,
                          val_split=val_split, precision=precision, channels_last=channels_last, compile=compile_,
                          cuda_graphs=cuda_graphs, workers=workers, cache_budget_mb=cache_budget_mb)
    doc = run_benchmark(cfg, log=lambda line: click.echo(line, err=True))
    _print_results(doc)
    for note in doc["notes"]:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {out / 'results.json'}")


def _overlay(image_path: Path, amap: np.ndarray, target: Path, crop: CentreCrop | None = None) -> None:
    from PIL import Image

    from methods.data import load_rgb

    img = load_rgb(image_path) if crop is None else crop.image(load_rgb(image_path))  # the view the map covers
    lo, hi = float(amap.min()), float(amap.max())
    norm = (amap - lo) / (hi - lo) if hi > lo else np.zeros_like(amap)
    heat = np.asarray(Image.fromarray((norm * 255).astype(np.uint8)).resize(img.size, Image.BILINEAR), dtype=np.float32) / 255
    base = np.asarray(img, dtype=np.float32)
    red = np.zeros_like(base)
    red[..., 0] = 255
    alpha = 0.5 * heat[..., None]
    Image.fromarray(np.clip(base * (1 - alpha) + red * alpha, 0, 255).astype(np.uint8)).save(target)


@click.command("predict")
@click.option("--checkpoint", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A finished checkpoint written by insplad benchmark (checkpoints/seed-<s>/<category>.pt).")
@click.option("--model", "model_dir", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Instead of --checkpoint: a folder written by insplad export (ONNX Runtime / OpenVINO).")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for scores.csv (and maps/*.npz + overlays/*.png for methods with maps).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@precision_option
@execution_options
@workers_option
@one_line_os_errors
def predict(checkpoint, model_dir, images, out, device, precision, channels_last, compile_, cuda_graphs,
            workers) -> None:
    """Score IMAGES with a trained model; prints image,score CSV (higher = more anomalous).

    The model is a checkpoint (--checkpoint, run with torch) or an exported folder (--model, run
    with ONNX Runtime or OpenVINO on the CPU); both print the same CSV.
    """
    from methods.base import resolve_device
    from methods.registry import load_detector

    if (checkpoint is None) == (model_dir is None):
        raise InspladError("give exactly one of --checkpoint (a trained checkpoint) or --model (an exported folder)")
    if out is not None:
        _check_predict_out(out, checkpoint or model_dir, images)
    if model_dir is not None:
        from methods.export import ExportedModel

        results = ExportedModel.open(model_dir).predict(list(images))
        crop = None
    else:
        detector = load_detector(checkpoint, resolve_device(device))
        detector.run.progress = False
        detector.run.precision = precision
        detector.run.workers = workers
        detector.run.channels_last, detector.run.compile, detector.run.cuda_graphs = channels_last, compile_, cuda_graphs
        detector.precision  # noqa: B018  (validates the precision on this device before any work)
        results = detector.predict(list(images))
        crop = detector.crop
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "score", "map"])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, PREDICT_COMMAND)
    for i, (path, result) in enumerate(zip(images, results)):
        map_rel = ""
        if out is not None and result.map is not None:
            stem = f"{i:04d}_{path.stem}"
            (out / "maps").mkdir(exist_ok=True)
            (out / "overlays").mkdir(exist_ok=True)
            np.savez_compressed(out / "maps" / f"{stem}.npz", map=np.asarray(result.map, dtype=np.float32))
            _overlay(path, np.asarray(result.map, dtype=np.float32), out / "overlays" / f"{stem}.png", crop)
            map_rel = f"maps/{stem}.npz"
        writer.writerow([str(path), f"{result.score:.8g}", map_rel])
    click.echo(buffer.getvalue(), nl=False)
    if out is not None:
        from insplad_tools.fsutil import atomic_write_text

        atomic_write_text(out / "scores.csv", buffer.getvalue())
        click.echo(f"wrote {out / 'scores.csv'}", err=True)


@click.command("profile")
@click.option("--method", required=True, type=click.Choice(sorted(METHODS)), help="Method to profile.")
@click.option("--attention", type=click.Choice(["none", "se", "cbam"]), default=None, help="Attention variant.")
@click.option("--blocks", default=None, metavar="1,2,3", help="Which attention blocks (DifferNet: AB1..AB3).")
@click.option("--image-size", type=click.IntRange(min=16, max=MAX_IMAGE_SIZE), default=None,
              help="Input size (method default).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE", help="Method-specific option (repeatable).")
@click.option("--batch-sizes", type=BatchSizes(), default="1,32", show_default=True,
              help=f"Comma-separated batch sizes to time (each 1..{MAX_BATCH}).")
@click.option("--repeats", type=click.IntRange(min=1, max=1000), default=3, show_default=True,
              help="Timed calls per batch size (median).")
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
@precision_option
@execution_options
@one_line_os_errors
def profile(method, attention, blocks, image_size, device, option_pairs, batch_sizes, repeats, as_json,
            precision, channels_last, compile_, cuda_graphs) -> None:
    """Trainable parameters, model size (MB) and inference latency at batch 1 and 32 (seed 003 Table 4)."""
    from methods.profiling import profile_method

    result = profile_method(method, _parse_options(option_pairs, attention, blocks), image_size=image_size,
                            device=device, batch_sizes=batch_sizes, repeats=repeats, precision=precision,
                            channels_last=channels_last, compile=compile_, cuda_graphs=cuda_graphs)
    if as_json:
        click.echo(json.dumps(result.__dict__, indent=1, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{method} ({result.variant.get('attention', '')}) at {result.image_size}px on "
                        f"{result.device} ({result.device_name}), {result.precision}"
                        + "".join(f", {name}" for name, on in (("channels_last", result.channels_last),
                                                               ("compiled", result.compile),
                                                               ("CUDA graphs", result.cuda_graphs)) if on))
    table.add_column("aspect")
    table.add_column("value", justify="right")
    table.add_row("trainable parameters", f"{result.trainable_params:,}")
    table.add_row("trainable size (MB, as stored)", f"{result.trainable_mb:.2f}")
    table.add_row("model size (MB, all tensors to predict)", "-" if result.model_mb is None else f"{result.model_mb:.2f}")
    for b, ms in result.latency_ms.items():
        table.add_row(f"latency batch {b} (ms/batch)", f"{ms:.1f}")
        table.add_row(f"latency batch {b} (ms/image)", f"{ms / b:.1f}")
    Console().print(table)
