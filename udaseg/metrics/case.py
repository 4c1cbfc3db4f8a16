"""Per-case, per-class evaluation of integer label maps."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from udaseg.errors import UdasegError, look_up_option
from udaseg.metrics.overlap import check_same_shape, dice_from_counts
from udaseg.metrics.surface import (
    ASSD_MODES,
    HD95_MODES,
    asd_from_distances,
    assd_from_distances,
    directed_surface_distances,
    hd95_from_distances,
    hd_from_distances,
)

METRICS = ("dice", "assd", "asd", "hd95", "hd")
DISTANCE_METRICS = ("assd", "asd", "hd95", "hd")
UNITS = ("mm", "voxel")
EMPTY_DISTANCE_POLICIES = ("nan", "diagonal")


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image diagonal, ``sqrt(sum((shape_i * spacing_i) ** 2))``.

    Args:
        shape: array shape, e.g. (D, H, W) or (H, W).
        spacing: voxel size along each axis in the same order (mm, or ones for voxel units).

    Returns:
        The diagonal in the units of ``spacing``: the largest distance two voxel corners of the
        image can have, used as the penalty for a class that is missed or hallucinated.

    Raises:
        UdasegError: ``shape`` and ``spacing`` have different lengths.
    """
    if len(shape) != len(spacing):
        raise UdasegError(f"shape {tuple(shape)} and spacing {tuple(spacing)} differ in length")
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def _check_options(
    metrics: Sequence[str], unit: str, hd95_mode: str, assd_mode: str, empty_distance: str
) -> None:
    for metric in metrics:
        look_up_option(metric, METRICS, what="metric")
    look_up_option(unit, UNITS, what="distance unit")
    look_up_option(hd95_mode, HD95_MODES, what="--hd95 definition")
    look_up_option(assd_mode, ASSD_MODES, what="--assd definition")
    look_up_option(empty_distance, EMPTY_DISTANCE_POLICIES, what="empty-mask distance policy")


def _spacing_for(unit: str, spacing_mm: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if unit == "voxel":
        return (1.0,) * ndim
    if spacing_mm is None or len(spacing_mm) != ndim:
        raise UdasegError(
            f"unit 'mm' needs one spacing per axis of the {ndim}D label map, got {spacing_mm}",
            hint="pass spacing_mm in array axis order, or use unit='voxel'",
        )
    return tuple(float(s) for s in spacing_mm)


def _class_mask(labels: np.ndarray, values: Collection[int], out: np.ndarray) -> np.ndarray:
    """``np.isin(labels, values)`` written into ``out``; one value is a single comparison."""
    values = list(values)
    if len(values) == 1:
        return np.equal(labels, values[0], out=out)
    out[...] = np.isin(labels, values)
    return out


def _distance_metrics(
    distances: tuple[np.ndarray, np.ndarray], wanted: Sequence[str], hd95_mode: str, assd_mode: str
) -> dict[str, float]:
    reducers = {
        "asd": lambda d: asd_from_distances(*d),
        "assd": lambda d: assd_from_distances(*d, mode=assd_mode),
        "hd95": lambda d: hd95_from_distances(*d, mode=hd95_mode),
        "hd": lambda d: hd_from_distances(*d),
    }
    return {metric: reducers[metric](distances) for metric in wanted}


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    classes: Mapping[str, Collection[int]],
    *,
    spacing_mm: Sequence[float] | None,
    metrics: Sequence[str] = ("dice", "assd", "hd95"),
    unit: str = "mm",
    hd95_mode: str = "pooled",
    assd_mode: str = "pooled",
    connectivity: int = 1,
    empty_distance: str = "nan",
) -> dict[str, dict[str, float]]:
    """Evaluate one case: every requested metric for every class.

    Args:
        pred: predicted integer label map, (D, H, W) or (H, W).
        ref: reference integer label map, same shape as ``pred``.
        classes: ``name -> label values``; the class mask is ``np.isin(labels, values)``, so a
            plain class is ``{"liver": [1]}`` and a region is ``{"WT": [1, 2, 4]}``.
        spacing_mm: voxel size in mm along each array axis (same order as the arrays); only
            used, and then required, when ``unit == "mm"``.
        metrics: any of ``"dice"``, ``"assd"``, ``"asd"`` (pred -> ref), ``"hd95"``, ``"hd"``.
            The surfaces and distance transforms of a class are computed once for all distance
            metrics.
        unit: ``"mm"`` (distances in mm, using ``spacing_mm``) or ``"voxel"`` (spacing of ones).
        hd95_mode: ``"pooled"`` (medpy) or ``"max-directed"`` (MONAI, DeepMind); see
            :func:`udaseg.metrics.compute_hd95`.
        assd_mode: ``"pooled"`` (medpy >= 0.5.2, MONAI) or ``"mean-of-directed"`` (medpy <= 0.4,
            SIFA); see :func:`udaseg.metrics.compute_assd`.
        connectivity: surface neighbourhood, 1 (faces) to ndim (all neighbours).
        empty_distance: what distances are when exactly one of the two class masks is empty:
            ``"nan"`` (leave them out of means) or ``"diagonal"`` (the image diagonal in the
            chosen unit, see :func:`image_diagonal`, so misses count against the mean).

    Returns:
        ``{class_name: {metric: value}}`` in the order of ``classes`` and ``metrics``. Dice is in
        [0, 1] (two empty masks give 1.0); distances are in ``unit`` (two empty masks give 0.0).

    Raises:
        UdasegError: shapes differ, an option is unknown (with a "did you mean"), or the spacing
            does not match the array rank.
    """
    check_same_shape(pred, ref)
    _check_options(metrics, unit, hd95_mode, assd_mode, empty_distance)
    pred, ref = np.asarray(pred), np.asarray(ref)
    spacing = _spacing_for(unit, spacing_mm, pred.ndim)
    penalty = image_diagonal(pred.shape, spacing) if empty_distance == "diagonal" else math.nan
    wanted = [m for m in metrics if m in DISTANCE_METRICS]
    results: dict[str, dict[str, float]] = {}
    # masks are rewritten in place for each class: fresh volume-sized arrays would cost more in
    # page faults than the comparisons that fill them
    pred_mask, ref_mask, overlap = (np.empty(pred.shape, dtype=bool) for _ in range(3))
    for name, values in classes.items():
        _class_mask(pred, values, out=pred_mask)
        _class_mask(ref, values, out=ref_mask)
        scores: dict[str, float] = {}
        if wanted:
            distances = directed_surface_distances(pred_mask, ref_mask, spacing, connectivity)
            scores = _distance_metrics(distances, wanted, hd95_mode, assd_mode)
            scores = {m: penalty if math.isnan(v) else v for m, v in scores.items()}
        if "dice" in metrics:
            np.logical_and(pred_mask, ref_mask, out=overlap)
            counts = (np.count_nonzero(m) for m in (pred_mask, ref_mask, overlap))
            scores["dice"] = dice_from_counts(*counts)
        results[name] = {m: scores[m] for m in metrics}
    return results
