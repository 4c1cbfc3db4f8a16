"""The short-axis view: oblique stacks rearranged exactly from their header; the anatomy check."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from udaseg.data import geometry as geo
from udaseg.data.anatomy import disagreements, short_axis_layout
from udaseg.data.manifest import VIEWS

# an MS-CMRSeg header (patient 1, "PSR"): columns = the x, y, z index axes in LPS
REAL_DIRECTION = np.array([[0.628, 0.507, -0.591], [0.729, -0.116, 0.675], [-0.273, 0.854, 0.442]])


def _orthonormal(matrix: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(matrix)
    return u @ vt


def _stored(array: np.ndarray, direction: np.ndarray, axes, signs) -> sitk.Image:
    """``array`` ((z, y, x), on ``direction``) stored with its index axes rearranged: file axis i
    is axis ``axes[i]``, reversed where ``signs[i]`` is -1; the header tells the truth."""
    spacing, origin = np.array([0.7, 0.8, 5.0]), np.array([10.0, -20.0, 30.0])
    size = np.array(array.shape[::-1])
    corner = [0 if signs[axes.index(a)] > 0 else size[a] - 1 for a in range(3)]
    start = origin + direction @ (spacing * corner)
    data = np.flip(array, tuple(2 - a for a in range(3) if signs[axes.index(a)] < 0))
    data = np.transpose(data, [2 - axes[2 - a] for a in range(3)])
    columns = np.column_stack([signs[i] * direction[:, axes[i]] for i in range(3)])
    return geo.array_to_image(
        np.ascontiguousarray(data), spacing[list(axes)], start, tuple(columns.ravel())
    )


def test_every_manifest_view_has_a_canonical_grid():
    for view in VIEWS:
        assert len(geo.canonical_direction(view)) == 9
    frame = geo.SHORT_AXIS_FRAME
    np.testing.assert_allclose(frame.T @ frame, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(frame), 1.0)  # right-handed, as LPS


def test_any_storage_of_a_stack_gives_the_same_array_and_grid():
    """All 48 ways of storing one oblique stack (header telling the truth) come out identical,
    voxel for voxel (no interpolation), with the acquired slices as slices."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1000, (4, 5, 6)).astype(np.int16)  # (slices, rows, cols) as acquired
    direction = _orthonormal(REAL_DIRECTION)
    reference = geo.to_canonical(_stored(array, direction, (0, 1, 2), (1, 1, 1)), "short-axis")
    expected = sitk.GetArrayFromImage(reference)
    assert expected.shape[0] == 4  # the 4 acquired planes stay the slices
    for axes in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            image = geo.to_canonical(_stored(array, direction, axes, signs), "short-axis")
            np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)
            np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-9)
            np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-6)
            np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing())


def test_snapping_keeps_every_voxel_where_it_was():
    array = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    image = _stored(array, _orthonormal(REAL_DIRECTION), (2, 0, 1), (-1, 1, -1))
    snapped = geo.to_canonical(image, "short-axis")
    values = sitk.GetArrayFromImage(snapped)
    for index in itertools.product(*(range(n) for n in snapped.GetSize())):
        point = snapped.TransformIndexToPhysicalPoint(index)
        source = image.TransformPhysicalPointToIndex(point)
        assert values[index[::-1]] == image[source]


def test_body_views_cut_a_short_axis_stack_across_its_planes():
    """Why the short-axis view exists: snapping to body axes slices this 12-plane stack along an
    in-plane axis (192 'slices' of 12 x 192), and differently for PSR and LSP headers."""
    image = sitk.Image([192, 192, 12], sitk.sitkUInt8)
    image.SetSpacing((1.25, 1.25, 12.0))
    image.SetDirection(tuple(_orthonormal(REAL_DIRECTION).ravel()))
    assert geo.orientation_code(image) == "PSR"
    assert sitk.GetArrayFromImage(geo.to_canonical(image, "axial")).shape[0] == 192
    assert sitk.GetArrayFromImage(geo.to_canonical(image, "short-axis")).shape == (12, 192, 192)


def _heart(shape=(6, 40, 40), rv_side=-1, flip_slices=False) -> np.ndarray:
    """Class ids (S, H, W): 1 myocardium ring around a 2 LV disc, 3 RV beside it on the
    ``rv_side`` of W, in the basal 4 slices only (or the first 4 with ``flip_slices``)."""
    s, h, w = np.mgrid[: shape[0], : shape[1], : shape[2]]
    r = np.hypot(h - 20, w - 22)
    label = np.zeros(shape, np.uint8)
    label[r < 9] = 1
    label[r < 6] = 2
    basal = s >= 2 if not flip_slices else s < 4
    label[(np.hypot(h - 20, w - 22 - rv_side * 13) < 5) & (label == 0) & basal] = 3
    return label


def test_short_axis_layout_finds_the_rv_side_and_the_ring():
    layout = short_axis_layout(_heart(), (5.0, 1.0, 1.0), myo=1, lv=2, rv=3)
    assert layout is not None
    assert layout.key == ("W", -1, 1) and layout.myo_around_lv == 1.0
    assert layout.rv_offset_mm[2] < -10 and layout.rv_offset_mm[0] > 0
    assert short_axis_layout(np.zeros((2, 4, 4), np.uint8), (1, 1, 1), myo=1, lv=2, rv=3) is None


def test_disagreements_name_the_mirrored_case_and_a_missing_ring():
    layouts = {
        str(i): short_axis_layout(_heart(), (5.0, 1.0, 1.0), myo=1, lv=2, rv=3) for i in range(3)
    }
    assert disagreements(layouts) == {}
    layouts["mirrored"] = short_axis_layout(_heart(rv_side=1), (5, 1, 1), myo=1, lv=2, rv=3)
    layouts["reversed"] = short_axis_layout(_heart(flip_slices=True), (5, 1, 1), myo=1, lv=2, rv=3)
    no_ring = _heart()
    no_ring[no_ring == 1] = 0
    layouts["no_ring"] = short_axis_layout(no_ring, (5, 1, 1), myo=1, lv=2, rv=3)
    layouts["empty"] = None
    found = disagreements(layouts)
    assert set(found) == {"mirrored", "reversed", "no_ring", "empty"}
    assert "+W" in found["mirrored"] and "-W, +S" in found["mirrored"]
    assert "surrounds only 0%" in found["no_ring"]


@pytest.mark.parametrize("scale", [None, (0.6, 0.6, 1.0)])
def test_restore_label_undoes_short_axis_snapping_and_an_assumed_spacing(scale):
    rng = np.random.default_rng(1)
    label = rng.integers(0, 4, (5, 7, 9)).astype(np.uint8)
    header = _stored(label, _orthonormal(REAL_DIRECTION), (1, 0, 2), (1, -1, 1))
    working = sitk.Image(header)
    original = geo.geometry_of(header)
    if scale:
        spacing = [s * f for s, f in zip(header.GetSpacing(), scale, strict=True)]
        working.SetSpacing(spacing)
        original["assumed_spacing"] = spacing
    snapped = geo.to_canonical(working, "short-axis")
    processed = {
        "spacing": snapped.GetSpacing(),
        "origin": snapped.GetOrigin(),
        "direction": snapped.GetDirection(),
    }
    restored = geo.restore_label(sitk.GetArrayFromImage(snapped), processed, original)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(header))
    assert restored.GetSpacing() == header.GetSpacing()
