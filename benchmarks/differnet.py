"""DifferNet / AttentDifferNet throughput and peak memory, with the attention overhead as a ratio.

Measures, for each variant (DifferNet, SE, CBAM) in a fresh process: training images/s (one
``train_epoch`` (after a warm-up epoch) over ``--train-images`` images, each seen under ``n_transforms`` rotations), test
images/s (``predict``, each image under ``n_transforms_test`` fixed rotations) and peak memory
(CPU: max RSS of the process; CUDA: ``torch.cuda.max_memory_allocated``). The peer is plain
DifferNet measured in the same run: ``ratio`` = variant throughput / DifferNet throughput (seed 003
Table 4 claims attention costs next to nothing, i.e. ratios near 1).

    python benchmarks/differnet.py --device cpu --image-size 448 --train-images 8 --test-images 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("none", "se", "cbam")


def _images(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def measure(attention: str, args: argparse.Namespace) -> dict:
    import torch

    from methods.base import RunConfig, seed_everything
    from methods.registry import build_detector

    torch.set_num_threads(args.threads) if args.threads else None
    seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        train = _images(Path(tmp) / "train", args.train_images, args.image_size, 0)
        test = _images(Path(tmp) / "test", args.test_images, args.image_size, 1)
        options = {"attention": attention, "n_scales": args.n_scales, "flow_width": args.flow_width,
                   "n_transforms": args.n_transforms, "n_transforms_test": args.n_transforms_test}
        run = RunConfig(epochs=1, batch_size=args.batch_size, image_size=args.image_size, device=args.device,
                        pretrained=False, progress=False)
        detector = build_detector("differnet", options, run)
        detector.setup(train)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        detector.train_epoch(0)  # warm-up epoch (allocator, oneDNN/cuDNN kernel selection)
        sync()
        start = time.perf_counter()
        detector.train_epoch(1)
        sync()
        train_s = time.perf_counter() - start
        detector.finish_training()
        detector.predict(test[:1])  # warm-up
        sync()
        start = time.perf_counter()
        detector.predict(test)
        sync()
        test_s = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda")
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return {"attention": attention, "train_ips": args.train_images / train_s, "test_ips": args.test_images / test_s,
                "peak_mib": peak, "trainable": detector.trainable_parameters()}


def _worker(job: tuple[str, argparse.Namespace]) -> dict:
    return measure(*job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--n-scales", type=int, default=3)
    parser.add_argument("--flow-width", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--n-transforms", type=int, default=4)
    parser.add_argument("--n-transforms-test", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=8)
    parser.add_argument("--test-images", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for attention in args.variants.split(","):
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:  # a fresh process per variant: its own peak RSS
            rows.append(pool.submit(_worker, (attention, args)).result())
    peer = next((r for r in rows if r["attention"] == "none"), rows[0])
    unit = "MiB (CUDA allocated)" if args.device.startswith("cuda") else "MiB (max RSS)"
    print(f"differnet on {args.device}, image {args.image_size}px x {args.n_scales} scales, flow width {args.flow_width}, "
          f"batch {args.batch_size}, {args.n_transforms} train / {args.n_transforms_test} test rotations")
    print(f"{'variant':8} {'trainable':>12} {'train img/s':>12} {'ratio':>6} {'test img/s':>11} {'ratio':>6} {'peak ' + unit:>22}")
    for r in rows:
        print(f"{r['attention']:8} {r['trainable']:>12,} {r['train_ips']:>12.3f} {r['train_ips'] / peer['train_ips']:>6.2f} "
              f"{r['test_ips']:>11.3f} {r['test_ips'] / peer['test_ips']:>6.2f} {r['peak_mib']:>22.0f}")


if __name__ == "__main__":
    main()
