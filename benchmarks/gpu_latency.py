"""Batch-1 inference latency of EfficientAD-S (+SE, +CBAM) and SimpleNet under the execution options.

Every figure goes through the product path, ``Detector.profile_forward`` (what ``insplad profile``
times: the method's full scoring graph under the run's autocast, channels_last, ``--compile`` and CUDA
graphs from :mod:`methods.accel`), on a freshly built, randomly initialised model (same cost as a
trained one). Modes:

* ``eager fp32``: ``--precision fp32 --channels-last off --no-cuda-graphs`` (the plain baseline);
* ``default``: what ``insplad profile`` / ``predict`` do on this device without flags (CUDA: bf16
  autocast where supported, channels_last, CUDA graphs at batch 1 for EfficientAD);
* ``no graphs``: the default without CUDA graphs; ``compile`` / ``compile+graphs``: with ``--compile``.

Checks printed (and failing the exit code when wrong): on CUDA, EfficientAD graph replays equal eager
outputs in the same precision and layout (scores and maps, ``torch.allclose`` rtol 1e-3 / atol 1e-4 in
bf16, 1e-5 / 1e-6 in fp32), and ``predict`` at batch 1 replays one captured graph for every image with
the same scores as eager. Ratios printed: EfficientAD best latency against the 1 ms target and, when
anomalib is importable, anomalib ``EfficientAd`` (small, fp32 eager) latency / ours, i.e. the batch-1
throughput ratio (target >= 1.5x on CUDA); SimpleNet 87 ms (seed 003 Table 4) / ours (target >= 3x).

    python benchmarks/gpu_latency.py --device cuda --markdown gpu-latency.md
    python benchmarks/gpu_latency.py --device cpu --repeats 3 --warmup 1 --variants none --no-compile  # CPU smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from insplad_tools.errors import InspladError  # noqa: E402
from methods.base import RunConfig, resolve_device, seed_everything  # noqa: E402
from methods.profiling import latency_ms  # noqa: E402
from methods.registry import build_detector  # noqa: E402

SEED_003_SIMPLENET_MS = 87.0
EFFICIENTAD_TARGET_MS = 1.0
MODES = {  # name -> RunConfig execution fields
    "eager fp32": {"precision": "fp32", "channels_last": "off", "cuda_graphs": False, "compile": False},
    "default": {"precision": "auto", "channels_last": "auto", "cuda_graphs": True, "compile": False},
    "no graphs": {"precision": "auto", "channels_last": "auto", "cuda_graphs": False, "compile": False},
    "compile": {"precision": "auto", "channels_last": "auto", "cuda_graphs": False, "compile": True},
    "compile+graphs": {"precision": "auto", "channels_last": "auto", "cuda_graphs": True, "compile": True},
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def detector(method: str, options: dict[str, Any], size: int, device: str, mode: dict[str, Any]):  # type: ignore[no-untyped-def]
    seed_everything(0)
    run = RunConfig(epochs=1, batch_size=1, image_size=size, device=device, pretrained=False, progress=False, **mode)
    det = build_detector(method, options, run)
    det._ensure_model().eval()
    return det




def _close(a: Any, b: Any, precision: str, fused: bool = False) -> tuple[bool, float]:
    """Whether outputs ``a`` match ``b``. Graph replays run eager's own kernels (tight tolerance); compiled
    code fuses ops and keeps intermediates in fp32 where eager bf16 rounds them (``fused``: tolerance
    relative to the largest value, 2e-2 in bf16/fp16, 1e-3 in fp32)."""
    pairs = list(zip(a, b)) if isinstance(a, (tuple, list)) else [(a, b)]
    diff = max(float((x.float() - y.float()).abs().max()) for x, y in pairs)
    if fused:
        scale = 2e-2 if precision != "fp32" else 1e-3
        return all(float((x.float() - y.float()).abs().max()) <= scale * float(y.float().abs().max()) + 1e-6
                   for x, y in pairs), diff
    rtol, atol = (1e-3, 1e-4) if precision != "fp32" else (1e-5, 1e-6)
    return all(torch.allclose(x.float(), y.float(), rtol=rtol, atol=atol) for x, y in pairs), diff


def graph_checks(attention: str, size: int, device: str) -> list[str]:
    """EfficientAD: CUDA-graph replays vs eager, in profile_forward and in predict at batch 1."""
    from PIL import Image

    problems, lines = [], []
    for precision in ("fp32", "auto"):
        mode = {**MODES["default"], "precision": precision}
        graphed = detector("efficientad", {"attention": attention}, size, device, mode)
        eager = detector("efficientad", {"attention": attention}, size, device, {**mode, "cuda_graphs": False})
        eager.model.load_state_dict(graphed.model.state_dict())
        first, batch = torch.rand(2, 1, 3, size, size, device=device)
        with torch.inference_mode():
            graphed.profile_forward(first)  # captures with this input, then replays
            out_g = graphed.profile_forward(batch)  # replays on new input: the static buffer must be refreshed
            out_e = eager.profile_forward(batch)
        ok, diff = _close(out_g, out_e, graphed.precision)
        graph = _find_graph(next(iter(graphed._accelerated.values()))[1])
        captured = graph is not None and graph.captures == 1 and graph.replays == 2
        lines.append(f"efficientad-{attention} profile_forward {graphed.precision}: graph vs eager max |diff| "
                     f"{diff:.3g} ({'equal within tolerance' if ok else 'DIFFERENT'}); captures/replays "
                     f"{graph.captures if graph else 0}/{graph.replays if graph else 0}")
        if not ok or not captured:
            problems.append(lines[-1])
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        gen = torch.Generator().manual_seed(0)
        for i in range(72):  # over 64 images: predict decodes in DataLoader workers with pinned memory
            path = Path(tmp) / f"{i}.png"
            Image.fromarray((torch.rand(size, size, 3, generator=gen) * 255).byte().numpy()).save(path)
            paths.append(path)
        graphed = detector("efficientad", {"attention": attention}, size, device, MODES["default"])
        eager = detector("efficientad", {"attention": attention}, size, device, {**MODES["default"], "cuda_graphs": False})
        eager.model.load_state_dict(graphed.model.state_dict())
        res_g, res_e = graphed.predict(paths), eager.predict(paths)
        graph = _find_graph(next(iter(graphed._accelerated.values()))[1])
        score_diff = max(abs(a.score - b.score) for a, b in zip(res_g, res_e))
        map_diff = max(float(abs(a.map - b.map).max()) for a, b in zip(res_g, res_e))
        ok = score_diff <= 1e-3 * max(1.0, max(abs(b.score) for b in res_e)) and graph is not None \
            and graph.captures == 1 and graph.replays == len(paths)
        lines.append(f"efficientad-{attention} predict batch 1 ({graphed.precision}): {len(paths)} images, captures/replays "
                     f"{graph.captures if graph else 0}/{graph.replays if graph else 0}, max |score diff| {score_diff:.3g}, "
                     f"max |map diff| {map_diff:.3g} ({'OK' if ok else 'WRONG'})")
        if not ok:
            problems.append(lines[-1])
    for line in lines:
        print(line, flush=True)
    return problems


def _find_graph(module: Any) -> Any:
    from methods.accel import CUDAGraphModule

    while module is not None:
        if isinstance(module, CUDAGraphModule):
            return module
        module = getattr(module, "module", None)
    return None


def anomalib_ms(size: int, device: str, warmup: int, repeats: int) -> float | None:
    try:
        from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, EfficientAdModelSize
    except Exception as exc:  # not installed (the GPU machine has no anomalib), or incompatible
        print(f"anomalib not importable ({type(exc).__name__}): anomalib ratio NOT measured in this run", flush=True)
        return None
    model = EfficientAdModel(teacher_out_channels=384, model_size=EfficientAdModelSize.S, padding=False,
                             pad_maps=True).to(device).eval()
    batch = torch.rand(1, 3, size, size, device=device)
    with torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        _sync(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            _sync(device)
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu or auto")
    parser.add_argument("--variants", default="none,se,cbam", help="EfficientAD student attention variants")
    parser.add_argument("--no-compile", action="store_true", help="skip the --compile modes (they compile for minutes)")
    parser.add_argument("--no-simplenet", action="store_true")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except InspladError as exc:
        print(f"gpu_latency.py: {exc.message}", file=sys.stderr)
        return 2
    if args.markdown is not None and (args.markdown.exists() or args.markdown.is_symlink()):
        print(f"gpu_latency.py: {args.markdown} already exists; give a new file (nothing is overwritten)", file=sys.stderr)
        return 2
    cuda = device.startswith("cuda")
    name = torch.cuda.get_device_name(torch.device(device)) if cuda else "cpu"
    print(f"batch-1 latency on {device} ({name}), torch {torch.__version__}", flush=True)
    modes = [m for m in MODES if not (args.no_compile and MODES[m]["compile"])]
    if not cuda:  # CUDA graphs are CUDA only: on the CPU "no graphs" is "default"
        modes = [m for m in modes if m in ("eager fp32", "default", "compile")]
    models = [("EfficientAD-S" + ("" if a == "none" else f" +{a.upper()}"), "efficientad", {"attention": a}, 256)
              for a in args.variants.split(",") if a]
    if not args.no_simplenet:
        models.append(("SimpleNet (RN18) 288 px", "simplenet", {}, 288))
    # compiled modes last: they take longest, and a run cut short by a time limit keeps the others
    jobs = [(m, mode) for compiled in (False, True) for m in models for mode in modes
            if MODES[mode]["compile"] == compiled and not (m[1] == "simplenet" and "graphs" in mode)]
    rows: list[tuple[str, str, str, str]] = []  # model, mode, ms, note
    problems: list[str] = []
    best: dict[str, float] = {}
    for (label, method, options, size), mode in jobs:
        warmup, repeats = (args.warmup, args.repeats) if method == "efficientad" else \
            (max(2, args.warmup // 4), max(3, args.repeats // 4))
        try:
            det = detector(method, options, size, device, MODES[mode])
            ms = latency_ms(det, torch.rand(1, 3, size, size, device=device), warmup, repeats)
        except InspladError as exc:  # e.g. --compile without a compiler: one line, the others still run
            rows.append((label, mode, "-", exc.message))
            print(f"{label:24} {mode:15} failed: {exc.message}", flush=True)
            continue
        best[label] = min(best.get(label, ms), ms)
        rows.append((label, mode, f"{ms:.3f}", det.precision))
        print(f"{label:24} {mode:15} {ms:9.3f} ms ({det.precision})", flush=True)
        if cuda and method == "efficientad" and mode == "default":
            problems += graph_checks(options["attention"], size, device)
        if cuda and mode.startswith("compile"):  # compiled (and graphed) outputs vs eager, same precision/layout
            eager = detector(method, options, size, device, {**MODES[mode], "compile": False, "cuda_graphs": False})
            eager.model.load_state_dict(det.model.state_dict())
            x = torch.rand(1, 3, size, size, device=device)
            with torch.inference_mode():
                ok, diff = _close(det.profile_forward(x), eager.profile_forward(x), det.precision, fused=True)
            line = f"{label} {mode} vs eager: max |diff| {diff:.3g} ({'equal within tolerance' if ok else 'DIFFERENT'})"
            print(line, flush=True)
            if not ok:
                problems.append(line)
        if args.markdown:  # kept current, so a run cut short by a time limit still leaves its table
            args.markdown.write_text(markdown(rows, ["(run not finished)"], problems))
    ratios = []
    for label, ms in best.items():
        if label.startswith("EfficientAD"):
            ratios.append(f"{label}: best {ms:.3f} ms vs target {EFFICIENTAD_TARGET_MS:.1f} ms on an H100-class GPU: "
                          f"{'met' if ms <= EFFICIENTAD_TARGET_MS else 'NOT met'}" + ("" if cuda else " (CPU run)"))
    peer = anomalib_ms(256, device, args.warmup, args.repeats)
    if peer is None:
        ratios.append("anomalib EfficientAd ratio NOT measured (anomalib not importable here)")
    elif "EfficientAD-S" in best:
        rows.append(("anomalib EfficientAd (small)", "eager fp32", f"{peer:.3f}", "fp32"))
        ratios.append(f"anomalib / ours (best) batch-1 throughput: {peer / best['EfficientAD-S']:.2f}x "
                      f"(target >= {1.5 if cuda else 1.0}x on this device)")
    simplenet = best.get("SimpleNet (RN18) 288 px")
    if simplenet is not None:
        ratio = SEED_003_SIMPLENET_MS / simplenet
        ratios.append(f"SimpleNet: seed 003's {SEED_003_SIMPLENET_MS:.0f} ms / ours (best) {simplenet:.3f} ms = "
                      f"{ratio:.2f}x (target >= 3x on an H100-class GPU: {'met' if ratio >= 3 else 'NOT met'})"
                      + ("" if cuda else " (CPU run)"))
    text = markdown(rows, ratios, problems)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 1 if problems else 0


def markdown(rows: list[tuple[str, str, str, str]], ratios: list[str], problems: list[str]) -> str:
    table = ["| model | mode | batch-1 latency (ms, median) | precision / note |", "|---|---|---:|---|"]
    table += [f"| {m} | {mode} | {ms} | {note} |" for m, mode, ms, note in rows]
    return "\n".join(table + [""] + [f"- {r}" for r in ratios] + [f"- CHECK FAILED: {p}" for p in problems]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
