"""``insplad audit``: leakage between train and test of any MVTec-layout dataset (the official InsPLAD-fault too).

Per category, train images are compared with test images:

* ``exact``: identical decoded pixels on both sides;
* ``near``: perceptual hashes within ``hamming`` bits (a 64-bit DCT hash: 32x32 greyscale, the 8x8
  lowest frequencies against their median), i.e. the same object seen again - a neighbouring frame,
  a re-crop, a rescale;
* with provenance (``--provenance`` from ``insplad link-crops``, or the ``manifest.json`` that
  ``build-splits`` writes): ``frame`` and ``tower`` - the same source frame or the same tower on both
  sides. Towers come from InsPLAD-det names (``<tower>-<visit>_DJI_<n>``) or ``tower<N>`` names.

Duplicates inside one side are counted too (``duplicates``), but they are not leakage.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn
from tqdm import tqdm

from insplad_tools.dataset.imaging import pixel_digest, to_rgb8
from insplad_tools.dataset.split import Grouper
from insplad_tools.errors import InspladError
from insplad_tools.mvtec import MANIFEST, Sample, read_dataset

LEAK_KINDS = ("exact", "near", "frame", "tower")
MAX_EXAMPLES = 20
HASH_SIZE, HASH_LOW = 32, 8


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash (DCT of the 32x32 greyscale image, low 8x8 block against its median)."""
    grey = np.asarray(img.convert("L").resize((HASH_SIZE, HASH_SIZE), Image.BILINEAR), dtype=np.float64)
    low = dctn(grey, type=2, norm="ortho")[:HASH_LOW, :HASH_LOW].ravel()
    bits = low > np.median(low)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between every hash of ``a`` and every hash of ``b`` (uint64 arrays)."""
    x = a[:, None] ^ b[None, :]
    return np.bitwise_count(x).astype(np.int16)


@dataclass
class Pair:
    kind: str
    train: str
    test: str
    detail: str = ""


@dataclass
class CategoryAudit:
    category: str
    train: int
    test: int
    duplicates: int = 0                              # identical pixels inside one side
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in LEAK_KINDS})
    test_with_leak: int = 0                          # test images with any leak
    examples: list[Pair] = field(default_factory=list)


@dataclass
class AuditReport:
    dataset: str
    hamming: int
    provenance: str | None
    categories: list[CategoryAudit]

    @property
    def leaks(self) -> int:
        return sum(sum(c.counts.values()) for c in self.categories)

    def to_json(self) -> str:
        return json.dumps({"format": "insplad-audit/1", "dataset": self.dataset, "hamming": self.hamming,
                           "provenance": self.provenance, "leaks": self.leaks,
                           "categories": [asdict(c) for c in self.categories]}, indent=1, sort_keys=True)


def _provenance_from_csv(path: Path) -> dict[str, str]:
    """crop path -> source frame, from the matched rows of a link-crops provenance.csv."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"crop", "status", "frame"} - set(reader.fieldnames or [])
            if missing:
                raise InspladError(f"{path}: not a provenance CSV (missing column(s) {', '.join(sorted(missing))})")
            return {row["crop"]: row["frame"] for row in reader if row["status"] == "matched" and row["frame"]}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InspladError(f"{path}: cannot read provenance CSV ({exc})") from exc


def _provenance_from_manifest(root: Path) -> dict[str, str] | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InspladError(f"{path}: unreadable manifest ({exc})") from exc
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        return None
    return {f["path"]: f["frame"] for f in files if isinstance(f, dict) and isinstance(f.get("path"), str)
            and isinstance(f.get("frame"), str)}


def _describe(sample: Sample) -> tuple[str, int]:
    with Image.open(sample.path) as img:
        rgb = to_rgb8(img)
        return pixel_digest(rgb), phash(rgb)


def _leaks_by_source(kind: str, key_of: dict[str, str | None], train: list[Sample], test: list[Sample],
                     audit: CategoryAudit, leaky: set[str]) -> None:
    train_by: dict[str, list[str]] = defaultdict(list)
    for s in train:
        if (k := key_of.get(s.rel)) is not None:
            train_by[k].append(s.rel)
    for s in test:
        k = key_of.get(s.rel)
        if k is not None and k in train_by:
            audit.counts[kind] += 1
            leaky.add(s.rel)
            if len(audit.examples) < MAX_EXAMPLES:
                audit.examples.append(Pair(kind, train_by[k][0], s.rel, f"{kind} {k}"))


