"""Geometry: canonical orientation, resampling, cropping, and the way back to the original scan.

Every volume is reoriented so that its numpy array (SimpleITK's ``GetArrayFromImage``, axes reversed
relative to SimpleITK's x, y, z) is laid out as **(S, H, W) = (slice, row, column)** for the
dataset's view, the same way for every modality:

==========  ===========  ===================================================================
view        orientation  array axes (S, H, W), as displayed with row 0 at the top
==========  ===========  ===================================================================
axial       ``LPS``      S inferior->superior, rows anterior->posterior, cols right->left
coronal     ``LIP``      S anterior->posterior, rows superior->inferior, cols right->left
sagittal    ``PIL``      S right->left, rows superior->inferior, cols anterior->posterior
short-axis  (oblique)    S apex->base, rows anterior->inferior wall, cols septum->lateral wall
==========  ===========  ===================================================================

(Orientation codes as SimpleITK's ``DICOMOrientImageFilter`` uses them: the direction each of the
x, y, z index axes points *to*.) So slice k of any volume is ``array[k]`` and shows the patient in
the radiological convention whatever the scanner wrote; CT and MR slices face the same way.

The three body views snap each index axis to the nearest body axis (``DICOMOrient``). Cardiac
short-axis stacks are planned along the heart, about 45 degrees from every body axis, so that rule
would slice a stack of 8-16 thick short-axis planes along one of its in-plane axes and, with
headers a few degrees apart, cut different cases along different axes (MS-CMRSeg: "PSR" and "LSP"
files stored the same way). The ``short-axis`` view instead permutes and flips the index axes (no
interpolation) to the nearest of the 48 such arrangements of a reference short-axis frame
(:data:`SHORT_AXIS_FRAME`): the slices stay the acquired short-axis planes, shown in the usual
cardiac display (viewed from the apex, like an axial slice from the feet: anterior wall at the
top, septum and right ventricle on the image left).

Spacing tuples in this module follow SimpleITK's (x, y, z) order unless called ``*_shw``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

VIEW_ORIENTATION = {"axial": "LPS", "coronal": "LIP", "sagittal": "PIL"}

# The reference short-axis frame in patient LPS coordinates (mm axes: +x left, +y posterior, +z
# superior); columns are the directions of the array's W (x), H (y) and S (z) axes. The heart's
# long axis runs from the base (right, posterior, superior) to the apex (left, anterior,
# inferior), roughly along (1, -1, -1); the slices go apex -> base along (-1, 1, 1). In the plane,
# columns run from the septum to the lateral wall (towards the patient's left and back, (1, 1, 0))
# and rows from the anterior to the inferior LV wall (their cross product: x cross y = z, a
# right-handed frame like LPS, so a slice is seen from the apex as an axial one from the feet).
SHORT_AXIS_FRAME = np.column_stack(
    [
        np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0),
        np.array([-1.0, 1.0, -2.0]) / np.sqrt(6.0),
        np.array([-1.0, 1.0, 1.0]) / np.sqrt(3.0),
    ]
)
OBLIQUE_VIEWS = {"short-axis": SHORT_AXIS_FRAME}


def canonical_direction(view: str) -> tuple[float, ...]:
    """The 3x3 direction matrix (row-major, as SimpleITK) of the canonical grid for ``view`` (for
    ``short-axis`` the reference frame; real stacks are snapped to an arrangement near it)."""
    if view in OBLIQUE_VIEWS:
        return tuple(float(v) for v in OBLIQUE_VIEWS[view].ravel())
    return sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(VIEW_ORIENTATION[view])


def orientation_code(image: sitk.Image) -> str:
    """The nearest body-axis code (e.g. ``LPS``) of ``image``'s direction."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_canonical(image: sitk.Image, view: str) -> sitk.Image:
    """Permute/flip axes (no interpolation) so the array is (S, H, W) for ``view``."""
    if view in OBLIQUE_VIEWS:
        return snap_to_frame(image, OBLIQUE_VIEWS[view])
    return sitk.DICOMOrient(image, VIEW_ORIENTATION[view])


