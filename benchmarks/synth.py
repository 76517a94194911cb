"""Speed of `insplad synth` frame rendering against its target of 60 ms per 1280x960 frame.

    python benchmarks/synth.py                      # 30 frames at 1280x960 and 60 at 640x480
    python benchmarks/synth.py --frames 100 --sizes 1280x960

Timed per frame, single process: rendering (background, steel, conductors, posed assets with their
defects, grain) and then rendering plus writing (the JPEG frame and its 640x480 Roboflow copy).
CPU time of this process is reported next to wall time, so a machine busy with other work still
gives a fair figure; each is the best of ``--repeat`` runs. Reported: ms/frame, frames/s and, for 1280x960, the ratio measured / 60 ms
(target: <= 1.0 for rendering).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from insplad_tools.synth.frame import render, render_to_disk  # noqa: E402
from insplad_tools.synth.generate import SynthConfig, plan  # noqa: E402

TARGET_MS = 60.0  # per 1280x960 frame, rendering only, one core


def measure(width: int, height: int, frames: int, seed: int, repeat: int) -> dict[str, float]:
    """Best of ``repeat`` timings of each kind (the least disturbed by other work on the machine)."""
    best: dict[str, float] = {}
    for _ in range(repeat):
        for key, value in _measure_once(width, height, frames, seed).items():
            best[key] = min(value, best.get(key, value))
    return best


def _measure_once(width: int, height: int, frames: int, seed: int) -> dict[str, float]:
    jobs = plan(SynthConfig(seed=seed, frames=frames, frame_size=(width, height)))
    render(jobs[0])  # warm caches (grain images, unit circles)
    out: dict[str, float] = {}
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    for job in jobs:
        render(job)
    out["render_cpu"] = (time.process_time() - t_cpu) / frames * 1000
    out["render_wall"] = (time.perf_counter() - t_wall) / frames * 1000
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("images", "roboflow/train", "roboflow/valid", "roboflow/test"):
            Path(tmp, sub).mkdir(parents=True)
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        for job in jobs:
            render_to_disk(job, tmp)
        out["write_cpu"] = (time.process_time() - t_cpu) / frames * 1000
        out["write_wall"] = (time.perf_counter() - t_wall) / frames * 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=0, help="frames per size (default 30 at 1280x960, 60 below)")
    parser.add_argument("--sizes", default="1280x960,640x480", help="comma list of WxH frame sizes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the best of each timing is kept")
    args = parser.parse_args()
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        n = args.frames or (30 if w >= 1280 else 60)
        r = measure(w, h, n, args.seed, args.repeat)
        line = (f"{w}x{h} ({n} frames): render {r['render_cpu']:.1f} ms CPU / {r['render_wall']:.1f} ms wall per frame "
                f"({1000 / r['render_cpu']:.1f} frames/s CPU); render+write {r['write_cpu']:.1f} ms CPU / "
                f"{r['write_wall']:.1f} ms wall ({1000 / r['write_cpu']:.1f} frames/s CPU)")
        if (w, h) == (1280, 960):
            line += f"; render / target {r['render_cpu'] / TARGET_MS:.2f} (target <= 1.0)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