def audit_dataset(root: Path, *, provenance: Path | None = None, hamming: int = 6,
                  progress: bool = True) -> AuditReport:
    """Audit every category of the MVTec-layout dataset at ``root``."""
    root = Path(root)
    if not 0 <= hamming <= 32:
        raise InspladError(f"--hamming {hamming}: must be between 0 and 32 bits (of 64)")
    cats = read_dataset(root)
    frame_of: dict[str, str] | None
    source = None
    if provenance is not None:
        frame_of, source = _provenance_from_csv(provenance), Path(provenance).name
    else:
        frame_of = _provenance_from_manifest(root)
        source = MANIFEST if frame_of is not None else None
    tower = Grouper.create("tower")
    results = []
    total = sum(len(c.train) + len(c.test) for c in cats.values())
    bar = tqdm(total=total, desc="audit", unit="img", disable=not progress, leave=False)
    for name, cat in cats.items():
        audit = CategoryAudit(name, len(cat.train), len(cat.test))
        desc: dict[str, tuple[str, int]] = {}
        for s in cat.train + cat.test:
            try:
                desc[s.rel] = _describe(s)
            except (OSError, ValueError, SyntaxError) as exc:
                raise InspladError(f"{s.path}: cannot decode image ({exc})") from exc
            bar.update()
        leaky: set[str] = set()
        # exact duplicates (across and within sides)
        by_digest: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"train": [], "test": []})
        for s in cat.train + cat.test:
            by_digest[desc[s.rel][0]][s.split].append(s.rel)
        exact_pairs = set()
        for sides in by_digest.values():
            audit.duplicates += max(0, len(sides["train"]) - 1) + max(0, len(sides["test"]) - 1)
            for te in sides["test"]:
                if sides["train"]:
                    audit.counts["exact"] += 1
                    leaky.add(te)
                    exact_pairs.update((tr, te) for tr in sides["train"])
                    if len(audit.examples) < MAX_EXAMPLES:
                        audit.examples.append(Pair("exact", sides["train"][0], te, "identical pixels"))
        # near duplicates
        if cat.train and cat.test:
            a = np.array([desc[s.rel][1] for s in cat.train], dtype=np.uint64)
            b = np.array([desc[s.rel][1] for s in cat.test], dtype=np.uint64)
            dist = hamming_matrix(a, b)
            for j, te in enumerate(cat.test):
                close = [i for i in np.flatnonzero(dist[:, j] <= hamming) if (cat.train[i].rel, te.rel) not in exact_pairs]
                if close:
                    i = min(close, key=lambda k: dist[k, j])
                    audit.counts["near"] += 1
                    leaky.add(te.rel)
                    if len(audit.examples) < MAX_EXAMPLES:
                        audit.examples.append(Pair("near", cat.train[i].rel, te.rel, f"hamming {int(dist[i, j])}"))
        if frame_of is not None:
            frames = {rel: frame_of.get(rel) for rel in desc}
            towers = {rel: (tower.group_of(f) if f else None) for rel, f in frames.items()}
            _leaks_by_source("frame", frames, cat.train, cat.test, audit, leaky)
            _leaks_by_source("tower", towers, cat.train, cat.test, audit, leaky)
        audit.test_with_leak = len(leaky)
        results.append(audit)
    bar.close()
    return AuditReport(str(root), hamming, source, results)


def examples_png(report: AuditReport, root: Path, limit: int = 8) -> bytes:
    """Side-by-side train | test picture of up to ``limit`` leak pairs (near ones first), as PNG bytes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(c.category, p) for c in report.categories for p in c.examples]
    pairs.sort(key=lambda cp: LEAK_KINDS.index(cp[1].kind) if cp[1].kind != "near" else -1)
    pairs = pairs[:limit]
    if not pairs:
        raise InspladError("no leak pairs to draw")
    fig, axes = plt.subplots(len(pairs), 2, figsize=(6, 2.6 * len(pairs)), squeeze=False)
    for row, (cat, pair) in enumerate(pairs):
        for col, (side, rel) in enumerate((("train", pair.train), ("test", pair.test))):
            ax = axes[row][col]
            with Image.open(root / rel) as img:
                ax.imshow(to_rgb8(img))
            ax.set_title(f"{side}: {rel}\n{pair.kind} ({pair.detail})" if col else f"{side}: {rel}", fontsize=7)
            ax.axis("off")
    fig.suptitle(f"leak examples in {Path(report.dataset).name}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / len(pairs)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