def nearest_arrangement(
    direction: np.ndarray, frame: np.ndarray
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The permutation and signs of the index axes that bring ``direction`` nearest ``frame``.

    Args:
        direction: (3, 3) direction matrix, columns = where the image's x, y, z index axes point.
        frame: (3, 3) wanted directions of the output x, y, z axes (columns).

    Returns:
        ``(axes, signs)``: output axis i is input axis ``axes[i]``, reversed where ``signs[i]``
        is -1; chosen to maximise the summed cosines between the output and ``frame`` axes (ties:
        the first in a fixed order, so the choice is deterministic).
    """
    best, best_score = ((0, 1, 2), (1, 1, 1)), -np.inf
    for axes in itertools.permutations(range(3)):
        cosines = [float(direction[:, axes[i]] @ frame[:, i]) for i in range(3)]
        signs = tuple(1 if c >= 0 else -1 for c in cosines)
        score = sum(abs(c) for c in cosines)
        if score > best_score + 1e-9:
            best, best_score = (tuple(axes), signs), score
    return best  # type: ignore[return-value]


def snap_to_frame(image: sitk.Image, frame: np.ndarray) -> sitk.Image:
    """Permute/flip the index axes of ``image`` (exactly, no interpolation) so that its direction
    is the arrangement nearest ``frame`` (:func:`nearest_arrangement`); every voxel keeps its
    physical position."""
    direction = np.reshape(image.GetDirection(), (3, 3))
    axes, signs = nearest_arrangement(direction, frame)
    if axes == (0, 1, 2) and signs == (1, 1, 1):
        return image
    size = image.GetSize()
    # the first output voxel is the input voxel at the start (or, reversed, the end) of each axis
    corner = [0, 0, 0]
    for out_axis, in_axis in enumerate(axes):
        corner[in_axis] = 0 if signs[out_axis] > 0 else size[in_axis] - 1
    origin = image.TransformIndexToPhysicalPoint(corner)
    array = sitk.GetArrayFromImage(image)  # numpy axis a is SimpleITK axis 2 - a
    array = np.transpose(array, [2 - axes[2 - a] for a in range(3)])
    flips = tuple(a for a in range(3) if signs[2 - a] < 0)
    array = np.ascontiguousarray(np.flip(array, flips) if flips else array)
    spacing = image.GetSpacing()
    new_direction = np.column_stack([signs[i] * direction[:, axes[i]] for i in range(3)])
    return array_to_image(
        array, [spacing[a] for a in axes], origin, tuple(new_direction.ravel().tolist())
    )


def shw_spacing(image: sitk.Image) -> tuple[float, float, float]:
    """Spacing in mm in array order (S, H, W)."""
    x, y, z = image.GetSpacing()
    return (z, y, x)


def resample(
    image: sitk.Image,
    *,
    inplane_mm: float | None,
    through_plane_mm: float | None,
    is_label: bool,
) -> sitk.Image:
    """Resample a canonical-oriented volume to the given spacing (None keeps an axis' spacing).

    Images are interpolated linearly, labels with nearest neighbour; the grid keeps its origin and
    direction and covers the same physical extent (size rounded to whole voxels).
    """
    old = np.array(image.GetSpacing(), dtype=float)
    new = old.copy()
    if inplane_mm is not None:
        new[:2] = inplane_mm
    if through_plane_mm is not None:
        new[2] = through_plane_mm
    if np.allclose(new, old, rtol=1e-4):
        return image
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old / new)).astype(int)
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    return sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        interpolator,
        image.GetOrigin(),
        tuple(new.tolist()),
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
    )


@dataclass(frozen=True)
class Box:
    """An index box in array order (S, H, W): ``start`` may be negative and ``stop`` beyond the
    array, meaning padding."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore


def bounding_box(mask: np.ndarray, margin_vox: tuple[int, int, int]) -> Box | None:
    """Bounding box of ``mask`` (S, H, W) grown by ``margin_vox`` and clipped to the array."""
    if not mask.any():
        return None
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        start.append(max(0, int(hits[0]) - margin_vox[axis]))
        stop.append(min(mask.shape[axis], int(hits[-1]) + 1 + margin_vox[axis]))
    return Box(tuple(start), tuple(stop))  # type: ignore[arg-type]


def fit_inplane(box: Box, size: tuple[int, int] | None) -> Box:
    """Grow or shrink the box's rows/cols to ``size`` around its centre (slices unchanged)."""
    if size is None:
        return box
    start, stop = list(box.start), list(box.stop)
    for axis, want in zip((1, 2), size, strict=True):
        centre2 = box.start[axis] + box.stop[axis]  # twice the centre, to stay in integers
        start[axis] = (centre2 - want) // 2
        stop[axis] = start[axis] + want
    return Box(tuple(start), tuple(stop))  # type: ignore[arg-type]


def extract(array: np.ndarray, box: Box, fill: float) -> np.ndarray:
    """Cut ``box`` out of ``array`` (S, H, W), padding with ``fill`` where it leaves the array."""
    out = np.full(box.shape, fill, dtype=array.dtype)
    src, dst = [], []
    for axis in range(3):
        lo = max(box.start[axis], 0)
        hi = min(box.stop[axis], array.shape[axis])
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - box.start[axis], max(lo, hi) - box.start[axis]))
    out[tuple(dst)] = array[tuple(src)]
    return out


