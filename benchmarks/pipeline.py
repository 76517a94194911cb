"""The shared input pipeline (``methods.data``): decoding in worker processes vs the main process, and
what the memory-mapped cache saves against the in-memory one.

A synthetic MVTec-layout set (``tests/toydata.py``, PNG files) is written to a temporary folder, then:

1. ``load_images_uint8`` with ``--workers 0`` (serial) and with ``--workers N``: median wall time of
   ``--repeats`` calls each, images/s and the speed ratio; the two caches must be byte-identical;
2. the same call in a fresh process with the cache in memory and with ``cache_budget_mb=0`` (memory-
   mapped file): growth of the process's anonymous memory (RssAnon, what the cache costs in RAM) and
   of its file-backed pages (RssFile, page cache the kernel may drop), in MB;
3. ``predict_score_maps`` with a small CNN (random ResNet-18) at ``--workers 0`` and ``N``: with
   workers the next batches decode while the model runs.

    python benchmarks/pipeline.py --images 600 --source-size 384 --size 256 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from methods.data import load_images_uint8, predict_score_maps  # noqa: E402
from tests.toydata import make_toy_mvtec  # noqa: E402


def rss_mb() -> dict[str, float]:
    """This process's RssAnon and RssFile (Linux /proc), in MB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def child(paths_file: Path, size: int, budget: int, cache_dir: Path) -> None:
    """Run in a fresh process: memory growth of one cache load, printed as JSON."""
    paths = [Path(p) for p in paths_file.read_text().splitlines()]
    before = rss_mb()
    cache = load_images_uint8(paths, size, workers=0, cache_budget_mb=budget, cache_dir=cache_dir)
    after = rss_mb()
    checksum = int(cache.sum(dtype=torch.int64))
    print(json.dumps({"anon": after["RssAnon"] - before["RssAnon"], "file": after["RssFile"] - before["RssFile"],
                      "cache_mb": cache.numel() / 2**20, "checksum": checksum,
                      "leftovers": sorted(p.name for p in cache_dir.iterdir())}))


class TinyScorer(torch.nn.Module):
    """A random ResNet-18 trunk mapping a batch to (scores, maps), the shape predict_score_maps expects."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        self.trunk = torch.nn.Sequential(*list(net.children())[:-2]).eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.trunk(x).mean(dim=1)
        return maps.flatten(1).amax(dim=1), maps


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the decode workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time (process + workers) of ``repeats`` calls."""
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
    return statistics.median(times), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="training images in the synthetic set")
    parser.add_argument("--source-size", type=int, default=384, help="side of the PNG files written")
    parser.add_argument("--size", type=int, default=256, help="side the cache resizes to")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--predict-images", type=int, default=64, help="images scored in part 3 (0: skip)")
    parser.add_argument("--child", nargs=3, metavar=("PATHS", "BUDGET", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.size, int(args.child[1]), Path(args.child[2]))
        return

    with tempfile.TemporaryDirectory(prefix="insplad-pipeline-bench-") as tmp:
        root = make_toy_mvtec(Path(tmp) / "data", size=args.source_size, n_train=args.images, n_test_good=0,
                              n_test_bad=0)
        paths = sorted((root / "disc" / "train" / "good").glob("*.png"))
        megabytes = sum(p.stat().st_size for p in paths) / 2**20
        print(f"set: {len(paths)} PNG files {args.source_size}x{args.source_size} ({megabytes:.0f} MB) -> "
              f"{args.size}x{args.size} uint8 cache ({len(paths) * 3 * args.size ** 2 / 2**20:.0f} MB); "
              f"torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f} at start")

        results = {}
        for workers in (0, args.workers):
            results[workers] = load_images_uint8(paths, args.size, workers=workers)
        assert torch.equal(results[0], results[args.workers]), "workers changed the decoded bytes"
        serial, serial_cpu = timed(lambda: load_images_uint8(paths, args.size, workers=0), args.repeats)
        parallel, parallel_cpu = timed(lambda: load_images_uint8(paths, args.size, workers=args.workers),
                                       args.repeats)
        print(f"decode  serial       {serial:6.2f} s  {len(paths) / serial:7.1f} img/s  CPU {serial_cpu:6.2f} s")
        print(f"decode  {args.workers} workers    {parallel:6.2f} s  {len(paths) / parallel:7.1f} img/s  "
              f"CPU {parallel_cpu:6.2f} s (main process + workers)")
        print(f"decode  speed ratio workers/serial: {serial / parallel:.2f}x wall; CPU-time cost of the workers "
              f"{parallel_cpu / serial_cpu:.2f}x (identical bytes: yes)")

        listing = Path(tmp) / "paths.txt"
        listing.write_text("\n".join(str(p) for p in paths))
        spill_dir = Path(tmp) / "run"
        spill_dir.mkdir()
        memory = {}
        for label, budget in (("in memory", 1 << 20), ("memmap", 0)):
            out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--child", str(listing),
                                  str(budget), str(spill_dir)], check=True, capture_output=True, text=True)
            memory[label] = json.loads(out.stdout.strip().splitlines()[-1])
        assert memory["in memory"]["checksum"] == memory["memmap"]["checksum"]
        for label, m in memory.items():
            print(f"cache   {label:<10} RssAnon +{m['anon']:7.1f} MB   RssFile +{m['file']:7.1f} MB   "
                  f"(cache {m['cache_mb']:.0f} MB; left in the run folder: {m['leftovers'] or 'nothing'})")
        print(f"cache   anonymous memory memmap/in-memory: "
              f"{memory['memmap']['anon'] / max(memory['in memory']['anon'], 1e-9):.3f}")

        if args.predict_images:
            model = TinyScorer()
            subset = paths[:args.predict_images]
            kwargs = dict(size=args.size, batch_size=16, device=torch.device("cpu"))
            scores = {w: predict_score_maps(model, subset, workers=w, **kwargs) for w in (0, args.workers)}
            assert all(a[0] == b[0] for a, b in zip(scores[0], scores[args.workers]))
            p0 = timed(lambda: predict_score_maps(model, subset, workers=0, **kwargs), args.repeats)[0]
            pw = timed(lambda: predict_score_maps(model, subset, workers=args.workers, **kwargs), args.repeats)[0]
            print(f"predict serial       {p0:6.2f} s  {len(subset) / p0:7.1f} img/s  (ResNet-18 trunk, batch 16)")
            print(f"predict {args.workers} workers    {pw:6.2f} s  {len(subset) / pw:7.1f} img/s")
            print(f"predict speed ratio workers/serial: {p0 / pw:.2f}x (identical scores: yes)")


if __name__ == "__main__":
    main()
