"""``insplad synth --layout insplad-det``: synthetic data shaped like the InsPLAD release.

Writes, under RAW:

* ``InsPLAD-det/annotations/instances_{train,val}.json``: COCO detection with the release's 18
  categories (ids 1-18, names with spaces, Portuguese supercategories) and only the standard COCO
  keys: no condition. Frames in ``InsPLAD-det/{train,val}/<tower>-<visit>_DJI_<nnnn>.jpg``. As in the
  release, a few train file names are listed twice, under a second image id with different boxes.
* ``InsPLAD-fault/<asset>/{train/good,test/good,test/<condition>}/<nnnnn>.jpg``: released-style
  crops of the five fault assets (hyphenated folder names, conditions ``rust``, ``missing-cap``,
  ``bird-nest``), each cut with a random padding, rescaled and re-encoded, named by a counter (the
  name does not reveal the frame), split at random per crop like the official split (which is
  why ``insplad audit`` finds towers on both sides).
* ``truth.json``: for every crop, the frame and annotation it was cut from (for tests).

The data is SYNTHETIC; it only exercises link-crops, build-splits and audit on the release's shape.
"""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from insplad_tools.safety import worker_signals
from insplad_tools.fsutil import atomic_output_dir
from insplad_tools.synth.assets import DISTRACTOR_CLASSES, NORMAL
from insplad_tools.synth.frame import FrameJob, PlacedObject, encode_jpeg, render
from insplad_tools.synth.generate import SynthConfig, SynthSummary, _summarise, plan

DET_DIR, FAULT_DIR = "InsPLAD-det", "InsPLAD-fault"
# The release's categories, in id order (1-18), with their supercategories.
DET_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("yoke", "suporte"), ("yoke suspension", "suporte"), ("spacer", "componente"),
    ("stockbridge damper", "componente"), ("lightning rod shackle", "suporte"), ("lightning rod suspension", "suporte"),
    ("polymer insulator", "componente"), ("glass insulator", "componente"), ("tower id plate", "componente"),
    ("vari-grip", "suporte"), ("polymer insulator lower shackle", "suporte"),
    ("polymer insulator upper shackle", "suporte"), ("polymer insulator tower shackle", "suporte"),
    ("glass insulator big shackle", "suporte"), ("glass insulator small shackle", "suporte"),
    ("glass insulator tower shackle", "suporte"), ("spiral damper", "componente"), ("sphere", "componente"),
)
CLASS_TO_DET = {"glass-insulator": "glass insulator", "lightning-rod-suspension": "lightning rod suspension",
                "polymer-insulator-upper-shackle": "polymer insulator upper shackle", "vari-grip": "vari-grip",
                "yoke-suspension": "yoke suspension", "damper": "stockbridge damper"}
CONDITION_FOLDER = {NORMAL: "good", "corrosion": "rust", "missing-cap": "missing-cap", "bird-nest": "bird-nest"}
VAL_SHARE = 0.25
DUPLICATE_SHARE = 0.04
CROP_PAD = (0.0, 0.15)      # fraction of the box added on every side
CROP_SCALE = (0.6, 1.0)     # rescaling of the padded crop
OFFICIAL_TEST_SHARE = 0.2


def _rename(jobs: list[FrameJob], seed: int) -> list[tuple[FrameJob, str]]:
    """``<tower>-<visit>_DJI_<nnnn>.jpg`` names (two visits per tower when it has 2+ frames) and det splits."""
    rng = np.random.default_rng([seed, 7])
    by_tower: dict[int, list[FrameJob]] = {}
    for job in jobs:
        by_tower.setdefault(job.tower, []).append(job)
    out = []
    number = 0
    for tower, tower_jobs in sorted(by_tower.items()):
        half = (len(tower_jobs) + 1) // 2
        for k, job in enumerate(tower_jobs):
            number += 1
            visit = 1 if k < half else 2
            name = f"{100 + tower}-{visit}_DJI_{number:04d}.jpg"
            split = "val" if rng.random() < VAL_SHARE else "train"
            out.append((dataclasses.replace(job, name=name, roboflow_split=None), split))
    if out and all(s == "val" for _, s in out):
        out[0] = (out[0][0], "train")
    return out


