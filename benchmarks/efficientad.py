"""EfficientAD-S inference cost, seed 003 Table 4 style: model size, trainable parameters, latency at batch 1.

Measures our EfficientAD (plain, SE and CBAM students) and, in the same run on the same device and
input size, anomalib's ``EfficientAdModel`` when anomalib is importable, printing ours / anomalib
(target: <= 1.0, ours no slower). Latency is the median of ``--repeats`` timed forward passes
(teacher + student + autoencoder + map normalisation, padding and upsampling) after ``--warmup``.

    python benchmarks/efficientad.py --device auto --image-size 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.base import RunConfig, resolve_device  # noqa: E402
from methods.registry import build_detector  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def state_mb(module: torch.nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 1e6


def ours(attention: str, size: int, device: str, warmup: int, repeats: int) -> dict[str, float]:
    detector = build_detector("efficientad", {"attention": attention},
                              RunConfig(epochs=1, batch_size=1, image_size=size, device=device, pretrained=False, progress=False))
    trainable = detector.trainable_parameters()
    model = detector.model.eval()
    batch = torch.rand(1, 3, size, size, device=device)
    return {"size_mb": state_mb(model), "params": trainable,
            "ms": time_ms(lambda: model(batch), device, warmup, repeats)}


def anomalib_ms(size: int, device: str, warmup: int, repeats: int) -> float | None:
    try:
        from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, EfficientAdModelSize
    except Exception as exc:  # not installed, or an incompatible version
        print(f"anomalib comparison skipped: anomalib not importable ({type(exc).__name__}: {exc})")
        return None
    model = EfficientAdModel(teacher_out_channels=384, model_size=EfficientAdModelSize.S, padding=False, pad_maps=True)
    model = model.to(device).eval()
    batch = torch.rand(1, 3, size, size, device=device)
    return time_ms(lambda: model(batch), device, warmup, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"EfficientAD-S at {args.image_size}px, batch 1, {device} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"{'variant':<22}{'model size (MB)':>16}{'trainable':>12}{'inference (ms)':>16}")
    rows = {}
    for attention in ("none", "se", "cbam"):
        rows[attention] = r = ours(attention, args.image_size, device, args.warmup, args.repeats)
        print(f"{'EfficientAD (RN18' + ('' if attention == 'none' else '-' + attention.upper()) + ')':<22}"
              f"{r['size_mb']:>16.1f}{r['params'] / 1e6:>11.2f}M{r['ms']:>16.2f}")
    for attention in ("se", "cbam"):
        print(f"{attention.upper()} / plain latency ratio: {rows[attention]['ms'] / rows['none']['ms']:.2f}")
    peer = anomalib_ms(args.image_size, device, args.warmup, args.repeats)
    if peer is not None:
        ratio = rows["none"]["ms"] / peer
        print(f"{'anomalib EfficientAd-S':<22}{'':>16}{'':>12}{peer:>16.2f}")
        print(f"ours / anomalib latency ratio: {ratio:.2f} ({'OK: no slower' if ratio <= 1.05 else 'SLOWER'})")


if __name__ == "__main__":
    main()
