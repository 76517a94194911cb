"""A tiny MVTec-AD-layout dataset drawn in numpy, for tests that need data but not the full synth.

Normal images: a grey textured ring (an "insulator disc") on a noisy background. Anomalies: a
bright square patch ("easy") or a faint one ("hard") whose pixels are the ground-truth mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _normal(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = size / 2 + rng.uniform(-2, 2), size / 2 + rng.uniform(-2, 2)
    r = np.hypot(yy - cy, xx - cx)
    ring = ((r > size * 0.18) & (r < size * 0.38)).astype(np.float32)
    base = 60 + 30 * rng.random((size, size)).astype(np.float32)
    img = base + ring * 110
    img = np.stack([img, img * 0.95, img * 0.9], axis=-1)
    img += rng.normal(0, 4, img.shape)
    return img


def make_toy_mvtec(root: Path, *, categories: tuple[str, ...] = ("disc",), size: int = 64, n_train: int = 12,
                   n_test_good: int = 6, n_test_bad: int = 6, defect: str = "spot", contrast: float = 140.0,
                   seed: int = 0) -> Path:
    """Write ROOT/<category>/{train/good,test/good,test/<defect>,ground_truth/<defect>} and return ROOT."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for cat in categories:
        for split, n in (("train", n_train), ("test", n_test_good)):
            folder = root / cat / split / "good"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.clip(_normal(rng, size), 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
        bad = root / cat / "test" / defect
        gt = root / cat / "ground_truth" / defect
        bad.mkdir(parents=True, exist_ok=True)
        gt.mkdir(parents=True, exist_ok=True)
        for i in range(n_test_bad):
            img = _normal(rng, size)
            s = max(4, size // 6)
            y, x = rng.integers(size // 5, size - size // 5 - s, size=2)
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[y:y + s, x:x + s] = 255
            img[mask > 0] += np.array([contrast, contrast * 0.4, -contrast * 0.3])
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(bad / f"{i:03d}.png")
            Image.fromarray(mask).save(gt / f"{i:03d}_mask.png")
    return root
