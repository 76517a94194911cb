"""Speed of `insplad build-splits` against the floor of only decoding frames and encoding crops.

    python benchmarks/build_splits.py                       # 2000 synthetic 640x480 frames in a temp dir
    python benchmarks/build_splits.py --raw raw/ --jobs 1   # an existing raw folder (kept)

The floor, timed in the same run on the same frames: decode every frame with Pillow (8-bit RGB),
cut the same padded boxes and encode each crop as PNG with the same settings -- nothing else (no
annotation parsing, EXIF handling, hashing, file writing, split or manifest). The build is
``build_dataset`` end to end. Reported: frames/s of each and the ratio build time / floor time
(target: <= 1.3). Each is timed ``--repeat`` times, alternating, and the best run is kept.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from insplad_tools.dataset.imaging import PNG_OPTIONS, object_box, padded_box  # noqa: E402
from insplad_tools.dataset.pipeline import BuildOptions, build_dataset  # noqa: E402
from insplad_tools.dataset.sources import read_annotations  # noqa: E402
from insplad_tools.dataset.taxonomy import load_taxonomy  # noqa: E402


def crop_plan(raw: Path, pad: float) -> list[tuple[Path, list[tuple[int, int, int, int]]]]:
    """Frames and the padded crop boxes the build will cut (computed outside the timed floor)."""
    frames, problems = read_annotations(raw)
    if problems:
        raise SystemExit(f"{raw}: {len(problems)} annotation problems, e.g. {problems[0]}")
    taxonomy = load_taxonomy()
    plan = []
    for f in frames:
        w, h = f.size
        boxes = []
        for o in f.objects:
            if taxonomy.category_of(o.raw_class) is None:
                continue
            box = object_box(o.box, w, h)
            if box is not None:
                boxes.append(padded_box(box, pad, w, h))
        plan.append((f.path, boxes))
    return plan


def floor(plan: list[tuple[Path, list[tuple[int, int, int, int]]]]) -> float:
    start = time.perf_counter()
    for path, boxes in plan:
        img = Image.open(path)
        img.load()
        frame = img if img.mode == "RGB" else img.convert("RGB")
        for box in boxes:
            buf = io.BytesIO()
            frame.crop(box).save(buf, format="PNG", **PNG_OPTIONS)
    return time.perf_counter() - start


def build(raw: Path, work: Path, jobs: int) -> float:
    out = work / "out"
    start = time.perf_counter()
    build_dataset(raw, out, BuildOptions(progress=False, jobs=jobs, min_size=1))
    elapsed = time.perf_counter() - start
    shutil.rmtree(out)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, help="existing raw folder (default: generate one with insplad synth)")
    parser.add_argument("--frames", type=int, default=2000, help="frames to generate (default 2000)")
    parser.add_argument("--size", default="640x480", help="generated frame size WxH (default 640x480)")
    parser.add_argument("--synth-jobs", type=int, default=2, help="processes for generating the frames")
    parser.add_argument("--jobs", type=int, default=1, help="build worker processes (the floor is single-process; "
                                                            "compare with --jobs 1)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each, best kept")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="insplad-bench-") as tmp:
        work = Path(tmp)
        raw = args.raw
        if raw is None:
            from insplad_tools.synth.generate import SynthConfig, generate

            w, h = (int(v) for v in args.size.lower().split("x"))
            raw = work / "raw"
            t0 = time.perf_counter()
            generate(raw, SynthConfig(frames=args.frames, frame_size=(w, h), roboflow=False, jobs=args.synth_jobs))
            print(f"generated {args.frames} frames of {w}x{h} in {time.perf_counter() - t0:.1f} s", flush=True)
        plan = crop_plan(raw, BuildOptions().pad)
        n_frames, n_crops = len(plan), sum(len(b) for _, b in plan)
        floor_times, build_times = [], []
        for _ in range(args.repeat):
            floor_times.append(floor(plan))
            build_times.append(build(raw, work, args.jobs))
        f, b = min(floor_times), min(build_times)
        print(f"frames: {n_frames}, crops: {n_crops}, build --jobs {args.jobs}")
        print(f"floor (decode + crop + PNG encode only): {f:.2f} s  {n_frames / f:.1f} frames/s")
        print(f"insplad build-splits (end to end):       {b:.2f} s  {n_frames / b:.1f} frames/s")
        print(f"ratio build / floor: {b / f:.3f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
