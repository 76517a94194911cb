"""Evaluation metrics, one definition for every method: image/pixel AUROC, AUPRO and F1-max.

All take plain numpy inputs and return floats in [0, 1]; bad input raises ``ValueError``.
"""

from leaderboard.metrics.aupro import aupro, pro_curve, pro_curve_binned, truncated_area
from leaderboard.metrics.ranking import f1_max, image_auroc, pixel_auroc

__all__ = ["aupro", "f1_max", "image_auroc", "pixel_auroc", "pro_curve", "pro_curve_binned", "truncated_area"]
