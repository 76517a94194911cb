"""DifferNet training speed: insplad's detector vs a re-creation of the original code's training loop.

The peer re-creates what ``marco-rudolph/differnet`` (``train.py``, ``utils.py``, ``model.py``,
``freia_funcs.py``) does per training step, written here from its description
(/work/shared/reference/methods.md §1), not copied:

* data: an ImageFolder-style dataset whose ``__getitem__`` opens the file with PIL (RGB) and applies the
  torchvision transform ``n_transforms`` times: ``Resize(S)``, ``RandomRotation(180)`` (nearest, black
  corners), ``ColorJitter`` when any jitter is non-zero (the original config: all 0), ``ToTensor``,
  ``Normalize``; a ``DataLoader`` with ``batch_size``, ``shuffle=True``, ``pin_memory=True`` and no worker
  processes (the original passes no ``num_workers``);
* model: torchvision AlexNet ``features`` recomputed every batch at 3 scales (nearest ``F.interpolate`` to
  S/2, S/4), spatial means concatenated, then 8 x (fixed random permutation + GLOW coupling with
  ``F_fully_connected`` subnets 2048-2048-2048, soft clamp 3, outputs clamped to +-1e6). AlexNet is not
  frozen (its gradients are computed and never used, as in the original);
* loss: ``get_loss(z, nf.jacobian(run_forward=False))``: the log-determinant comes from a second pass that
  re-runs every coupling's subnets on the inputs the forward pass cached; Adam on the flow only
  (lr 2e-4, betas (0.8, 0.8), eps 1e-4, weight decay 1e-5).

Ours is ``insplad``'s ``differnet`` detector (``Detector.setup`` once, then ``train_epoch``) with the same
image size, scales, flow width, batch size, rotations and jitter, on the same device and the same image
files. Both train one warm-up epoch, then one timed epoch over ``--train-images`` images; printed: train
images/s of each (an image = one training image under ``n_transforms`` rotations), ours' one-time decode
(``setup``) separately, and the ratio ours / original (issue 13 target: >= 2x on the same device).

    python benchmarks/differnet_original.py --device auto
    python benchmarks/differnet_original.py --device cpu --image-size 256 --batch-size 8 --train-images 16
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- the original's data path -----------------------------------------------------------------------
class MultiTransformFolder(torch.utils.data.Dataset):
    """The original's ``ImageFolderMultiTransform``: one file -> ``n_transforms`` transformed copies."""

    def __init__(self, paths: list[Path], transform, n_transforms: int) -> None:  # type: ignore[no-untyped-def]
        self.paths, self.transform, self.n_transforms = paths, transform, n_transforms

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with open(self.paths[index], "rb") as handle:
            image = Image.open(handle).convert("RGB")
        return torch.stack([self.transform(image) for _ in range(self.n_transforms)]), 0


def original_transform(size: int, brightness: float, contrast: float, saturation: float):  # type: ignore[no-untyped-def]
    from torchvision import transforms

    steps = [transforms.Resize((size, size)), transforms.RandomRotation(180)]
    if brightness or contrast or saturation:
        steps.append(transforms.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation))
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# -- the original's model -------------------------------------------------------------------------
class FullyConnected(nn.Module):
    """``F_fully_connected``: fc1 -> ReLU -> fc2 -> ReLU -> fc2b -> ReLU -> fc3 (dropout 0); its BatchNorm is built, never used."""

    def __init__(self, size_in: int, size_out: int, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(size_in, width), nn.Linear(width, width)
        self.fc2b, self.fc3 = nn.Linear(width, width), nn.Linear(width, size_out)
        self.bn = nn.BatchNorm1d(size_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2b(F.relu(self.fc2(F.relu(self.fc1(x)))))))


