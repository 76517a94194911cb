"""The one reader of the MVTec AD folder layout, used by every command.

Layout::

    ROOT/<category>/train/good/<image>
    ROOT/<category>/test/good/<image>
    ROOT/<category>/test/<defect>/<image>
    ROOT/<category>/ground_truth/<defect>/<stem>_mask.png     (optional, pixel-level sets)
    ROOT/manifest.json                                          (optional, written by build-splits)

Paths handed around are relative to ROOT in POSIX form (``glass_insulator/test/good/000.png``),
which is also how predictions name images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from insplad_tools.errors import DatasetError, InspladError
from insplad_tools.fsutil import sha256_file

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
GOOD = "good"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Sample:
    """One image of a category, with its split, defect type and optional ground-truth mask."""

    root: Path
    rel: str
    category: str
    split: str
    defect: str
    mask_rel: str | None = None

    @property
    def path(self) -> Path:
        return self.root / self.rel

    @property
    def mask_path(self) -> Path | None:
        return None if self.mask_rel is None else self.root / self.mask_rel

    @property
    def label(self) -> int:
        """0 for a normal image, 1 for an anomalous one."""
        return 0 if self.defect == GOOD else 1


@dataclass
class Category:
    name: str
    root: Path
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    @property
    def defects(self) -> list[str]:
        return sorted({s.defect for s in self.test if s.defect != GOOD})

    @property
    def has_masks(self) -> bool:
        return any(s.mask_rel is not None for s in self.test)

    def counts(self) -> dict[str, int]:
        return {
            "train_good": len(self.train),
            "test_good": sum(1 for s in self.test if s.label == 0),
            "test_anomalous": sum(1 for s in self.test if s.label == 1),
            "masks": sum(1 for s in self.test if s.mask_rel is not None),
        }


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _find_mask(root: Path, category: str, defect: str, stem: str) -> str | None:
    gt = root / category / "ground_truth" / defect
    for name in (f"{stem}_mask.png", f"{stem}.png"):
        if (gt / name).is_file():
            return f"{category}/ground_truth/{defect}/{name}"
    return None


def read_category(root: Path, name: str) -> Category:
    """Read one category folder; raises :class:`DatasetError` naming the path when malformed."""
    root = Path(root)
    base = root / name
    train_dir, test_dir = base / "train" / GOOD, base / "test"
    if not train_dir.is_dir():
        raise DatasetError(f"{train_dir}: missing train/good folder (not an MVTec AD category)")
    if not test_dir.is_dir():
        raise DatasetError(f"{test_dir}: missing test folder (not an MVTec AD category)")
    cat = Category(name=name, root=root)
    cat.train = [Sample(root, f"{name}/train/{GOOD}/{p.name}", name, "train", GOOD) for p in _images(train_dir)]
    for defect_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        defect = defect_dir.name
        for p in _images(defect_dir):
            mask = None if defect == GOOD else _find_mask(root, name, defect, p.stem)
            cat.test.append(Sample(root, f"{name}/test/{defect}/{p.name}", name, "test", defect, mask))
    if not cat.train:
        raise DatasetError(f"{train_dir}: no training images")
    if not cat.test:
        raise DatasetError(f"{test_dir}: no test images")
    return cat


def list_categories(root: Path) -> list[str]:
    """Names of the category folders under ``root`` (folders holding train/ and test/)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "train").is_dir() and (d / "test").is_dir())
    if not names:
        if any(c.split is None for c in read_crop_folder(root)):
            raise DatasetError(f"{root}: a released crop folder sorted only by condition (<asset>/<condition>/*) has "
                               "no train/test split to benchmark on; link it to InsPLAD-det with `insplad link-crops` "
                               "and re-split it with `insplad build-splits --conditions`")
        raise DatasetError(f"{root}: no category folders with train/ and test/ (expected the MVTec AD layout)")
    return names


@dataclass(frozen=True)
class CropImage:
    """One image of a released InsPLAD-fault-style crop folder."""

    rel: str                 # relative to the folder, POSIX
    asset: str               # asset folder name as released (glass-insulator, isolador_vidro, ...)
    condition: str           # condition folder name as released (good, rust, missing-cap, ...)
    split: str | None        # train / test for the MVTec-like layout, None for <asset>/<condition>/*


def read_crop_folder(root: Path) -> list[CropImage]:
    """Every image of a released crop folder, in either of the layouts the release and its users have.

    ``<asset>/{train,test}/<condition>/*`` (MVTec-like, what the unsupervised InsPLAD-fault ships) and
    ``<asset>/<condition>/*`` (sorted by condition only). ``ground_truth/`` folders and hidden entries
    are not crops. Sorted by path.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: crop folder does not exist")
    out: list[CropImage] = []
    for asset in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        mvtec_like = (asset / "train").is_dir() or (asset / "test").is_dir()
        if mvtec_like:
            for split in ("train", "test"):
                if not (asset / split).is_dir():
                    continue
                for cond in sorted(d for d in (asset / split).iterdir() if d.is_dir() and not d.name.startswith(".")):
                    out += [CropImage(f"{asset.name}/{split}/{cond.name}/{p.name}", asset.name, cond.name, split)
                            for p in _images(cond)]
        else:
            for cond in sorted(d for d in asset.iterdir() if d.is_dir() and not d.name.startswith(".")
                               and d.name != "ground_truth"):
                out += [CropImage(f"{asset.name}/{cond.name}/{p.name}", asset.name, cond.name, None)
                        for p in _images(cond)]
    return out


def read_dataset(root: Path, categories: list[str] | None = None) -> dict[str, Category]:
    """Read every (or the named) categories of a dataset in MVTec AD layout."""
    available = list_categories(root)
    wanted = categories or available
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise DatasetError(f"{root}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} "
                           f"(available: {', '.join(available)})")
    return {name: read_category(root, name) for name in wanted}


def dataset_digest(root: Path) -> str:
    """A sha256 that identifies a dataset's content.

    For datasets built by ``insplad build-splits`` this is the sha256 of ``manifest.json``; for
    other MVTec-layout sets (e.g. MVTec AD itself) it is the sha256 of a canonical listing of every
    image and mask with its own sha256, so the same files always give the same digest.
    """
    root = Path(root)
    manifest = root / MANIFEST
    if manifest.is_file():
        return sha256_file(manifest)
    lines = []
    for name in list_categories(root):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                lines.append(f"{path.relative_to(root).as_posix()}\t{sha256_file(path)}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def dataset_name(root: Path) -> str:
    """The dataset's name: the manifest's ``name`` field when present, else the folder name."""
    manifest = Path(root) / MANIFEST
    if manifest.is_file():
        from insplad_tools.jsonfile import load_json

        try:
            doc = load_json(manifest)
        except InspladError as exc:
            raise DatasetError(f"unreadable manifest: {exc.message}") from None
        name = doc.get("name") if isinstance(doc, dict) else None
        if name:
            return str(name)
    return Path(root).resolve().name
