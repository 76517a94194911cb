"""Loading ImageNet weights: torchvision's cache, an explicit ``--weights PATH``, or none.

Nothing is downloaded silently on an offline machine: when torchvision cannot fetch a file the
error names the exact file to place in the cache, and the two alternatives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from insplad_tools.errors import InspladError


def cached_weights_path(weights: Any) -> Path:
    """Where torchvision keeps (or would keep) the file of a weights enum member."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_state_dict(weights: Any, *, pretrained: bool, path: str | Path | None, progress: bool = False) -> dict[str, torch.Tensor] | None:
    """The state dict to initialise a backbone with, or ``None`` for random initialisation.

    ``path`` (``--weights``) wins over ``pretrained``; files are read with ``weights_only=True``.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InspladError(f"{path}: weights file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt file, or one that needs unpickling of arbitrary objects
            from methods.base import unsafe_load_reason

            raise InspladError(f"{path}: not a loadable state dict ({unsafe_load_reason(exc)})") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise InspladError(f"{path}: expected a state dict (mapping of parameter names to tensors), "
                               f"got {type(state).__name__}")
        bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
        if bad is not None or not state:
            what = "is empty" if bad is None else f"entry {str(bad)[:60]!r} is not a tensor"
            raise InspladError(f"{path}: expected a state dict of parameter tensors; {what}")
        return state
    if not pretrained:
        return None
    try:
        return weights.get_state_dict(progress=progress, check_hash=True)
    except Exception as exc:  # URLError, socket errors, HTTP errors, hash mismatch
        target = cached_weights_path(weights)
        raise InspladError(
            f"cannot load ImageNet weights {weights} ({type(exc).__name__}): place {Path(weights.url).name} "
            f"at {target}, pass --weights PATH, or train from scratch with --no-pretrained"
        ) from exc
