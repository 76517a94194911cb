"""Image loading and the tensors methods train on: the input pipeline every method shares.

- :func:`load_images_uint8`: decode + resize a set once into one (N, 3, S, S) uint8 cache. Decoding
  runs in DataLoader worker processes (``RunConfig.workers``; 0 = the main process) for sets of at
  least :data:`PARALLEL_MIN_IMAGES` images (below that, starting workers costs more than it saves).
  The cache is held in memory when its N*3*S*S bytes fit ``RunConfig.cache_budget_mb``; otherwise
  it is a memory-mapped file (see :func:`_spill_array`). Every path gives identical bytes.
- :func:`iter_decoded`: the same decoding as a stream of batches, prefetched by the workers while
  the caller computes (``predict_score_maps``).
- :func:`to_device`: a uint8 (or any) batch to the device; pinned memory + ``non_blocking`` on CUDA.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from insplad_tools.errors import InspladError
from insplad_tools.safety import image_size_guard, worker_signals
from leaderboard.region import CentreCrop

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Decode workers when the caller does not say: half the cores, up to 4, and none below 4 cores: on
# 2 busy cores workers decoded at 0.92x the main process's speed (benchmarks/RESULTS.md, "Input
# pipeline"), since they compete with the process that waits for them.
DEFAULT_WORKERS = min(4, (os.cpu_count() or 1) // 2) if (os.cpu_count() or 1) >= 4 else 0
MAX_WORKERS = 64
DEFAULT_CACHE_BUDGET_MB = 4096  # a train set whose uint8 cache is larger is memory-mapped from disk
MAX_CACHE_BUDGET_MB = 1 << 24  # 16 TiB: larger values only overflow byte counts
# Smaller sets decode in the main process: starting worker processes costs ~0.1 s, more than
# decoding a few dozen images.
PARALLEL_MIN_IMAGES = 64
DECODE_CHUNK = 16  # images per worker task when filling the cache
SPILL_PREFIX = ".insplad-cache-"  # the temporary folder of a memory-mapped cache


def load_rgb(path: Path) -> Image.Image:
    """Open an image as 8-bit RGB, honouring EXIF orientation; one clear error when unreadable.

    Oversized images follow the one decompression-bomb policy of every command
    (:func:`insplad_tools.safety.image_size_guard`).
    """
    try:
        with image_size_guard(path), Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                top = arr.max() or 1.0
                img = Image.fromarray((arr * (255.0 / top)).astype(np.uint8))
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InspladError(f"{path}: cannot read image ({exc})") from exc


def to_tensor(img: Image.Image, size: int | None, *, normalize: bool = True) -> torch.Tensor:
    """Resize (bilinear, square) and convert to a CHW float tensor, ImageNet-normalised by default."""
    if size is not None:
        img = img.resize((size, size), Image.BILINEAR)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        arr = (arr - mean) / std
    return arr


class ImageDataset(Dataset):
    """Images from a list of paths, resized to ``size`` and turned into tensors by ``transform``."""

    def __init__(self, paths: Sequence[Path], size: int, transform: Callable[[Image.Image], torch.Tensor] | None = None):
        self.paths = list(paths)
        self.size = size
        self.transform = transform or (lambda img: to_tensor(img, size))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_rgb(self.paths[index]))


def decode_uint8(path: Path, size: int | CentreCrop) -> np.ndarray:
    """One image as a (3, S, S) uint8 array: RGB (:func:`load_rgb`), bilinear resize to a square of side
    ``size``, or, given a :class:`~leaderboard.region.CentreCrop`, that resize-then-centre-crop view."""
    img = load_rgb(Path(path))
    img = size.image(img) if isinstance(size, CentreCrop) else img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def image_side(size: int | CentreCrop) -> int:
    """The side of the square images :func:`decode_uint8` gives for ``size``."""
    return size.crop if isinstance(size, CentreCrop) else int(size)


class _DecodedChunks(Dataset):
    """Item i = images ``[i*chunk, (i+1)*chunk)`` decoded, as ``(uint8 batch, None)``, or ``(empty, error
    line)`` when one is unreadable: the error travels as a value, because an exception raised in a
    DataLoader worker comes back wrapped in a multi-line traceback."""

    def __init__(self, paths: Sequence[Path], size: int | CentreCrop, chunk: int) -> None:
        self.paths, self.chunk = [Path(p) for p in paths], max(1, int(chunk))
        self.view, self.size = size if isinstance(size, CentreCrop) else int(size), image_side(size)

    def __len__(self) -> int:
        return -(-len(self.paths) // self.chunk)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str | None]:
        part = self.paths[index * self.chunk:(index + 1) * self.chunk]
        out = np.empty((len(part), 3, self.size, self.size), dtype=np.uint8)
        for j, path in enumerate(part):
            try:
                out[j] = decode_uint8(path, self.view)
            except InspladError as exc:
                return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8), exc.message
        return torch.from_numpy(out), None


def _decode_worker_init(worker_id: int) -> None:
    worker_signals()  # Ctrl-C is the parent's to handle; SIGTERM ends a worker at once


def _quiet_worker_exits(batches: Any) -> None:
    """Take this iterator's workers off torch's SIGCHLD watch list.

    Torch raises from its SIGCHLD handler as soon as a worker dies by a signal, anywhere in the parent:
    after SIGTERM to the process group (the workers end at once, by design of ``worker_signals``) that
    RuntimeError interrupts the parent's own cleanup and prints a traceback. Unwatched, a worker that
    dies while the parent still waits on it is reported by the loader's queue check instead (within
    5 s, "exited unexpectedly"), which :func:`iter_decoded` turns into one line."""
    from torch.utils.data._utils import signal_handling

    if getattr(batches, "_worker_pids_set", False) and hasattr(signal_handling, "_remove_worker_pids"):
        signal_handling._remove_worker_pids(id(batches))
        batches._worker_pids_set = False


def check_workers(workers: int) -> int:
    """``workers`` as a valid count of decode processes (0 = decode in the main process)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise InspladError(f"workers={workers!r}: expected an integer in 0..{MAX_WORKERS}")
    return workers