def _render_one(args: tuple[FrameJob, str, str]) -> tuple[FrameJob, str, list[PlacedObject], list[dict]]:
    """Render one frame into ``staging``, cut the fault crops of its objects; returns metadata."""
    job, split, staging = args
    image, objects = render(job)
    (Path(staging) / "frames" / job.name).write_bytes(encode_jpeg(image))
    rng = np.random.default_rng([job.seed, 11, job.index])
    crops = []
    for index, obj in enumerate(objects):
        if obj.cls in DISTRACTOR_CLASSES:
            continue
        x0, y0, x1, y1 = obj.box
        pad = rng.uniform(*CROP_PAD)
        px, py = pad * (x1 - x0), pad * (y1 - y0)
        box = (max(0, round(x0 - px)), max(0, round(y0 - py)), min(image.width, round(x1 + px)),
               min(image.height, round(y1 + py)))
        crop = image.crop(box)
        scale = rng.uniform(*CROP_SCALE)
        size = (max(8, round(crop.width * scale)), max(8, round(crop.height * scale)))
        crop = crop.resize(size, Image.BILINEAR)
        name = f"{job.index:05d}_{index:02d}.jpg"
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=90)
        (Path(staging) / "crops" / name).write_bytes(buf.getvalue())
        crops.append({"staged": name, "object": index, "cls": obj.cls, "condition": obj.condition,
                      "pad": round(float(pad), 4), "scale": round(float(scale), 4), "crop_box": list(box)})
    return job, split, objects, crops


def _coco(records: list[tuple[FrameJob, list[PlacedObject]]], dup_names: set[str], seed: int) -> tuple[dict, dict]:
    """One split's COCO file and the annotation id of every (frame, object index)."""
    cat_id = {name: i + 1 for i, (name, _) in enumerate(DET_CATEGORIES)}
    images, annotations, ann_of = [], [], {}
    rng = np.random.default_rng([seed, 13])

    def add(image_id: int, obj: PlacedObject, jitter: int) -> int:
        x0, y0, x1, y1 = obj.box
        d = [int(v) for v in rng.integers(-jitter, jitter + 1, 4)] if jitter else [0, 0, 0, 0]
        w, h = max(1, x1 - x0 + d[2]), max(1, y1 - y0 + d[3])
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id[CLASS_TO_DET[obj.cls]],
                            "bbox": [float(x0 + d[0]), float(y0 + d[1]), float(w), float(h)],
                            "area": float(w * h), "iscrowd": 0, "segmentation": []})
        return len(annotations)

    for job, objects in records:
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": job.name, "width": job.width, "height": job.height})
        for index, obj in enumerate(objects):
            ann_of[(job.name, index)] = add(image_id, obj, 0)
    for job, objects in records:            # the release's quirk: a second record, other boxes
        if job.name in dup_names:
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": job.name, "width": job.width, "height": job.height})
            for obj in objects[:-1] or objects:
                add(image_id, obj, 6)
    doc = {"info": {"description": "SYNTHETIC InsPLAD-det-shaped frames generated by insplad synth", "version": "1.0"},
           "licenses": [], "images": images, "annotations": annotations,
           "categories": [{"id": cat_id[n], "name": n, "supercategory": s} for n, s in DET_CATEGORIES]}
    return doc, ann_of