def box_origin(image: sitk.Image, box: Box) -> tuple[float, float, float]:
    """Physical position (mm) of the first voxel of ``box`` on ``image``'s grid."""
    s, h, w = box.start
    return image.TransformContinuousIndexToPhysicalPoint((float(w), float(h), float(s)))


def array_to_image(
    array: np.ndarray, spacing: tuple, origin: tuple, direction: tuple
) -> sitk.Image:
    """Wrap an (S, H, W) array as a SimpleITK image with the given (x, y, z) geometry."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in direction))
    return image


def restore_label(
    label: np.ndarray,
    processed: dict,
    original: dict,
    assumed_direction: list[float] | None = None,
) -> sitk.Image:
    """Put a label map predicted on the processed grid back onto the original scan's grid.

    Args:
        label: (S, H, W) integer label map on the processed grid.
        processed: ``{"spacing", "origin", "direction"}`` of the processed grid (x, y, z order).
        original: ``{"size", "spacing", "origin", "direction"}`` of the original image, and
            ``assumed_spacing`` when preprocessing used another spacing than the header's (the
            manifest's ``assume_spacing_scale``).
        assumed_direction: the direction preprocessing used instead of the file's header (when
            the manifest corrects a wrong header).

    Returns:
        A uint8 image with exactly the original size, spacing, origin and direction; voxels the
        processed grid did not cover (cropped away) are background. Nearest-neighbour resampling
        in physical space undoes the reorientation, resampling and crop in one step; with an
        assumed direction or spacing it is computed on the grid preprocessing used and then
        written with the header's geometry, so it overlays the original file voxel by voxel.
    """
    moving = array_to_image(
        label.astype(np.uint8), processed["spacing"], processed["origin"], processed["direction"]
    )
    reference = sitk.Image([int(s) for s in original["size"]], sitk.sitkUInt8)
    reference.SetSpacing(tuple(original.get("assumed_spacing") or original["spacing"]))
    reference.SetOrigin(tuple(original["origin"]))
    reference.SetDirection(tuple(assumed_direction or original["direction"]))
    restored = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    restored.SetSpacing(tuple(original["spacing"]))
    restored.SetDirection(tuple(original["direction"]))
    return restored


def geometry_of(image: sitk.Image) -> dict:
    """Size, spacing (mm), origin (mm), direction and orientation code of ``image`` (x, y, z)."""
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
        "orientation": orientation_code(image),
    }


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    """True when two images share size and (within ``tol``, relative for spacing) geometry."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=tol, atol=1e-6)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * max(1.0, max(a.GetSpacing())))
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )
