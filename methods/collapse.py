"""Collapse monitor for attention trained jointly with a method's own loss.

Trainable attention can lower a loss without learning anything about normality, e.g. by shrinking
every feature (DifferNet's likelihood rewards it). Methods measure the spread of the features their
head sees on a fixed subset of training images, at initialisation and after every epoch; a ratio
below ``collapse_ratio`` is reported as a warning, a history flag and a results note.
"""

from __future__ import annotations

import warnings

import torch


class DegenerateFeaturesWarning(UserWarning):
    """The features' spread collapsed during training: the loss is being gamed."""


def feature_spread(features: torch.Tensor) -> float:
    """Mean over dimensions of the std over samples (rows) of ``features`` (N, D)."""
    return float(features.float().std(dim=0, unbiased=False).mean())


def check_spread(method: str, epoch: int, spread: float, reference: float, collapse_ratio: float,
                 notes: list[str], what: str) -> dict[str, float]:
    """History logs (``feature_spread`` ratio, ``degenerate`` 0/1); warns and notes once on a collapse."""
    ratio = spread / reference
    if ratio < collapse_ratio and not any(n.startswith("degenerate") for n in notes):
        message = (f"degenerate features at epoch {epoch + 1}: the spread of {what} fell to {ratio:.3g} of its "
                   f"initial value (the attention shrinks the features to lower the loss)")
        notes.append(message)
        warnings.warn(f"{method}: {message}", DegenerateFeaturesWarning, stacklevel=3)
    return {"feature_spread": ratio, "degenerate": float(ratio < collapse_ratio)}
