"""Our implementation next to anomalib's, on the same synthetic InsPLAD-seg data: quality and speed.

For ``--method`` in fastflow, cflow, csflow, rdpp, padim this trains ours (main environment) and
anomalib's (a separate environment, ``--anomalib-python``, through ``benchmarks/anomalib_worker.py``;
anomalib is never a dependency of this project) on each ``--categories`` x ``--seeds``, with the same
images, image size, epochs, batch size, device and thread count, one after the other. Both sides'
predictions are scored by **our** ``leaderboard.metrics`` (image AUROC, exact AUPRO at FPR 0.3), so
the metric is identical; speed is end-to-end images/s from files (train: images x epochs / fit
time; inference: test images / predict time), reported as ours / anomalib. Each side runs in a
fresh process per (category, seed), so both pay their own start-up.

ImageNet weights are not used (offline machines): both sides load the *same* seeded random backbone
(ResNet-18, or EfficientNet-B5 for CS-Flow; BatchNorm statistics estimated on the category's train
images) from one file, so the teacher/feature extractor is identical; methods given another
``--option backbone=`` start from each library's own random init.

Targets (issue 12): quality within noise of anomalib's, here ``--tolerance`` (default 0.05 absolute
on the mean over categories x seeds of image AUROC and AUPRO), speed ratio >= 1.0.

    python benchmarks/anomalib_compare.py --method padim --image-size 128 --seeds 0,1
    python benchmarks/anomalib_compare.py --method rdpp --epochs 5 --option projection=false

Without ``--data`` the synthetic set is built once under ``--workdir`` with ``insplad synth``
(60 frames, seed 0) and ``insplad build-splits --masks`` (InsPLAD-seg layout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from insplad_tools.mvtec import read_category  # noqa: E402
from leaderboard.metrics import aupro, image_auroc  # noqa: E402
from leaderboard.resize import resize_bilinear  # noqa: E402
from methods.base import RunConfig, resolve_device, seed_everything  # noqa: E402
from methods.registry import build_detector, get_method  # noqa: E402

WORKER = Path(__file__).with_name("anomalib_worker.py")
METHODS = ("fastflow", "cflow", "csflow", "rdpp", "padim")
DEFAULT_EPOCHS = {"padim": 1, "rdpp": 5, "fastflow": 5, "cflow": 2, "csflow": 5}


def ensure_data(workdir: Path) -> Path:
    """A synthetic InsPLAD-seg set under ``workdir`` (built once with the project's CLI)."""
    data = workdir / "data-seg"
    if (data / "manifest.json").is_file():
        return data
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["insplad", "synth", str(workdir / "raw"), "--frames", "60", "--seed", "0"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["insplad", "build-splits", str(workdir / "raw"), str(data), "--masks", str(workdir / "raw" / "roboflow"),
                    "--seed", "0", "--group-by", "frame"], check=True, stdout=subprocess.DEVNULL)
    return data


def shared_resnet18(category, size: int, seed: int, path: Path) -> Path:
    """A seeded random ResNet-18 (torchvision names) with BatchNorm statistics of the train images."""
    from torchvision.models import resnet18

    from methods.backbones.resnet import ResNet18Features
    from methods.data import load_images_uint8
    from methods.simplenet.detector import calibrate_batchnorm

    if path.is_file():
        return path
    torch.manual_seed(seed)
    reference = resnet18()
    trunk = ResNet18Features("none", "layer4")
    trunk.load_pretrained(reference.state_dict())
    images = load_images_uint8([s.path for s in category.train], size)
    calibrate_batchnorm(trunk, images, 8, torch.device("cpu"))
    state = reference.state_dict()
    state.update({k: v for k, v in trunk.state_dict().items() if k in state})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def shared_efficientnet_b5(category, size: int, seed: int, path: Path) -> Path:
    """A seeded random torchvision EfficientNet-B5 whose trunk BatchNorms carry the train images' statistics.

    CS-Flow's extractor on both sides (ours: ``--weights``; anomalib's: patched in by the worker in place
    of the ImageNet download), so the frozen features are identical.
    """
    from torchvision.models import efficientnet_b5

    from methods.csflow.model import EfficientNetB5Features
    from methods.data import load_images_uint8
    from methods.simplenet.detector import calibrate_batchnorm

    if path.is_file():
        return path
    torch.manual_seed(seed)
    reference = efficientnet_b5(weights=None)
    trunk = EfficientNetB5Features()
    trunk.load_state_dict({k: v for k, v in reference.state_dict().items() if k in trunk.state_dict()})
    images = load_images_uint8([s.path for s in category.train], size)
    calibrate_batchnorm(trunk, images, 8, torch.device("cpu"), layers=("block35",))
    state = reference.state_dict()
    state.update(trunk.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def masks_of(category, size: int) -> dict[str, np.ndarray]:
    out = {}
    for s in category.test:
        if s.mask_path is None:
            with Image.open(s.path) as img:
                out[str(Path(s.path).resolve())] = np.zeros(img.size[::-1], bool)
        else:
            out[str(Path(s.path).resolve())] = np.asarray(Image.open(s.mask_path).convert("L")) > 0
    return out


def score(category, paths: list[str], scores: list[float], maps: list[np.ndarray]) -> dict[str, float]:
    """Our metrics on predictions keyed by resolved path (every test image exactly once)."""
    by_path = {str(Path(p).resolve()): (s, m) for p, s, m in zip(paths, scores, maps)}
    keys = [str(Path(s.path).resolve()) for s in category.test]
    missing = [k for k in keys if k not in by_path]
    if missing:
        raise SystemExit(f"{len(missing)} test images without a prediction, e.g. {missing[0]}")
    labels = [s.label for s in category.test]
    masks = masks_of(category, 0)
    return {"image_auroc": image_auroc(labels, [by_path[k][0] for k in keys]),
            "aupro": aupro([masks[k] for k in keys], [resize_bilinear(np.asarray(by_path[k][1], np.float32), masks[k].shape)
                                                      for k in keys])}


def run_ours(method: str, options: dict[str, str], category, args, seed: int, weights: Path | None) -> dict[str, Any]:
    run = RunConfig(epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size, device=args.device,
                    seed=seed, pretrained=weights is not None, weights=str(weights) if weights else None,
                    progress=False)
    seed_everything(seed)
    detector = build_detector(method, dict(options), run)
    train = [s.path for s in category.train]
    test = [s.path for s in category.test]
    start, cpu = time.perf_counter(), time.process_time()
    detector.fit(train)
    train_s, train_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    results = detector.predict(test)
    predict_s, predict_cpu = time.perf_counter() - start, time.process_time() - cpu
    metrics = score(category, [str(p) for p in test], [r.score for r in results], [r.map for r in results])
    return {**metrics, "train_ips": len(train) * args.epochs / train_s, "infer_ips": len(test) / predict_s,
            "train_cpu_ips": len(train) * args.epochs / train_cpu, "infer_cpu_ips": len(test) / predict_cpu,
            "trainable": detector.trainable_parameters()}


def run_ours_fresh(method: str, options: dict[str, str], data: Path, name: str, args, seed: int,
                   weights: Path | None) -> dict[str, Any]:
    """:func:`run_ours` in a fresh Python process, as the anomalib side runs: both pay their start-up."""
    job = {"method": method, "options": options, "data": str(data), "category": name, "seed": seed,
           "weights": str(weights) if weights else None,
           "args": {k: getattr(args, k) for k in ("epochs", "batch_size", "image_size", "device", "threads")}}
    done = subprocess.run([sys.executable, __file__, "--ours-job", json.dumps(job)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"our side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ours_job(text: str) -> None:
    job = json.loads(text)
    args = argparse.Namespace(**job["args"])
    torch.set_num_threads(args.threads)
    category = read_category(Path(job["data"]), job["category"])
    weights = Path(job["weights"]) if job["weights"] else None
    print(json.dumps(run_ours(job["method"], job["options"], category, args, job["seed"], weights)))


def run_anomalib(method: str, category_root: Path, category, args, seed: int, weights: Path | None,
                 backbone: str | None) -> dict[str, Any]:
    job = {"method": method, "category_root": str(category_root), "image_size": args.image_size,
           "epochs": args.epochs, "batch_size": args.batch_size, "seed": seed, "device": args.device,
           "threads": args.threads, "weights": str(weights) if weights else None,
           "anomalib_options": json.loads(args.anomalib_options)}
    if backbone and method in ("padim", "rdpp", "fastflow", "cflow"):
        job["anomalib_options"].setdefault("backbone", backbone)
    tmp = Path(args.workdir) / "jobs"
    tmp.mkdir(parents=True, exist_ok=True)
    job_path, out_path = tmp / f"{method}-{category_root.name}-{seed}.json", tmp / f"{method}-{category_root.name}-{seed}.npz"
    job_path.write_text(json.dumps(job))
    done = subprocess.run([args.anomalib_python, str(WORKER), str(job_path), str(out_path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"anomalib worker failed:\n{done.stderr[-3000:]}")
    res = np.load(out_path)
    metrics = score(category, [str(p) for p in res["paths"]], res["scores"].tolist(), list(res["maps"]))
    return {**metrics, "train_ips": int(res["n_train"]) * args.epochs / float(res["train_s"]),
            "infer_ips": len(res["paths"]) / float(res["predict_s"]), "trainable": int(res["trainable"]),
            "train_cpu_ips": int(res["n_train"]) * args.epochs / float(res["train_cpu"]),
            "infer_cpu_ips": len(res["paths"]) / float(res["predict_cpu"]),
            "weights_loaded": int(res["loaded"])}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--ours-job":
        _ours_job(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--data", type=Path, default=None, help="InsPLAD-seg-layout root (default: build a synthetic one)")
    parser.add_argument("--workdir", type=Path, default=Path("anomalib-compare"))
    parser.add_argument("--categories", default="glass_insulator,vari_grip")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=None, help="default: padim 1, cflow 2, others 5")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument("--option", action="append", default=[], help="KEY=VALUE for our method (repeatable)")
    parser.add_argument("--anomalib-options", default="{}", help="JSON of extra anomalib model arguments")
    parser.add_argument("--anomalib-python", default="/work/venv-anomalib/bin/python")
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args()
    args.device = resolve_device(args.device)
    args.epochs = args.epochs or DEFAULT_EPOCHS[args.method]
    torch.set_num_threads(args.threads)
    options = dict(kv.split("=", 1) for kv in args.option)
    data = args.data or ensure_data(args.workdir)
    backbone = options.get("backbone", get_method(args.method).Options().backbone)
    shares_weights = ((args.method in ("padim", "rdpp", "fastflow", "cflow") and backbone == "resnet18")
                      or (args.method == "csflow" and backbone == "efficientnet_b5"))
    print(f"method {args.method} | data {data} | {args.image_size} px | {args.epochs} epoch(s) | batch "
          f"{args.batch_size} | {args.device}, {args.threads} threads | seeds {args.seeds} | ours options {options} | "
          f"anomalib options {args.anomalib_options} | backbone: "
          + ("the same seeded random backbone on both sides" if shares_weights else "each side's own random init"))
    rows = []
    header = (f"{'category':<26}{'seed':>5} | {'AUROC ours':>10}{'anomalib':>9} | {'AUPRO ours':>10}{'anomalib':>9} | "
              f"{'train img/s ours':>16}{'anomalib':>9}{'ratio':>7} | {'infer img/s ours':>16}{'anomalib':>9}{'ratio':>7}")
    print(header)
    for name in args.categories.split(","):
        category = read_category(data, name)
        for seed in (int(s) for s in args.seeds.split(",")):
            share = shared_efficientnet_b5 if args.method == "csflow" else shared_resnet18
            weights = (share(category, args.image_size, seed, Path(args.workdir) / "weights" /
                             f"{share.__name__.removeprefix('shared_')}-{name}-{args.image_size}-{seed}.pt")
                       if shares_weights else None)
            ours = run_ours_fresh(args.method, options, data, name, args, seed, weights)
            theirs = run_anomalib(args.method, Path(data) / name, category, args, seed, weights,
                                  backbone if "backbone" in options else None)
            if weights is not None and theirs["weights_loaded"] == 0:
                raise SystemExit("anomalib side did not take the shared ResNet-18 weights")
            rows.append((ours, theirs))
            print(f"{name:<26}{seed:>5} | {ours['image_auroc']:>10.3f}{theirs['image_auroc']:>9.3f} | "
                  f"{ours['aupro']:>10.3f}{theirs['aupro']:>9.3f} | {ours['train_ips']:>16.2f}{theirs['train_ips']:>9.2f}"
                  f"{ours['train_ips'] / theirs['train_ips']:>7.2f} | {ours['infer_ips']:>16.2f}{theirs['infer_ips']:>9.2f}"
                  f"{ours['infer_ips'] / theirs['infer_ips']:>7.2f}", flush=True)

    def mean(side: int, key: str) -> float:
        return statistics.fmean(r[side][key] for r in rows)

    def ratio(key: str) -> float:  # geometric mean of per-run ratios
        return float(np.exp(np.mean([np.log(r[0][key] / r[1][key]) for r in rows])))

    print(f"trainable parameters: ours {rows[0][0]['trainable']:,} | anomalib {rows[0][1]['trainable']:,}")
    verdicts = []
    for key in ("image_auroc", "aupro"):
        diff = mean(0, key) - mean(1, key)
        ok = diff >= -args.tolerance
        verdicts.append(ok)
        print(f"mean {key}: ours {mean(0, key):.3f} | anomalib {mean(1, key):.3f} | ours - anomalib {diff:+.3f} "
              f"({'within' if abs(diff) <= args.tolerance else 'beyond'} ±{args.tolerance}) -> {'PASS' if ok else 'FAIL'}")
    for key, label in (("train_ips", "train"), ("infer_ips", "inference")):
        r = ratio(key)
        verdicts.append(r >= 1.0)
        print(f"{label} speed ours/anomalib: {r:.2f}x (geometric mean over runs; target >= 1.0) -> "
              f"{'PASS' if r >= 1.0 else 'FAIL'}")
    print(f"per CPU-second (process time, less sensitive to other load on the machine): train "
          f"{ratio('train_cpu_ips'):.2f}x, inference {ratio('infer_cpu_ips'):.2f}x")
    print("overall:", "PASS" if all(verdicts) else "FAIL")


if __name__ == "__main__":
    main()
