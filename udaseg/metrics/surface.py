"""Surface distance metrics (ASD, ASSD, HD95, HD) between two binary masks.

Definitions follow medpy 0.5.2 exactly, so numbers are comparable with papers that used it:

* the *surface* of a mask is every foreground voxel with at least one background neighbour under
  ``scipy.ndimage.generate_binary_structure(ndim, connectivity)``; voxels outside the array count
  as background, so an object touching the array edge has a surface there;
* the *directed distances* from A to B are, for every surface voxel of A, the Euclidean distance
  (in the units of ``spacing``) to the nearest surface voxel of B.

Unlike medpy, both masks are cropped to the union of their bounding boxes (plus one voxel of
background on every side) before erosion and distance transform, and the two surfaces and two
distance transforms of a pair are computed once and shared by every metric, which makes the
evaluation much faster without changing any value.

Empty masks never raise and never warn: two empty masks are at distance 0.0; when exactly one is
empty the distance is undefined and the metrics return NaN (see :mod:`udaseg.metrics.case` for
the policies callers can apply).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from udaseg.errors import UdasegError, look_up_option
from udaseg.metrics.overlap import check_same_shape

ASSD_MODES = ("pooled", "mean-of-directed")
HD95_MODES = ("pooled", "max-directed")


def _normalise_spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if values.size != ndim or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise UdasegError(
            f"spacing {tuple(values.tolist())} does not give one positive size per axis of a "
            f"{ndim}D array",
            hint="pass the voxel size in mm along each array axis, in array axis order",
        )
    return values


def _check_connectivity(connectivity: int, ndim: int) -> None:
    if not 1 <= connectivity <= max(ndim, 1):
        raise UdasegError(
            f"connectivity {connectivity} is not valid for a {ndim}D array",
            hint=f"use 1 (face neighbours) up to {ndim} (all neighbours)",
        )


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their joint bounding box padded by one background voxel per side.

    The zero padding makes "outside the array is background" hold for objects touching the edge
    whatever border handling the erosion uses. Cropping never changes a distance: every surface
    voxel of both masks lies inside the box, and the distance transform is exact Euclidean.
    """
    union = pred | ref
    slices = []
    for axis in range(union.ndim):
        others = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(np.any(union, axis=others))
        slices.append(slice(hits[0], hits[-1] + 1))
    box = tuple(slices)
    return np.pad(pred[box], 1), np.pad(ref[box], 1)


def _surface(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    # border_value=0 makes voxels beyond the array edge background, as in medpy
    return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1, border_value=0)


