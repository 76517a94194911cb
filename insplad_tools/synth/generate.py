"""Plan and write a synthetic InsPLAD-det-like raw set.

Python API::

    from insplad_tools.synth.generate import SynthConfig, generate
    summary = generate("raw/", SynthConfig(seed=0, frames=60))
    print(summary.describe())

The data is SYNTHETIC: procedurally drawn drone frames of power-line hardware with known
defects. It exercises the tool chain (splits, training, scoring) and is never a substitute for
the real InsPLAD images.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from insplad_tools.errors import InspladError
from insplad_tools.safety import worker_signals
from insplad_tools.fsutil import atomic_output_dir
from insplad_tools.synth.assets import (DEFECTS_BY_CLASS, DISTRACTOR_CLASSES, FAULT_CLASSES, NORMAL, AssetSpec)
from insplad_tools.synth.frame import FrameJob, FrameRecord, render_to_disk
from insplad_tools.synth.scene import random_look
from insplad_tools.synth.writers import ROBOFLOW_SPLITS, write_annotations

DIFFICULTIES = ("easy", "hard")
TOWERS_PER_FLIGHT = 4


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Equal configs give byte-identical output (``jobs`` never changes it)."""

    seed: int = 0
    frames: int = 60
    towers: int | None = None  # default: one tower per five frames
    frame_size: tuple[int, int] = (1280, 960)
    difficulty: str = "easy"
    defect_rate: float = 0.25  # share of the physical fault-class assets that are defective
    categories: tuple[str, ...] = FAULT_CLASSES
    distractors: bool = True
    roboflow: bool = True
    jobs: int = 1
    progress: bool = False

    def check(self) -> None:
        """Raise :class:`InspladError` with one clear line if the config cannot be generated."""
        if self.frames < 1:
            raise InspladError(f"--frames must be at least 1 (got {self.frames})")
        if self.towers is not None and not 1 <= self.towers <= self.frames:
            raise InspladError(f"--towers must be between 1 and the number of frames (got {self.towers})")
        w, h = self.frame_size
        if w < 160 or h < 120 or w > 8192 or h > 8192:
            raise InspladError(f"--frame-size {w}x{h}: width must be 160..8192 and height 120..8192")
        if self.difficulty not in DIFFICULTIES:
            raise InspladError(f"--difficulty must be one of {', '.join(DIFFICULTIES)} (got {self.difficulty!r})")
        if not 0.0 <= self.defect_rate <= 1.0:
            raise InspladError(f"--defect-rate must be within [0, 1] (got {self.defect_rate})")
        if not self.categories:
            raise InspladError("--categories: give at least one category")
        unknown = [c for c in self.categories if c not in FAULT_CLASSES]
        if unknown:
            raise InspladError(f"--categories: unknown {', '.join(unknown)}; choose from {', '.join(FAULT_CLASSES)}")
        if len(set(self.categories)) != len(self.categories):
            raise InspladError("--categories: a category is listed twice")
        if self.jobs < 1:
            raise InspladError(f"--jobs must be at least 1 (got {self.jobs})")

    def settings(self) -> dict:
        """The arguments that determine the output (recorded in README.txt and truth.json)."""
        out = asdict(self)
        out.pop("jobs")
        out.pop("progress")
        out["frame_size"] = list(self.frame_size)
        out["categories"] = list(self.categories)
        out["towers"] = self.n_towers
        return out

    @property
    def n_towers(self) -> int:
        return self.towers if self.towers is not None else max(1, round(self.frames / 5))


@dataclass
class SynthSummary:
    """Counts of what was written."""

    raw_dir: Path
    frames: int
    towers: int
    flights: int
    objects: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> condition -> count
    defects: dict[str, int] = field(default_factory=dict)  # defect type -> polygons
    seconds: float = 0.0

    def describe(self) -> str:
        lines = [f"SYNTHETIC raw set -> {self.raw_dir}: {self.frames} frame(s), {self.towers} tower(s), "
                 f"{self.flights} flight(s)"]
        for cls, counts in self.objects.items():
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            lines.append(f"  {cls:34s} {sum(counts.values()):5d}  ({detail})")
        lines.append("  defect polygons: " + (", ".join(f"{k} {v}" for k, v in self.defects.items()) or "none"))
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"  {self.seconds:.1f} s, {rate:.1f} frames/s")
        return "\n".join(lines)


