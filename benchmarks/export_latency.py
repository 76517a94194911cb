"""Exported model (ONNX Runtime, OpenVINO when installed) vs torch on the CPU: latency at batch 1 and 32.

For each method: build a detector, fit it on a small synthetic toy set (the graph's cost does not
depend on how well it is trained), save a checkpoint, ``insplad export`` it, and time the same
scoring graph (images in [0, 1] in; scores and maps out) in torch (``Detector.export_module``,
``torch.inference_mode``) and in the runtime, in one process on the same CPU threads. Prints the
median latency of ``--repeats`` calls per batch size and the ratio torch / runtime (> 1: the
exported model is faster).

    python benchmarks/export_latency.py --methods patchcore,simplenet,efficientad --image-size 256 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.base import RunConfig  # noqa: E402
from methods.export import ExportedModel, export_detector  # noqa: E402
from methods.registry import build_detector, load_detector  # noqa: E402
from tests.toydata import make_toy_mvtec  # noqa: E402

# Full-size defaults for each method except the training budget (one short epoch).
FIT_OPTIONS = {"patchcore": {}, "simplenet": {}, "efficientad": {"steps": "0"}, "differnet": {"n_transforms_test": "64"}}


def median_ms(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="patchcore,simplenet,efficientad")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--openvino", action="store_true", help="also export and time OpenVINO")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="insplad-export-bench-"))
    data = make_toy_mvtec(work / "toy", size=args.image_size, n_train=8, n_test_good=1, n_test_bad=1)
    train = sorted((data / "disc" / "train" / "good").glob("*.png"))
    rows = []
    for method in args.methods.split(","):
        run = RunConfig(epochs=1, batch_size=4, image_size=args.image_size, pretrained=False, progress=False)
        detector = build_detector(method, FIT_OPTIONS.get(method, {}), run)
        detector.fit(train, work / f"{method}.pt")
        module = load_detector(work / f"{method}.pt").export_module().eval()
        runtimes = {"onnxruntime": "onnx"} | ({"openvino": "openvino"} if args.openvino else {})
        models = {}
        for label, fmt in runtimes.items():
            export_detector(work / f"{method}.pt", work / f"{method}-{fmt}", fmt)
            models[label] = ExportedModel.open(work / f"{method}-{fmt}")
        for batch in sizes:
            x = torch.rand(batch, 3, args.image_size, args.image_size)
            with torch.inference_mode():
                torch_ms = median_ms(lambda: module(x), args.repeats)
            for label, model in models.items():
                arr = x.numpy().astype(np.float32)
                ms = median_ms(lambda: model.run_batch(arr), args.repeats)
                rows.append((method, batch, label, torch_ms, ms))
                print(f"{method:12s} batch {batch:3d}  torch {torch_ms:9.1f} ms  {label} {ms:9.1f} ms  "
                      f"torch/{label} = {torch_ms / ms:.2f}x", flush=True)
    print("\n| method | batch | runtime | torch ms | runtime ms | torch / runtime |\n|---|---:|---|---:|---:|---:|")
    for method, batch, label, torch_ms, ms in rows:
        print(f"| {method} | {batch} | {label} | {torch_ms:.1f} | {ms:.1f} | {torch_ms / ms:.2f}x |")


if __name__ == "__main__":
    main()
