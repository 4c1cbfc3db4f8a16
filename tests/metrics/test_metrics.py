"""Analytic and behavioural tests of udaseg.metrics (medpy cross-checks: test_medpy.py)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from udaseg.errors import UdasegError
from udaseg.metrics import (
    compute_asd,
    compute_assd,
    compute_dice,
    compute_hd,
    compute_hd95,
    directed_surface_distances,
    evaluate_case,
    image_diagonal,
    surface,
)

ALL_DISTANCES = (compute_asd, compute_assd, compute_hd95, compute_hd)


def cube(shape, lo, hi):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def ball(shape, centre, radius):
    grid = np.indices(shape)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return dist2 <= radius**2


# --- Dice -------------------------------------------------------------------------------------


def test_dice_known_overlap():
    a = cube((10, 10), (0, 0), (4, 5))  # 20 voxels
    b = cube((10, 10), (2, 0), (6, 5))  # 20 voxels, 10 shared
    assert compute_dice(a, b) == pytest.approx(0.5)
    assert compute_dice(a, a) == 1.0
    assert compute_dice(a, ~a) == 0.0


def test_dice_of_two_empty_masks_is_one_without_warning():
    empty = np.zeros((4, 5, 6), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute_dice(empty, empty) == 1.0
        assert compute_dice(empty, cube((4, 5, 6), (1, 1, 1), (2, 2, 2))) == 0.0


# --- analytic distances -----------------------------------------------------------------------


@pytest.mark.parametrize("spacing", [None, (2.5, 1.0, 0.7)])
def test_parallel_planes_shifted_along_axis_0(spacing):
    # a one-voxel-thick full plane is all surface, and every voxel's nearest partner is straight
    # across, so every directed distance is exactly k * spacing[0]
    shape, k = (12, 6, 7), 4
    a = cube(shape, (3, 0, 0), (4, 6, 7))
    b = cube(shape, (3 + k, 0, 0), (4 + k, 6, 7))
    expected = k * (1.0 if spacing is None else spacing[0])
    for metric in ALL_DISTANCES:
        assert metric(a, b, spacing) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_cube_shifted_along_anisotropic_axis(connectivity):
    # the far face of the shifted cube is k voxels of 2.5 mm from the other cube's surface and no
    # surface voxel is farther
    shape, k, spacing = (20, 24, 20), 2, (1.0, 2.5, 1.0)
    a = cube(shape, (5, 5, 5), (15, 15, 15))
    b = cube(shape, (5, 5 + k, 5), (15, 15 + k, 15))
    assert compute_hd(a, b, spacing, connectivity) == pytest.approx(2.5 * k)
    assert compute_hd(b, a, spacing, connectivity) == pytest.approx(2.5 * k)
    assert 0 < compute_assd(a, b, spacing, connectivity) < 2.5 * k
    assert compute_assd(a, b, spacing, connectivity) == pytest.approx(
        compute_assd(b, a, spacing, connectivity)
    )


def test_sphere_vs_larger_sphere_distance_is_radius_difference():
    shape, centre = (40, 40, 40), (20, 20, 20)
    small, large = ball(shape, centre, 9), ball(shape, centre, 13)
    assert compute_assd(small, large) == pytest.approx(4.0, abs=0.5)
    assert compute_hd95(small, large) == pytest.approx(4.0, abs=1.0)
    assert compute_hd(small, large) == pytest.approx(4.0, abs=1.0)


def test_single_voxels_distance_is_euclidean():
    shape, spacing = (10, 10, 10), (1.0, 2.0, 3.0)
    a = cube(shape, (2, 3, 4), (3, 4, 5))
    b = cube(shape, (7, 1, 9), (8, 2, 10))
    expected = math.sqrt((5 * 1.0) ** 2 + (2 * 2.0) ** 2 + (5 * 3.0) ** 2)
    for metric in ALL_DISTANCES:
        assert metric(a, b, spacing) == pytest.approx(expected, abs=1e-12)


def test_mask_touching_every_border_has_surface_there():
    # A fills the array: its surface is the array's outer shell only if outside counts as
    # background. B is the inner 5-cube, whose shell is one voxel inside A's.
    shape = (7, 7, 7)
    a = np.ones(shape, dtype=bool)
    b = cube(shape, (1, 1, 1), (6, 6, 6))
    faces, edges, corners = 6 * 25, 12 * 5, 8  # A's shell voxels at distance 1, sqrt2, sqrt3
    a_to_b = faces + edges * math.sqrt(2) + corners * math.sqrt(3)
    n_a, n_b = faces + edges + corners, 5**3 - 3**3
    assert compute_asd(a, b) == pytest.approx(a_to_b / n_a)
    assert compute_asd(b, a) == pytest.approx(1.0)
    assert compute_assd(a, b) == pytest.approx((a_to_b + n_b) / (n_a + n_b))
    assert compute_assd(a, b, mode="mean-of-directed") == pytest.approx((a_to_b / n_a + 1) / 2)
    assert compute_hd(a, b) == pytest.approx(math.sqrt(3))


def test_2d_lines_and_rectangles():
    a = cube((9, 12), (2, 0), (3, 12))
    b = cube((9, 12), (7, 0), (8, 12))
    for metric in ALL_DISTANCES:
        assert metric(a, b, (0.5, 3.0)) == pytest.approx(2.5)
    rect_a = cube((20, 20), (5, 5), (12, 12))
    rect_b = cube((20, 20), (5, 8), (12, 15))
    assert compute_hd(rect_a, rect_b) == pytest.approx(3.0)
    assert compute_dice(rect_a, rect_b) == pytest.approx(4 / 7)


def test_pooled_and_max_directed_hd95_differ_with_scattered_false_positives():
    # 40 far-away false-positive voxels are ~7% of the prediction's surface (so they own the top
    # of its directed 95th percentile) but ~4% of the pooled list (so the pooled 95th percentile
    # ignores them). This is why --hd95 must say which definition a table used.
    shape = (40, 40, 40)
    ref = cube(shape, (15, 15, 15), (25, 25, 25))
    pred = ref.copy()
    rng = np.random.default_rng(0)
    far = rng.integers(0, 6, size=(40, 3)) + rng.choice([0, 34], size=(40, 3))
    pred[tuple(far.T)] = True
    assert np.count_nonzero(pred) - np.count_nonzero(ref) >= 35
    pooled = compute_hd95(pred, ref, mode="pooled")
    directed = compute_hd95(pred, ref, mode="max-directed")
    assert pooled < 1.0
    assert directed > 10.0


def test_assd_modes_differ_when_surfaces_have_different_sizes():
    shape = (30, 30, 30)
    small = cube(shape, (12, 12, 12), (14, 14, 14))
    large = cube(shape, (5, 5, 5), (25, 25, 25))
    pooled = compute_assd(small, large)
    mean_of_directed = compute_assd(small, large, mode="mean-of-directed")
    d_sl, d_ls = directed_surface_distances(small, large)
    assert mean_of_directed == pytest.approx((d_sl.mean() + d_ls.mean()) / 2)
    assert abs(pooled - mean_of_directed) > 1.0


# --- empty masks ------------------------------------------------------------------------------


def test_empty_masks_give_zero_or_nan_without_warnings():
    shape = (6, 7, 8)
    empty = np.zeros(shape, dtype=bool)
    full = cube(shape, (1, 1, 1), (4, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for metric in ALL_DISTANCES:
            assert metric(empty, empty) == 0.0
            assert math.isnan(metric(empty, full))
            assert math.isnan(metric(full, empty))
        assert math.isnan(compute_hd95(full, empty, mode="max-directed"))
        assert math.isnan(compute_assd(empty, full, mode="mean-of-directed"))


def test_directed_distances_towards_an_empty_mask_are_infinite():
    empty = np.zeros((5, 5), dtype=bool)
    one = cube((5, 5), (0, 0), (3, 3))
    to_empty, from_empty = directed_surface_distances(one, empty)
    assert to_empty.size == 8 and np.all(np.isinf(to_empty))
    assert from_empty.size == 0


# --- errors -----------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(UdasegError, match=r"\(4, 5\).*\(4, 6\)"):
        compute_hd95(np.ones((4, 5)), np.ones((4, 6)))
    with pytest.raises(UdasegError, match=r"\(4, 5\).*\(4, 6\)"):
        compute_dice(np.ones((4, 5)), np.ones((4, 6)))


def test_unknown_modes_and_bad_spacing_raise_udaseg_error():
    a = cube((6, 6), (1, 1), (3, 3))
    with pytest.raises(UdasegError, match='did you mean "max-directed"'):
        compute_hd95(a, a, mode="max_directed")
    with pytest.raises(UdasegError, match="assd definition"):
        compute_assd(a, a, mode="mean")
    with pytest.raises(UdasegError, match="spacing"):
        compute_hd(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(UdasegError, match="connectivity"):
        compute_hd(a, a, connectivity=3)


# --- sharing of work -------------------------------------------------------------------------


def test_evaluate_case_searches_each_class_surface_pair_once(monkeypatch):
    # every distance metric of a class comes from one pair of nearest-neighbour searches over the
    # two surfaces, whatever the number of metrics asked for
    trees = []
    real_tree = surface.cKDTree

    def counting_tree(points, *args, **kwargs):
        trees.append(len(points))
        return real_tree(points, *args, **kwargs)

    monkeypatch.setattr(surface, "cKDTree", counting_tree)
    labels = np.zeros((30, 30, 30), dtype=np.int16)
    labels[5:10, 5:10, 5:10] = 1
    labels[20:25, 20:26, 3:9] = 2
    result = evaluate_case(
        labels,
        np.roll(labels, 2, axis=0),
        {"a": [1], "b": [2]},
        spacing_mm=(1.0, 1.0, 1.0),
        metrics=("dice", "assd", "asd", "hd95", "hd"),
    )
    assert len(trees) == 4
    # a tree holds one surface (at most the 5x6x6 box's 5*6*6 - 3*4*4 = 132 voxels), not a volume
    assert all(n <= 132 for n in trees)
    assert result["a"]["hd"] == pytest.approx(2.0)


# --- evaluate_case ----------------------------------------------------------------------------


def _two_label_maps():
    ref = np.zeros((16, 20, 20), dtype=np.uint8)
    ref[2:8, 3:10, 3:10] = 1
    ref[9:14, 10:17, 8:18] = 2
    ref[10:12, 12:15, 11:15] = 4
    pred = np.roll(ref, 1, axis=2)
    pred[0, 0, 0] = 2
    return pred, ref


def test_evaluate_case_matches_the_single_metric_functions():
    pred, ref = _two_label_maps()
    spacing = (3.0, 0.8, 0.8)
    classes = {"one": [1], "two": {2}, "WT": [1, 2, 4]}
    result = evaluate_case(
        pred,
        ref,
        classes,
        spacing_mm=spacing,
        metrics=("dice", "assd", "hd95", "asd", "hd"),
        hd95_mode="max-directed",
        assd_mode="mean-of-directed",
        connectivity=2,
    )
    assert list(result) == ["one", "two", "WT"]
    for name, values in classes.items():
        p, r = np.isin(pred, list(values)), np.isin(ref, list(values))
        assert list(result[name]) == ["dice", "assd", "hd95", "asd", "hd"]
        assert result[name]["dice"] == pytest.approx(compute_dice(p, r))
        assert result[name]["assd"] == pytest.approx(
            compute_assd(p, r, spacing, 2, mode="mean-of-directed")
        )
        assert result[name]["hd95"] == pytest.approx(
            compute_hd95(p, r, spacing, 2, mode="max-directed")
        )
        assert result[name]["asd"] == pytest.approx(compute_asd(p, r, spacing, 2))
        assert result[name]["hd"] == pytest.approx(compute_hd(p, r, spacing, 2))
    # the stray voxel of label 2 at the corner is far from class "two"
    assert result["two"]["hd"] > 10


def test_evaluate_case_units():
    pred, ref = _two_label_maps()
    classes = {"one": [1]}
    in_mm = evaluate_case(pred, ref, classes, spacing_mm=(3.0, 2.0, 2.0), metrics=("hd",))
    in_voxels = evaluate_case(pred, ref, classes, spacing_mm=None, unit="voxel", metrics=("hd",))
    assert in_voxels["one"]["hd"] == pytest.approx(1.0)  # shifted by one voxel along axis 2
    assert in_mm["one"]["hd"] == pytest.approx(2.0)
    with pytest.raises(UdasegError, match="spacing"):
        evaluate_case(pred, ref, classes, spacing_mm=None)
    with pytest.raises(UdasegError, match="spacing"):
        evaluate_case(pred, ref, classes, spacing_mm=(1.0, 1.0))


def test_evaluate_case_empty_class_policies():
    shape, spacing = (10, 12, 14), (2.0, 1.0, 0.5)
    ref = np.zeros(shape, dtype=np.int32)
    ref[2:5, 2:5, 2:5] = 1
    pred = np.zeros_like(ref)
    classes = {"missed": [1], "absent": [3]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_nan = evaluate_case(pred, ref, classes, spacing_mm=spacing)
        as_diag = evaluate_case(pred, ref, classes, spacing_mm=spacing, empty_distance="diagonal")
        voxel_diag = evaluate_case(
            pred, ref, classes, spacing_mm=spacing, unit="voxel", empty_distance="diagonal"
        )
    assert as_nan["missed"]["dice"] == 0.0
    assert math.isnan(as_nan["missed"]["assd"]) and math.isnan(as_nan["missed"]["hd95"])
    diagonal = math.sqrt(20.0**2 + 12.0**2 + 7.0**2)
    assert image_diagonal(shape, spacing) == pytest.approx(diagonal)
    assert as_diag["missed"]["assd"] == pytest.approx(diagonal)
    assert as_diag["missed"]["hd95"] == pytest.approx(diagonal)
    assert voxel_diag["missed"]["hd95"] == pytest.approx(math.sqrt(10**2 + 12**2 + 14**2))
    for result in (as_nan, as_diag):
        assert result["absent"] == {"dice": 1.0, "assd": 0.0, "hd95": 0.0}


def test_evaluate_case_errors():
    pred, ref = _two_label_maps()
    with pytest.raises(UdasegError, match='did you mean "hd95"'):
        evaluate_case(pred, ref, {"one": [1]}, spacing_mm=(1, 1, 1), metrics=("dice", "hd_95"))
    with pytest.raises(UdasegError, match="hd95 definition"):
        evaluate_case(pred, ref, {"one": [1]}, spacing_mm=(1, 1, 1), hd95_mode="monai")
    with pytest.raises(UdasegError, match=r"\(16, 20, 20\).*\(16, 20, 19\)"):
        evaluate_case(pred, ref[..., :19], {"one": [1]}, spacing_mm=(1, 1, 1))
    with pytest.raises(UdasegError, match="empty-mask"):
        evaluate_case(pred, ref, {"one": [1]}, spacing_mm=(1, 1, 1), empty_distance="zero")


def test_evaluate_case_2d():
    ref = np.zeros((20, 30), dtype=np.int64)
    ref[4:10, 5:20] = 1
    pred = np.zeros_like(ref)
    pred[7:13, 5:20] = 1
    result = evaluate_case(pred, ref, {"fg": [1]}, spacing_mm=(2.0, 1.0), metrics=("dice", "hd"))
    assert result["fg"]["dice"] == pytest.approx(0.5)
    assert result["fg"]["hd"] == pytest.approx(6.0)