def generate_released(raw_dir: str | Path, config: SynthConfig, *, overwrite: bool = False) -> SynthSummary:
    """Write ``RAW/InsPLAD-det``, ``RAW/InsPLAD-fault`` and ``RAW/truth.json`` (atomically)."""
    config = dataclasses.replace(config, roboflow=False)
    config.check()
    raw_dir = Path(raw_dir)
    start = time.perf_counter()
    named = _rename(plan(config), config.seed)
    with atomic_output_dir(raw_dir, overwrite=overwrite, command="insplad synth") as tmp:
        staging = tmp / ".staging"
        (staging / "frames").mkdir(parents=True)
        (staging / "crops").mkdir()
        tasks = [(job, split, str(staging)) for job, split in named]
        results = []
        bar = tqdm(total=len(tasks), desc="synth", unit="frame", disable=not config.progress)
        if config.jobs > 1 and len(tasks) > 1:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            with ctx.Pool(min(config.jobs, len(tasks)), initializer=worker_signals) as pool:
                for res in pool.imap(_render_one, tasks, chunksize=2):
                    results.append(res)
                    bar.update()
        else:
            for task in tasks:
                results.append(_render_one(task))
                bar.update()
        bar.close()

        det = tmp / DET_DIR
        (det / "annotations").mkdir(parents=True)
        rng = np.random.default_rng([config.seed, 17])
        train_names = [job.name for job, split, _, _ in results if split == "train"]
        n_dup = int(round(DUPLICATE_SHARE * len(train_names))) or (1 if len(train_names) >= 4 else 0)
        dup_names = {train_names[int(i)] for i in rng.choice(len(train_names), size=n_dup, replace=False)} if n_dup else set()
        ann_ids: dict[tuple[str, int], tuple[str, int]] = {}
        for split in ("train", "val"):
            records = [(job, objects) for job, s, objects, _ in results if s == split]
            (det / split).mkdir()
            for job, _ in records:
                (staging / "frames" / job.name).rename(det / split / job.name)
            doc, ann_of = _coco(records, dup_names if split == "train" else set(), config.seed)
            (det / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
            ann_ids.update({k: (split, v) for k, v in ann_of.items()})

        fault = tmp / FAULT_DIR
        counters: dict[str, int] = {}
        truth_crops = {}
        placed = []
        for job, split, _, crops in results:
            for crop in crops:
                cond = CONDITION_FOLDER[crop["condition"]]
                if cond == "good":
                    side = "test/good" if rng.random() < OFFICIAL_TEST_SHARE else "train/good"
                else:
                    side = f"test/{cond}"
                placed.append([job, crop, side])
        for cls in sorted({crop["cls"] for _, crop, _ in placed}):   # every asset gets train and test good
            goods = [p for p in placed if p[1]["cls"] == cls and p[2].endswith("good")]
            for want in ("test/good", "train/good"):
                if len(goods) >= 2 and not any(p[2] == want for p in goods):
                    goods[-1 if want == "test/good" else 0][2] = want
        for job, crop, side in placed:
            counters[crop["cls"]] = counters.get(crop["cls"], 0) + 1
            rel = f"{crop['cls']}/{side}/{counters[crop['cls']]:05d}.jpg"
            (fault / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / "crops" / crop["staged"]).rename(fault / rel)
            det_split, ann = ann_ids[(job.name, crop["object"])]
            truth_crops[rel] = {"frame": job.name, "det_split": det_split, "annotation_id": ann,
                                "duplicate_name": job.name in dup_names, "condition": crop["condition"],
                                "pad": crop["pad"], "scale": crop["scale"], "crop_box": crop["crop_box"]}
        shutil.rmtree(staging)
        truth = {"format": "insplad-synth-released-truth/1", "synthetic": True, "settings": config.settings(),
                 "duplicate_names": sorted(dup_names), "crops": dict(sorted(truth_crops.items()))}
        (tmp / "truth.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
        (tmp / "README.txt").write_text(
            "SYNTHETIC data generated by `insplad synth --layout insplad-det` -- NOT real InsPLAD images.\n"
            "InsPLAD-det/: frames + per-split COCO files without conditions (the release's shape).\n"
            "InsPLAD-fault/: released-style crops sorted by condition.\ntruth.json: the source of every crop.\n",
            encoding="utf-8")
    summary_records = [_Rec(job, objects) for job, _, objects, _ in results]
    return _summarise(raw_dir, config, summary_records, time.perf_counter() - start)  # type: ignore[arg-type]


@dataclasses.dataclass
class _Rec:
    job: FrameJob
    objects: list[PlacedObject]
