"""Segmentation metrics: Dice, surface distances (ASD, ASSD, HD95, HD) and per-case evaluation.

All functions take numpy arrays and return floats; see :mod:`udaseg.metrics.surface` for the
exact surface definitions and which library each variant agrees with.
"""

from udaseg.metrics.case import evaluate_case, image_diagonal
from udaseg.metrics.overlap import compute_dice
from udaseg.metrics.surface import (
    compute_asd,
    compute_assd,
    compute_hd,
    compute_hd95,
    directed_surface_distances,
)

__all__ = [
    "compute_asd",
    "compute_assd",
    "compute_dice",
    "compute_hd",
    "compute_hd95",
    "directed_surface_distances",
    "evaluate_case",
    "image_diagonal",
]