def plan(config: SynthConfig) -> list[FrameJob]:
    """Decide towers, their assets and conditions, and every frame's name and seed."""
    rng = np.random.default_rng([config.seed, 1])
    n_towers = config.n_towers
    towers: list[list[AssetSpec]] = []
    looks = []
    cats = list(config.categories)
    for _ in range(n_towers):
        looks.append(random_look(rng))
        n_assets = max(len(cats), int(rng.integers(5, 9)))
        # Cycle through the categories from a random start so extras fall on every category alike.
        first = [cats[i] for i in rng.permutation(len(cats))]
        classes = [first[i % len(cats)] for i in range(n_assets)]
        classes = [classes[i] for i in rng.permutation(n_assets)]
        if config.distractors and rng.random() < 0.6:
            classes.append(DISTRACTOR_CLASSES[0])
        towers.append([AssetSpec(c, int(rng.integers(0, 2**31 - 1)), NORMAL, config.difficulty) for c in classes])

    # Defects: an exact share of each category's physical assets (at least one when the rate allows),
    # so small sets still contain anomalies of every kind.
    for cat in cats:
        where = [(t, i) for t, assets in enumerate(towers) for i, a in enumerate(assets) if a.cls == cat]
        n_def = int(round(config.defect_rate * len(where)))
        if config.defect_rate > 0 and n_def == 0 and len(where) >= 2:
            n_def = 1
        chosen = rng.choice(len(where), size=n_def, replace=False) if n_def else []
        kinds = DEFECTS_BY_CLASS[cat]
        for j, pick in enumerate(sorted(int(c) for c in chosen)):
            t, i = where[pick]
            old = towers[t][i]
            towers[t][i] = AssetSpec(old.cls, old.seed, kinds[j % len(kinds)], old.difficulty)

    # Frames: spread over towers, a few flights of TOWERS_PER_FLIGHT towers each.
    per_tower = [config.frames // n_towers + (1 if t < config.frames % n_towers else 0) for t in range(n_towers)]
    splits = _roboflow_splits(config) if config.roboflow else [None] * config.frames
    jobs: list[FrameJob] = []
    w, h = config.frame_size
    for t, count in enumerate(per_tower):
        flight = t // TOWERS_PER_FLIGHT + 1
        for k in range(count):
            index = len(jobs)
            jobs.append(FrameJob(
                index=index, name=f"flight{flight:02d}_tower{t + 1:03d}_{k + 1:03d}.jpg", flight=flight,
                tower=t + 1, seed=config.seed, width=w, height=h, look=looks[t], assets=tuple(towers[t]),
                roboflow_split=splits[index]))
    return jobs


def _roboflow_splits(config: SynthConfig) -> list[str]:
    """Roboflow's random 70/20/10 split of the frames, each split non-empty when possible."""
    n = config.frames
    rng = np.random.default_rng([config.seed, 3])
    order = rng.permutation(n)
    n_valid = max(1, round(0.2 * n)) if n >= 3 else 0
    n_test = max(1, round(0.1 * n)) if n >= 3 else 0
    out = ["train"] * n
    for rank, idx in enumerate(order):
        if rank < n_valid:
            out[idx] = "valid"
        elif rank < n_valid + n_test:
            out[idx] = "test"
    return out


def readme_text(config: SynthConfig) -> str:
    settings = config.settings()
    args = " ".join(f"{k}={v}" for k, v in settings.items())
    return (
        "SYNTHETIC data generated by insplad synth -- NOT real InsPLAD images.\n\n"
        "Procedurally drawn UAV frames of power-line hardware (glass insulators, lightning-rod suspensions,\n"
        "polymer-insulator upper shackles, vari-grips, yoke suspensions, and damper distractors) with\n"
        "known defects (missing caps, corrosion, bird nests). Use it to exercise the tool chain; report\n"
        "results only on real data.\n\n"
        f"seed: {config.seed}\n"
        f"arguments: {args}\n\n"
        "Layout: images/ (frames), annotations/voc/ (Pascal VOC XML, CVAT style, condition attribute),\n"
        "annotations/coco.json (COCO detection), roboflow/ (Roboflow COCO-segmentation export of the defect\n"
        "polygons, 640x480), truth.json (the generator's exact ground truth, for tests).\n"
    )


def _worker(args: tuple[FrameJob, str]) -> FrameRecord:
    return render_to_disk(*args)


def generate(raw_dir: str | Path, config: SynthConfig = SynthConfig(), *, overwrite: bool = False) -> SynthSummary:
    """Write a complete raw set to ``raw_dir`` (atomically) and return its summary."""
    config.check()
    raw_dir = Path(raw_dir)
    start = time.perf_counter()
    jobs = plan(config)
    with atomic_output_dir(raw_dir, overwrite=overwrite, command="insplad synth") as tmp:
        (tmp / "images").mkdir()
        if config.roboflow:
            for split in ROBOFLOW_SPLITS:
                (tmp / "roboflow" / split).mkdir(parents=True)
        tasks = [(job, str(tmp)) for job in jobs]
        bar = tqdm(total=len(jobs), desc="synth", unit="frame", disable=not config.progress)
        records: list[FrameRecord] = []
        if config.jobs > 1 and len(jobs) > 1:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            with ctx.Pool(min(config.jobs, len(jobs)), initializer=worker_signals) as pool:
                for rec in pool.imap(_worker, tasks, chunksize=4):
                    records.append(rec)
                    bar.update()
        else:
            for task in tasks:
                records.append(_worker(task))
                bar.update()
        bar.close()
        write_annotations(tmp, records, config.settings(), config.roboflow)
        (tmp / "README.txt").write_text(readme_text(config), encoding="utf-8")
    return _summarise(raw_dir, config, records, time.perf_counter() - start)


def _summarise(raw_dir: Path, config: SynthConfig, records: list[FrameRecord], seconds: float) -> SynthSummary:
    objects: dict[str, Counter] = {}
    defects: Counter = Counter()
    for rec in records:
        for obj in rec.objects:
            objects.setdefault(obj.cls, Counter())[obj.condition] += 1
            for kind, _ in obj.defects:
                defects[kind] += 1
    order = list(FAULT_CLASSES) + list(DISTRACTOR_CLASSES)
    return SynthSummary(
        raw_dir=raw_dir, frames=len(records), towers=config.n_towers,
        flights=(config.n_towers - 1) // TOWERS_PER_FLIGHT + 1,
        objects={c: dict(objects[c]) for c in order if c in objects},
        defects=dict(sorted(defects.items())), seconds=seconds)
