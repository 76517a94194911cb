"""Speed of `insplad link-crops` against decoding every InsPLAD-det frame once.

    python benchmarks/link_crops.py                          # 300 synthetic 1920x1080 frames in a temp dir
    python benchmarks/link_crops.py --frames 1000 --jobs 2   # more frames
    python benchmarks/link_crops.py --raw RAW/               # an existing `synth --layout insplad-det` folder

The peer, timed in the same run on the same frames: decode every frame of RAW/InsPLAD-det once with
Pillow at full size as 8-bit RGB (what build-splits does) -- nothing else. The link is
``link_crops`` end to end (read annotations and crops, decode frames, score, write both CSVs).
Reported: both times (wall and process CPU time; on a shared machine the CPU-time ratio is the
steadier one), and the ratios link / decode (target: <= 2, "linking N crops to N frames costs at
most twice decoding every frame once").
Each is timed ``--repeat`` times, alternating, and the best run is kept. Synthetic frames carry
about five fault crops each; the target's shape is one crop per frame (10,000 to 10,000), so the
link is timed twice: on an evenly spaced subset of the crops as many as the frames ("1:1", the
target's shape), and on all of them ("all", a harder case).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from insplad_tools.dataset.link import LinkOptions, link_crops  # noqa: E402
from insplad_tools.synth.generate import SynthConfig  # noqa: E402
from insplad_tools.synth.released import generate_released  # noqa: E402


def decode_all(frames: list[Path]) -> tuple[float, float]:
    """(wall, CPU) seconds to decode every frame once."""
    start, cpu = time.perf_counter(), time.process_time()
    for path in frames:
        with Image.open(path) as img:
            img.load()
            if img.mode != "RGB":
                img.convert("RGB")
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=None, help="existing folder with InsPLAD-det/ and InsPLAD-fault/")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--frame-size", default="1920x1080")
    parser.add_argument("--jobs", type=int, default=2, help="processes for synth only (linking is single-process)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--min-score", type=float, default=LinkOptions.min_score,
                        help="diagnostic: -1 with --margin 0 accepts every best box, to see the score spread")
    parser.add_argument("--margin", type=float, default=LinkOptions.margin)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-link-"))
    try:
        raw = args.raw
        if raw is None:
            raw = tmp / "raw"
            w, h = (int(v) for v in args.frame_size.split("x"))
            t0 = time.perf_counter()
            generate_released(raw, SynthConfig(seed=0, frames=args.frames, frame_size=(w, h), jobs=args.jobs))
            print(f"synth: {args.frames} frames {w}x{h} in {time.perf_counter() - t0:.1f} s")
        det, fault = raw / "InsPLAD-det", raw / "InsPLAD-fault"
        frames = sorted(p for split in ("train", "val") for p in (det / split).glob("*.jpg"))
        crops = sorted(p for p in fault.rglob("*") if p.is_file())
        subset = tmp / "fault-1to1"
        step = max(1, len(crops) // len(frames))
        for p in crops[::step][:len(frames)]:
            dest = subset / p.relative_to(fault)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest)
        decode_best = (float("inf"), float("inf"))
        link_best = {"1:1": (float("inf"), float("inf")), "all": (float("inf"), float("inf"))}
        counts: dict = {}
        reports: dict = {}
        for i in range(args.repeat):
            wall, cpu = decode_all(frames)
            decode_best = (min(decode_best[0], wall), min(decode_best[1], cpu))
            for name, folder in (("1:1", subset), ("all", fault)):
                out = tmp / f"link-{name.replace(':', 'to')}-{i}"
                start, cpu = time.perf_counter(), time.process_time()
                report = link_crops(det, folder, out,
                                    LinkOptions(progress=False, min_score=args.min_score, margin=args.margin))
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                link_best[name] = (min(link_best[name][0], wall), min(link_best[name][1], cpu))
                counts[name] = report.counts
                reports[name] = report
                with open(out / "provenance.csv", newline="") as handle:
                    assert sum(1 for _ in csv.DictReader(handle)) == sum(report.counts.values())
        print(f"frames: {len(frames)}")
        print(f"decode every frame once (full RGB): {decode_best[0]:.2f} s wall, {decode_best[1]:.2f} s CPU "
              f"({len(frames) / decode_best[0]:.1f} frames/s)")
        for name in ("1:1", "all"):
            n_crops = sum(counts[name].values())
            wall, cpu = link_best[name][0] / decode_best[0], link_best[name][1] / decode_best[1]
            print(f"link-crops, {name:>3} ({n_crops} crops {counts[name]}): {link_best[name][0]:.2f} s wall, "
                  f"{link_best[name][1]:.2f} s CPU; ratio link / decode: {wall:.2f} wall, {cpu:.2f} CPU (target <= 2) "
                  f"-> {'OK' if max(wall, cpu) <= 2 else 'SLOWER THAN TARGET'}")
        if (raw / "truth.json").is_file():   # synthetic data: check every link against the true source
            truth = json.loads((raw / "truth.json").read_text())["crops"]
            tally: Counter = Counter()
            spread: dict = {}
            for link in reports["all"].links:
                t = truth[link.crop.rel]
                right = link.frame is not None and (link.frame.name, link.annotation_id) == (t["frame"], str(t["annotation_id"]))
                kind = "frame excluded" if t["duplicate_name"] else "true source" if right else "WRONG"
                tally[(link.status, kind)] += 1
                if link.score is not None:
                    spread.setdefault(kind, []).append((link.score, link.margin))
            print("accuracy (all crops, status / best box):", dict(sorted(tally.items())))
            for kind, values in sorted(spread.items()):
                sc, mg = np.array(values).T
                print(f"  best box = {kind}: score min {sc.min():.3f} p1 {np.percentile(sc, 1):.3f} max {sc.max():.3f}; "
                      f"margin min {mg.min():.3f} p1 {np.percentile(mg, 1):.3f} max {mg.max():.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