class GlowCoupling(nn.Module):
    """``glow_coupling_layer``: y1 = e(s2) x1 + t2, y2 = e(s1) x2 + t1; e = exp of the atan soft clamp."""

    def __init__(self, dims: int, width: int, clamp: float) -> None:
        super().__init__()
        self.len1, self.len2 = dims // 2, dims - dims // 2
        self.clamp = clamp
        self.s1 = FullyConnected(self.len1, 2 * self.len2, width)
        self.s2 = FullyConnected(self.len2, 2 * self.len1, width)

    def log_e(self, s: torch.Tensor) -> torch.Tensor:
        return self.clamp * 0.636 * torch.atan(s / self.clamp)

    def _half(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, :self.len1], x[:, self.len1:]
        r2 = self.s2(x2)
        s2, t2 = r2[:, :self.len1], r2[:, self.len1:]
        y1 = torch.exp(self.log_e(s2)) * x1 + t2
        r1 = self.s1(y1)
        return x2, y1, s2, r1[:, :self.len2], r1[:, self.len2:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, y1, _, s1, t1 = self._half(x)
        y2 = torch.exp(self.log_e(s1)) * x2 + t1
        return torch.clamp(torch.cat((y1, y2), 1), -1e6, 1e6)

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        _, _, s2, s1, _ = self._half(x)  # the subnets run again, as in the original
        return self.log_e(s1).sum(dim=1) + self.log_e(s2).sum(dim=1)


class OriginalFlow(nn.Module):
    """The ``ReversibleGraphNet`` chain: permute (numpy seed k) -> coupling, k = 0..blocks-1; ``jacobian(run_forward=False)``
    evaluates each coupling's log-determinant on the inputs cached by the last forward pass."""

    def __init__(self, dims: int, blocks: int, width: int, clamp: float) -> None:
        super().__init__()
        perms, state = [], np.random.get_state()
        for k in range(blocks):
            np.random.seed(k)
            perms.append(torch.from_numpy(np.random.permutation(dims)))
        np.random.set_state(state)
        self.register_buffer("perms", torch.stack(perms))
        self.couplings = nn.ModuleList(GlowCoupling(dims, width, clamp) for _ in range(blocks))
        self.cached: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.cached = []
        for perm, coupling in zip(self.perms, self.couplings):
            x = x[:, perm]
            self.cached.append(x)
            x = coupling(x)
        return x

    def jacobian(self, run_forward: bool = False) -> torch.Tensor:
        assert not run_forward and self.cached, "forward first (the original calls jacobian(run_forward=False))"
        return sum(coupling.jacobian(x) for coupling, x in zip(self.couplings, self.cached))


class OriginalDifferNet(nn.Module):
    def __init__(self, size: int, n_scales: int, width: int, blocks: int = 8, clamp: float = 3.0) -> None:
        super().__init__()
        from torchvision.models import alexnet

        self.feature_extractor = alexnet(weights=None)  # pretrained in the original; same cost
        self.nf = OriginalFlow(256 * n_scales, blocks, width, clamp)
        self.size, self.n_scales = size, n_scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for s in range(self.n_scales):
            xs = F.interpolate(x, size=self.size // 2**s) if s > 0 else x
            pooled.append(torch.mean(self.feature_extractor.features(xs), dim=(2, 3)))
        return self.nf(torch.cat(pooled, dim=1))


def original_epoch(model: OriginalDifferNet, optimizer: torch.optim.Optimizer, loader, device: str) -> float:  # type: ignore[no-untyped-def]
    """One pass of the original ``train.py`` sub-epoch loop; returns the mean loss."""
    model.train()
    losses = []
    for inputs, _ in loader:
        optimizer.zero_grad()
        inputs = inputs.to(device).view(-1, *inputs.shape[-3:])
        z = model(inputs)
        jac = model.nf.jacobian(run_forward=False)
        loss = torch.mean(0.5 * torch.sum(z**2, dim=(1,)) - jac) / z.shape[1]
        losses.append(float(loss.detach().cpu()))
        loss.backward()
        optimizer.step()
    return float(np.mean(losses))


# -- the measurement ------------------------------------------------------------------------------
def write_images(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` smooth random 640x480 JPEGs (an InsPLAD-like crop size, decoded at full cost)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((640, 480), Image.BICUBIC)
        noise = rng.integers(-12, 13, (480, 640, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8))
        path = folder / f"{i:04d}.jpg"
        image.save(path, quality=92)
        paths.append(path)
    return paths


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_original(paths: list[Path], args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    transform = original_transform(args.image_size, args.brightness, args.contrast, args.saturation)
    dataset = MultiTransformFolder(paths, transform, args.n_transforms)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=False,
                                         pin_memory=args.device.startswith("cuda"))
    model = OriginalDifferNet(args.image_size, args.n_scales, args.flow_width).to(args.device)
    optimizer = torch.optim.Adam(model.nf.parameters(), lr=2e-4, betas=(0.8, 0.8), eps=1e-4, weight_decay=1e-5)
    original_epoch(model, optimizer, loader, args.device)  # warm-up
    _sync(args.device)
    start, start_cpu = time.perf_counter(), time.process_time()
    loss = original_epoch(model, optimizer, loader, args.device)
    _sync(args.device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"ips": len(paths) / seconds, "seconds": seconds, "cpu_ips": len(paths) / cpu, "loss": loss}


def measure_ours(paths: list[Path], args: argparse.Namespace, precision: str) -> dict[str, float | str]:
    from methods.base import RunConfig, seed_everything
    from methods.registry import build_detector

    seed_everything(0)
    options = {"n_scales": args.n_scales, "flow_width": args.flow_width, "n_transforms": args.n_transforms,
               "rotation": 180.0, "brightness": args.brightness, "contrast": args.contrast,
               "saturation": args.saturation}
    run = RunConfig(epochs=2, batch_size=args.batch_size, image_size=args.image_size, device=args.device,
                    pretrained=False, progress=False, precision=precision)
    detector = build_detector("differnet", options, run)
    start = time.perf_counter()
    detector.setup(paths)  # decodes every image once (the cache every later epoch reads)
    setup_s = time.perf_counter() - start
    from methods.precision import autocast

    with autocast(detector.device, detector.precision):  # as Detector.fit runs train_epoch
        detector.train_epoch(0)  # warm-up
        _sync(args.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        logs = detector.train_epoch(1)
        _sync(args.device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"ips": len(paths) / seconds, "seconds": seconds, "cpu_ips": len(paths) / cpu, "setup_s": setup_s,
            "loss": logs["loss"], "precision": detector.precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (both sides run there)")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--n-scales", type=int, default=3)
    parser.add_argument("--flow-width", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--n-transforms", type=int, default=4)
    parser.add_argument("--brightness", type=float, default=0.0)
    parser.add_argument("--contrast", type=float, default=0.0)
    parser.add_argument("--saturation", type=float, default=0.0)
    parser.add_argument("--train-images", type=int, default=96)
    parser.add_argument("--precision", default="auto",
                        help="ours' --precision, or several comma-separated, each measured (the original is fp32)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    from methods.base import resolve_device

    try:
        args.device = resolve_device(args.device)
    except Exception as exc:  # InspladError: one line
        raise SystemExit(f"differnet_original.py: {exc}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp) / "train", args.train_images, 0)
        print(f"DifferNet training on {args.device} ({name}), {args.train_images} images 640x480 JPEG -> "
              f"{args.image_size}px x {args.n_scales} scales, flow width {args.flow_width}, batch {args.batch_size} x "
              f"{args.n_transforms} rotations, torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
              flush=True)
        peer = measure_original(paths, args)
        print(f"original loop  {peer['ips']:8.2f} train img/s  ({peer['seconds']:.2f} s/epoch, fp32, loss {peer['loss']:.3f})",
              flush=True)
        runs = []
        for precision in dict.fromkeys(args.precision.split(",")):
            ours = measure_ours(paths, args, precision)
            runs.append(ours)
            print(f"insplad        {ours['ips']:8.2f} train img/s  ({ours['seconds']:.2f} s/epoch, {ours['precision']}, "
                  f"loss {ours['loss']:.3f}; one-time decode in setup {ours['setup_s']:.2f} s)", flush=True)
    for ours in runs:
        ratio = ours["ips"] / peer["ips"]
        verdict = "met" if ratio >= 2.0 else "NOT met"
        cpu_note = "" if args.device.startswith("cuda") else \
            f"; per CPU-second {ours['cpu_ips'] / peer['cpu_ips']:.2f}x (the fairer figure on a loaded machine)"
        print(f"ratio insplad ({ours['precision']}) / original (fp32) = {ratio:.2f}x train images/s "
              f"(target >= 2x: {verdict}){cpu_note}")
        if not math.isfinite(ratio):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