def iter_decoded(paths: Sequence[Path], size: int | CentreCrop, *, batch_size: int, workers: int = 0,
                 pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """Decoded uint8 batches of ``batch_size`` images, in order. With ``workers`` > 0 (and at least
    :data:`PARALLEL_MIN_IMAGES` images) worker processes decode the next batches while the caller
    works on this one; ``pin_memory`` returns them in page-locked memory (for CUDA copies).
    An unreadable image ends the stream with the one-line :class:`InspladError` naming it."""
    data = _DecodedChunks(paths, size, batch_size)
    workers = min(check_workers(workers), len(data))
    # A daemonic process (a multiprocessing.Pool worker) may not start processes of its own.
    if workers == 0 or len(data.paths) < PARALLEL_MIN_IMAGES or multiprocessing.current_process().daemon:
        for index in range(len(data)):
            batch, error = data[index]
            if error is not None:
                raise InspladError(error)
            yield batch.pin_memory() if pin_memory else batch
        return
    loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                        worker_init_fn=_decode_worker_init, prefetch_factor=2)
    batches = iter(loader)
    _quiet_worker_exits(batches)
    try:
        for batch, error in batches:
            if error is not None:
                raise InspladError(error)
            yield batch
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        first = str(exc).strip().splitlines()[0]
        raise InspladError(f"image decoding failed: {first} (out of memory? try fewer --workers, or 0)") from None
    finally:
        del batches  # stops the workers now, also when the caller stops early or an error unwinds


def _remove_stale_spills(parent: Path, min_age_s: float = 600.0) -> None:
    """Remove spill folders a killed run (``kill -9`` in the instant between creating and removing one)
    left in ``parent``: real folders named ``.insplad-cache-*`` holding only the cache file, untouched for
    ``min_age_s`` (a live run removes its own within milliseconds)."""
    import time

    try:
        candidates = [p for p in parent.glob(f"{SPILL_PREFIX}*") if p.is_dir() and not p.is_symlink()]
        for folder in candidates:
            if time.time() - folder.stat().st_mtime > min_age_s and \
                    {c.name for c in folder.iterdir()} <= {"images.u8"}:
                shutil.rmtree(folder, ignore_errors=True)
    except OSError:
        pass  # an unreadable temp dir is no reason to fail