def directed_surface_distances(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    connectivity: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface voxel of one mask to the nearest surface voxel of the other.

    Args:
        pred: predicted mask, (D, H, W) or (H, W) (any dimension), bool; non-zero is foreground.
        ref: reference mask, same shape as ``pred``.
        spacing: size of a voxel along each array axis (same axis order as the arrays), e.g. mm;
            None means 1 per axis, so distances are in voxels.
        connectivity: neighbourhood that defines the surface, 1 (faces) to ndim (all neighbours).

    Returns:
        ``(d_pred_to_ref, d_ref_to_pred)``: 1D float64 arrays in the units of ``spacing``, one
        entry per surface voxel of ``pred`` (resp. ``ref``), in C order of the voxels. An empty
        mask has no surface voxels and gives an empty array; the other mask's distances to it are
        all ``inf``. Both empty gives two empty arrays.

    Raises:
        UdasegError: shapes differ, or ``spacing``/``connectivity`` do not fit the array rank.
    """
    check_same_shape(pred, ref)
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    sampling = _normalise_spacing(spacing, pred.ndim)
    _check_connectivity(connectivity, pred.ndim)
    pred_any, ref_any = bool(pred.any()), bool(ref.any())
    if not (pred_any and ref_any):
        return _distances_to_nothing(pred, ref, pred_any, ref_any, connectivity)
    pred, ref = _crop_to_union(pred, ref)
    structure = ndimage.generate_binary_structure(pred.ndim, connectivity)
    pred_surface, ref_surface = _surface(pred, structure), _surface(ref, structure)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=sampling)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)[ref_surface]
    return to_ref, to_pred


def _distances_to_nothing(
    pred: np.ndarray, ref: np.ndarray, pred_any: bool, ref_any: bool, connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances when at least one mask is empty: inf towards an empty set."""
    empty = np.zeros(0, dtype=np.float64)
    if not (pred_any or ref_any):
        return empty, empty.copy()
    mask = pred if pred_any else ref
    cropped = _crop_to_union(mask, mask)[0]
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    towards_empty = np.full(np.count_nonzero(_surface(cropped, structure)), np.inf)
    return (towards_empty, empty) if pred_any else (empty, towards_empty)


def _undefined(d_a: np.ndarray, d_b: np.ndarray) -> float | None:
    """0.0 when both masks are empty, NaN when exactly one is, None when both have a surface."""
    if d_a.size == 0 and d_b.size == 0:
        return 0.0
    if d_a.size == 0 or d_b.size == 0:
        return float("nan")
    return None


def asd_from_distances(d_pred_to_ref: np.ndarray, d_ref_to_pred: np.ndarray) -> float:
    """Mean of the directed distances pred -> ref (see :func:`compute_asd`)."""
    special = _undefined(d_pred_to_ref, d_ref_to_pred)
    return special if special is not None else float(d_pred_to_ref.mean())


def assd_from_distances(
    d_pred_to_ref: np.ndarray, d_ref_to_pred: np.ndarray, mode: str = "pooled"
) -> float:
    """ASSD from precomputed directed distances (see :func:`compute_assd` for ``mode``)."""
    look_up_option(mode, ASSD_MODES, what="--assd definition")
    special = _undefined(d_pred_to_ref, d_ref_to_pred)
    if special is not None:
        return special
    if mode == "pooled":
        return float(np.concatenate([d_pred_to_ref, d_ref_to_pred]).mean())
    return float((d_pred_to_ref.mean() + d_ref_to_pred.mean()) / 2.0)


def hd95_from_distances(
    d_pred_to_ref: np.ndarray, d_ref_to_pred: np.ndarray, mode: str = "pooled"
) -> float:
    """HD95 from precomputed directed distances (see :func:`compute_hd95` for ``mode``)."""
    look_up_option(mode, HD95_MODES, what="--hd95 definition")
    special = _undefined(d_pred_to_ref, d_ref_to_pred)
    if special is not None:
        return special
    if mode == "pooled":
        return float(np.percentile(np.concatenate([d_pred_to_ref, d_ref_to_pred]), 95))
    return float(max(np.percentile(d_pred_to_ref, 95), np.percentile(d_ref_to_pred, 95)))


def hd_from_distances(d_pred_to_ref: np.ndarray, d_ref_to_pred: np.ndarray) -> float:
    """Hausdorff distance from precomputed directed distances (see :func:`compute_hd`)."""
    special = _undefined(d_pred_to_ref, d_ref_to_pred)
    if special is not None:
        return special
    return float(max(d_pred_to_ref.max(), d_ref_to_pred.max()))


def compute_asd(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    connectivity: int = 1,
) -> float:
    """Average (one-directional) surface distance from ``pred`` to ``ref``.

    The mean, over the surface voxels of ``pred``, of the distance to the nearest surface voxel
    of ``ref``; equals medpy's ``asd(result=pred, reference=ref)``. Not symmetric.

    Args:
        pred: predicted mask, (D, H, W) or (H, W) (any dimension), bool.
        ref: reference mask, same shape as ``pred``.
        spacing: voxel size per array axis (e.g. mm, same axis order); None means voxel units.
        connectivity: surface neighbourhood, 1 (faces) to ndim (all neighbours).

    Returns:
        Distance in the units of ``spacing``; 0.0 when both masks are empty, NaN when exactly one
        is.

    Raises:
        UdasegError: shapes differ, or ``spacing``/``connectivity`` do not fit the array rank.
    """
    return asd_from_distances(*directed_surface_distances(pred, ref, spacing, connectivity))


def compute_assd(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    connectivity: int = 1,
    mode: str = "pooled",
) -> float:
    """Average symmetric surface distance between ``pred`` and ``ref``.

    ``mode`` chooses between the two definitions in use:

    * ``"pooled"``: mean of the concatenation of both directed distance lists, so the larger
      surface weighs more (medpy >= 0.5.2 ``assd``, MONAI ``compute_average_surface_distance``
      with ``symmetric=True``);
    * ``"mean-of-directed"``: ``(mean(d_pred->ref) + mean(d_ref->pred)) / 2`` (medpy <= 0.4
      ``assd``, which is what SIFA's published numbers used).

    Args:
        pred: predicted mask, (D, H, W) or (H, W) (any dimension), bool.
        ref: reference mask, same shape as ``pred``.
        spacing: voxel size per array axis (e.g. mm, same axis order); None means voxel units.
        connectivity: surface neighbourhood, 1 (faces) to ndim (all neighbours).
        mode: ``"pooled"`` or ``"mean-of-directed"``.

    Returns:
        Distance in the units of ``spacing``; 0.0 when both masks are empty, NaN when exactly one
        is.

    Raises:
        UdasegError: unknown ``mode``, shapes differ, or ``spacing``/``connectivity`` do not fit.
    """
    look_up_option(mode, ASSD_MODES, what="--assd definition")
    distances = directed_surface_distances(pred, ref, spacing, connectivity)
    return assd_from_distances(*distances, mode=mode)


def compute_hd95(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    connectivity: int = 1,
    mode: str = "pooled",
) -> float:
    """95th percentile Hausdorff distance between ``pred`` and ``ref``.

    Percentiles use numpy's default linear interpolation. ``mode`` chooses the definition:

    * ``"pooled"``: 95th percentile of the concatenation of both directed distance lists
      (medpy ``hd95``);
    * ``"max-directed"``: the larger of the two directed 95th percentiles (MONAI
      ``compute_hausdorff_distance(percentile=95)``, DeepMind ``surface-distance``). A few
      scattered false positives far from the object (a small fraction of the pooled list) barely
      move the pooled value but can dominate the pred -> ref percentile, so the two can differ a
      lot.

    Args:
        pred: predicted mask, (D, H, W) or (H, W) (any dimension), bool.
        ref: reference mask, same shape as ``pred``.
        spacing: voxel size per array axis (e.g. mm, same axis order); None means voxel units.
        connectivity: surface neighbourhood, 1 (faces) to ndim (all neighbours).
        mode: ``"pooled"`` or ``"max-directed"``.

    Returns:
        Distance in the units of ``spacing``; 0.0 when both masks are empty, NaN when exactly one
        is.

    Raises:
        UdasegError: unknown ``mode``, shapes differ, or ``spacing``/``connectivity`` do not fit.
    """
    look_up_option(mode, HD95_MODES, what="--hd95 definition")
    distances = directed_surface_distances(pred, ref, spacing, connectivity)
    return hd95_from_distances(*distances, mode=mode)


def compute_hd(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    connectivity: int = 1,
) -> float:
    """Hausdorff distance: the larger of the two directed maximum surface distances (medpy ``hd``).

    Args:
        pred: predicted mask, (D, H, W) or (H, W) (any dimension), bool.
        ref: reference mask, same shape as ``pred``.
        spacing: voxel size per array axis (e.g. mm, same axis order); None means voxel units.
        connectivity: surface neighbourhood, 1 (faces) to ndim (all neighbours).

    Returns:
        Distance in the units of ``spacing``; 0.0 when both masks are empty, NaN when exactly one
        is.

    Raises:
        UdasegError: shapes differ, or ``spacing``/``connectivity`` do not fit the array rank.
    """
    return hd_from_distances(*directed_surface_distances(pred, ref, spacing, connectivity))
