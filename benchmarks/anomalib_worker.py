"""The anomalib side of ``benchmarks/anomalib_compare.py``: run in anomalib's own environment, never ours.

Reads a JSON job (method, data folder, image size, epochs, batch size, seed, optional shared
backbone weights), trains the anomalib model through anomalib's ``Folder`` datamodule and
``Engine`` (Lightning), predicts the test images and writes an ``.npz`` of raw scores and maps with
the timings. It imports nothing from this project, so anomalib stays out of the project's
dependencies; numbers cross the process boundary as arrays only.

    /work/venv-anomalib/bin/python benchmarks/anomalib_worker.py JOB.json OUT.npz
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch


def build_model(job: dict[str, Any]):
    """The anomalib Lightning module for ``job["method"]`` with the settings our side uses."""
    from anomalib import models

    size = (job["image_size"], job["image_size"])
    method, extra = job["method"], job.get("anomalib_options", {})
    common: dict[str, Any] = {"evaluator": False, "visualizer": False, "post_processor": False}
    if method == "padim":
        cls = models.Padim
        kwargs = {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"], "pre_trained": False,
                  "n_features": 100}
    elif method == "rdpp":
        cls = models.ReverseDistillation
        kwargs = {"backbone": "resnet18", "layers": ("layer1", "layer2", "layer3"), "pre_trained": False}
    elif method == "fastflow":
        cls = models.Fastflow
        kwargs = {"backbone": "resnet18", "pre_trained": False}
    elif method == "cflow":
        cls = models.Cflow
        kwargs = {"backbone": "resnet18", "layers": ("layer2", "layer3", "layer4"), "pre_trained": False}
    elif method == "csflow":
        cls = models.Csflow
        kwargs = {}
    else:
        raise SystemExit(f"unknown method {method!r}")
    kwargs.update(extra)
    return cls(pre_processor=cls.configure_pre_processor(size), **common, **kwargs)


def inject_weights(model: torch.nn.Module, path: str) -> int:
    """Load a torchvision-named ResNet state dict into every ResNet trunk inside ``model``; tensors loaded."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    loaded, done = 0, set()
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in done):
            continue
        own = module.state_dict()
        if "conv1.weight" in own and "layer1.0.conv1.weight" in own:
            match = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
            module.load_state_dict(match, strict=False)
            loaded += len(match)
            done.add(name)
    return loaded


def use_efficientnet_b5_weights(path: str) -> int:
    """Make anomalib's CS-Flow build its EfficientNet-B5 from ``path`` instead of downloading ImageNet
    weights (this machine is offline); returns the number of tensors loaded."""
    import torchvision.models
    from anomalib.models.image.csflow import torch_model

    state = torch.load(path, map_location="cpu", weights_only=True)

    def efficientnet_b5(weights: Any = None, **kwargs: Any) -> torch.nn.Module:
        model = torchvision.models.efficientnet_b5(weights=None, **kwargs)
        model.load_state_dict(state)
        return model

    torch_model.efficientnet_b5 = efficientnet_b5
    return len(state)


def optimised_parameters(model) -> int:
    """Parameters anomalib's ``configure_optimizers`` hands to an optimiser (frozen extractors excluded)."""
    found = model.configure_optimizers()
    if isinstance(found, dict):
        found = found.get("optimizer")
    if isinstance(found, tuple):
        found = found[0]
    optimisers = found if isinstance(found, list) else [found] if found is not None else []
    seen: dict[int, int] = {}
    for opt in optimisers:
        opt = opt.get("optimizer", opt) if isinstance(opt, dict) else opt
        for group in getattr(opt, "param_groups", []):
            for p in group["params"]:
                seen[id(p)] = p.numel()
    return sum(seen.values())


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    warnings.filterwarnings("ignore")
    torch.set_num_threads(job.get("threads", torch.get_num_threads()))
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(job["seed"], workers=True)
    root = Path(job["category_root"])
    defects = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name != "good")
    datamodule = Folder(name=root.name, root=root, normal_dir="train/good", normal_test_dir="test/good",
                        abnormal_dir=[f"test/{d}" for d in defects], train_batch_size=job["batch_size"],
                        eval_batch_size=job["batch_size"], num_workers=0, val_split_mode="none",
                        extensions=(".png", ".jpg", ".jpeg"), seed=job["seed"])
    if job["method"] == "csflow" and job.get("weights"):
        loaded = use_efficientnet_b5_weights(job["weights"])
        model = build_model(job)
    else:
        model = build_model(job)
        loaded = inject_weights(model, job["weights"]) if job.get("weights") else 0
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(max_epochs=job["epochs"], accelerator=job["device"], devices=1, logger=False,
                        default_root_dir=tmp, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0)
        datamodule.setup()
        n_train = len(datamodule.train_data)
        start, cpu = time.perf_counter(), time.process_time()
        engine.fit(model=model, datamodule=datamodule)
        train_s, train_cpu = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        batches = engine.predict(model=model, dataloaders=datamodule.test_dataloader(), return_predictions=True)
        predict_s, predict_cpu = time.perf_counter() - start, time.process_time() - cpu
    paths, scores, maps = [], [], []
    for batch in batches or []:
        paths.extend(str(p) for p in batch.image_path)
        scores.extend(batch.pred_score.detach().float().cpu().reshape(-1).tolist())
        maps.extend(batch.anomaly_map.detach().float().cpu().reshape(len(batch.image_path), *batch.anomaly_map.shape[-2:]).numpy())
    trainable = optimised_parameters(model)
    np.savez(out, paths=np.array(paths), scores=np.array(scores, dtype=np.float64), maps=np.stack(maps).astype(np.float32),
             train_s=train_s, predict_s=predict_s, train_cpu=train_cpu, predict_cpu=predict_cpu, n_train=n_train, epochs=job["epochs"], loaded=loaded,
             trainable=trainable)
    print(json.dumps({"train_s": train_s, "predict_s": predict_s, "n_train": n_train, "n_test": len(paths),
                      "weights_tensors_loaded": loaded, "trainable": trainable}))


if __name__ == "__main__":
    main()