def _spill_array(shape: tuple[int, ...], folder: Path | None) -> np.ndarray:
    """A writable uint8 array of ``shape`` backed by a file, for a cache over the memory budget.

    The file lives in a temporary folder (``.insplad-cache-*``) inside ``folder`` (a run's output
    folder; the system temp dir when None or missing). Its space is reserved up front (a full disk is
    one clear error, not a crash on first write), and the folder is removed as soon as the file is
    mapped: the mapping keeps the data until the array is freed, and nothing is left behind, whatever
    ends the run.
    """
    parent = Path(folder) if folder is not None and Path(folder).is_dir() else Path(tempfile.gettempdir())
    _remove_stale_spills(parent)
    nbytes = int(np.prod(shape))
    tmp = Path(tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=parent))
    array: np.ndarray | None = None
    try:
        file = tmp / "images.u8"
        with open(file, "wb") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, nbytes)
            except (AttributeError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no reservation here
                    raise InspladError(f"{parent}: cannot hold the {nbytes / 2**20:.0f} MB image cache "
                                       f"({exc.strerror or exc}); free space there or raise --cache-budget-mb") from None
                handle.truncate(nbytes)
        array = np.memmap(file, dtype=np.uint8, mode="r+", shape=shape)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists() and array is not None:  # systems that cannot remove a mapped file: when it is freed
            weakref.finalize(array, shutil.rmtree, str(tmp), True)
    return array


def load_images_uint8(paths: Sequence[Path], size: int | CentreCrop, progress: bool = False, desc: str = "load", *,
                      workers: int | None = None, cache_budget_mb: int | None = None,
                      cache_dir: Path | str | None = None, run: Any = None) -> torch.Tensor:
    """Images resized to ``size`` as one (N, 3, size, size) uint8 tensor (the decode cache of a train set).

    ``workers``, ``cache_budget_mb`` and ``cache_dir`` default to ``run``'s (a :class:`methods.base.RunConfig`)
    when given, else to the main process and :data:`DEFAULT_CACHE_BUDGET_MB`. A cache larger than the
    budget is a memory-mapped file created under ``cache_dir`` (see :func:`_spill_array`). The bytes are
    the same whichever way they were produced.
    """
    workers = getattr(run, "workers", 0) if workers is None else workers
    budget = getattr(run, "cache_budget_mb", DEFAULT_CACHE_BUDGET_MB) if cache_budget_mb is None else cache_budget_mb
    cache_dir = getattr(run, "cache_dir", None) if cache_dir is None else cache_dir
    if isinstance(budget, bool) or not isinstance(budget, int) or not 0 <= budget <= MAX_CACHE_BUDGET_MB:
        raise InspladError(f"cache_budget_mb={budget!r}: expected an integer in 0..{MAX_CACHE_BUDGET_MB}")
    paths = list(paths)
    shape = (len(paths), 3, image_side(size), image_side(size))
    if not paths:
        return torch.empty(shape, dtype=torch.uint8)
    if int(np.prod(shape)) <= budget * 2**20:
        cache = torch.empty(shape, dtype=torch.uint8)
    else:
        cache = torch.from_numpy(_spill_array(shape, Path(cache_dir) if cache_dir is not None else None))
    batches = iter_decoded(paths, size, batch_size=DECODE_CHUNK, workers=workers)
    with closing(batches), tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        start = 0
        for batch in batches:
            cache[start:start + len(batch)] = batch
            start += len(batch)
            bar.update(len(batch))
    return cache


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 1] float) batch -> ImageNet-normalised float batch on the same device."""
    x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def to_device(batch: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``batch`` on ``device``. For CUDA the copy starts from page-locked memory (pinned here unless it
    already is) and does not block the host, so the next batch can be prepared while it runs; later
    work on the same stream waits for it. Elsewhere a plain copy (a no-op on the tensor's own device)."""
    device = torch.device(device)
    if device.type != "cuda" or batch.device.type != "cpu":
        return batch.to(device)
    if not batch.is_pinned():
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


@torch.no_grad()
def predict_score_maps(model: torch.nn.Module, paths: Sequence[Path], *, size: int | CentreCrop, batch_size: int,
                       device: torch.device, progress: bool = False, desc: str = "predict",
                       workers: int = 0) -> list[tuple[float, np.ndarray]]:
    """Run a model that maps a normalised batch to ``(scores (B,), maps (B, H, W))`` over image files;
    with ``workers`` the next batches are decoded while the model runs on this one."""
    model.eval()
    out: list[tuple[float, np.ndarray]] = []
    paths, bs = list(paths), max(1, batch_size)
    device = torch.device(device)
    batches = iter_decoded(paths, size, batch_size=bs, workers=workers, pin_memory=device.type == "cuda")
    with closing(batches), tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in batches:
            scores, maps = model(normalise(to_device(batch, device)))
            out.extend((float(s), m.astype(np.float32))
                       for s, m in zip(scores.float().cpu().numpy(), maps.float().cpu().numpy()))
            bar.update(len(batch))
    return out
