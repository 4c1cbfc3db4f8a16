"""Overlap metrics between two binary masks."""

from __future__ import annotations

import numpy as np

from udaseg.errors import UdasegError


def check_same_shape(pred: np.ndarray, ref: np.ndarray) -> None:
    """Raise :class:`UdasegError` naming both shapes when ``pred`` and ``ref`` differ in shape."""
    if np.shape(pred) != np.shape(ref):
        raise UdasegError(
            f"prediction shape {tuple(np.shape(pred))} does not match "
            f"reference shape {tuple(np.shape(ref))}",
            hint="resample the prediction onto the reference grid before evaluating",
        )


def compute_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient ``2 |P & R| / (|P| + |R|)``, in [0, 1].

    Args:
        pred: predicted mask, (D, H, W) or (H, W) (any dimension), bool; non-zero counts as
            foreground.
        ref: reference mask, same shape as ``pred``.

    Returns:
        The Dice coefficient as a float. Two empty masks agree perfectly and give 1.0 (as medpy
        0.5.2's ``dc`` does); the result is never NaN.

    Raises:
        UdasegError: the shapes differ.
    """
    check_same_shape(pred, ref)
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    return dice_from_counts(
        np.count_nonzero(pred), np.count_nonzero(ref), np.count_nonzero(pred & ref)
    )


def dice_from_counts(n_pred: int, n_ref: int, n_both: int) -> float:
    """Dice from foreground voxel counts: ``2 * n_both / (n_pred + n_ref)``, 1.0 when both are 0."""
    if n_pred + n_ref == 0:
        return 1.0
    return float(2.0 * n_both / (n_pred + n_ref))
