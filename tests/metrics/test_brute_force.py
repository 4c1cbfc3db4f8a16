"""The fast surface-distance path against a brute-force reference on tiny random volumes.

The reference takes the surface from ``scipy.ndimage.binary_erosion`` on the whole, uncropped
array and measures every pair of surface voxels (``scipy.spatial.distance.cdist``), so it shares
nothing with udaseg's bounding-box erosion, shared-voxel shortcut and KD-tree search.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from udaseg.metrics import (
    compute_asd,
    compute_assd,
    compute_hd,
    compute_hd95,
    directed_surface_distances,
    evaluate_case,
)

TOL = 1e-9


def brute_force_surface(mask: np.ndarray, connectivity: int) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def brute_force_directed(pred, ref, spacing, connectivity):
    """Every surface voxel of one mask against every surface voxel of the other, in C order."""
    points_pred = np.argwhere(brute_force_surface(pred, connectivity)) * np.asarray(spacing)
    points_ref = np.argwhere(brute_force_surface(ref, connectivity)) * np.asarray(spacing)
    if len(points_pred) == 0 or len(points_ref) == 0:
        return np.full(len(points_pred), np.inf), np.full(len(points_ref), np.inf)
    pairwise = cdist(points_pred, points_ref)
    return pairwise.min(axis=1), pairwise.min(axis=0)


def random_mask(shape, rng, specks: int) -> np.ndarray:
    """Smoothed-noise blobs (some touching the array edge, some with holes) plus single-voxel
    false positives scattered anywhere."""
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=rng.uniform(0.8, 2.0))
    mask = noise > np.quantile(noise, rng.uniform(0.6, 0.9))
    spots = tuple(rng.integers(0, n, size=specks) for n in shape)
    mask[spots] = True
    return mask


SHAPES = [(9, 13, 11), (5, 20, 7), (1, 12, 15), (17, 19), (3, 3, 3)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_directed_distances_match_brute_force(shape, seed):
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.uniform(0.3, 3.0, size=len(shape)))
    pred = random_mask(shape, rng, specks=int(rng.integers(0, 6)))
    ref = random_mask(shape, rng, specks=int(rng.integers(0, 3)))
    for connectivity in range(1, len(shape) + 1):
        expected = brute_force_directed(pred, ref, spacing, connectivity)
        ours = directed_surface_distances(pred, ref, spacing, connectivity)
        for got, want in zip(ours, expected, strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("connectivity", [1, 3])
@pytest.mark.parametrize("seed", range(4))
def test_every_metric_and_mode_matches_brute_force(seed, connectivity):
    rng = np.random.default_rng(100 + seed)
    shape, spacing = (11, 14, 12), (2.5, 0.7, 0.9)
    ref = random_mask(shape, rng, specks=0)
    pred = random_mask(shape, rng, specks=8)  # far specks: the two HD95 modes drift apart
    d_pr, d_rp = brute_force_directed(pred, ref, spacing, connectivity)
    pooled = np.concatenate([d_pr, d_rp])
    args = (pred, ref, spacing, connectivity)
    assert compute_asd(*args) == pytest.approx(d_pr.mean(), rel=0, abs=TOL)
    assert compute_asd(ref, pred, spacing, connectivity) == pytest.approx(d_rp.mean(), abs=TOL)
    assert compute_assd(*args) == pytest.approx(pooled.mean(), rel=0, abs=TOL)
    assert compute_assd(*args, mode="mean-of-directed") == pytest.approx(
        (d_pr.mean() + d_rp.mean()) / 2, rel=0, abs=TOL
    )
    assert compute_hd95(*args) == pytest.approx(np.percentile(pooled, 95), rel=0, abs=TOL)
    assert compute_hd95(*args, mode="max-directed") == pytest.approx(
        max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)), rel=0, abs=TOL
    )
    assert compute_hd(*args) == pytest.approx(pooled.max(), rel=0, abs=TOL)


@pytest.mark.parametrize("connectivity", [1, 2])
def test_empty_masks_against_brute_force(connectivity):
    rng = np.random.default_rng(7)
    shape = (6, 9, 8)
    empty = np.zeros(shape, dtype=bool)
    mask = random_mask(shape, rng, specks=3)
    to_empty, from_empty = directed_surface_distances(mask, empty, (1.5, 1.0, 0.5), connectivity)
    assert to_empty.size == np.count_nonzero(brute_force_surface(mask, connectivity))
    assert np.all(np.isinf(to_empty)) and from_empty.size == 0
    for metric in (compute_asd, compute_assd, compute_hd95, compute_hd):
        assert math.isnan(metric(empty, mask, None, connectivity))
        assert metric(empty, empty, None, connectivity) == 0.0


@pytest.mark.parametrize("connectivity", [1, 3])
def test_evaluate_case_on_label_maps_with_specks_matches_brute_force(connectivity):
    rng = np.random.default_rng(11)
    shape, spacing = (10, 16, 14), (3.0, 0.8, 1.1)
    ref = np.zeros(shape, dtype=np.uint8)
    ref[2:8, 3:9, 2:7] = 1
    ref[3:9, 8:14, 8:13] = 2
    ref[4:6, 10:12, 9:11] = 3  # inside class 2's box: region "2+3" has no hole there
    pred = np.roll(ref, 1, axis=1)
    pred[ndimage.gaussian_filter(rng.normal(size=shape), 1.0) > 0.6] = 0
    spots = tuple(rng.integers(0, n, size=12) for n in shape)
    pred[spots] = rng.integers(1, 4, size=12)
    classes = {"one": [1], "two": [2], "region": [2, 3], "absent": [5], "missed": [4]}
    pred[0, 0, 0] = 4  # class "missed" is only in the prediction
    result = evaluate_case(
        pred,
        ref,
        classes,
        spacing_mm=spacing,
        metrics=("dice", "assd", "hd95", "asd", "hd"),
        connectivity=connectivity,
    )
    for name, values in classes.items():
        p, r = np.isin(pred, values), np.isin(ref, values)
        d_pr, d_rp = brute_force_directed(p, r, spacing, connectivity)
        total = np.count_nonzero(p) + np.count_nonzero(r)
        dice = 2 * np.count_nonzero(p & r) / total if total else 1.0
        assert result[name]["dice"] == pytest.approx(dice, rel=0, abs=TOL)
        if d_pr.size == 0 and d_rp.size == 0:
            assert result[name]["assd"] == result[name]["hd95"] == result[name]["hd"] == 0.0
        elif d_pr.size == 0 or d_rp.size == 0:
            assert all(math.isnan(result[name][m]) for m in ("assd", "hd95", "asd", "hd"))
        else:
            pooled = np.concatenate([d_pr, d_rp])
            assert result[name]["assd"] == pytest.approx(pooled.mean(), rel=0, abs=TOL)
            assert result[name]["hd95"] == pytest.approx(np.percentile(pooled, 95), abs=TOL)
            assert result[name]["asd"] == pytest.approx(d_pr.mean(), rel=0, abs=TOL)
            assert result[name]["hd"] == pytest.approx(pooled.max(), rel=0, abs=TOL)
    assert math.isnan(result["missed"]["assd"]) and result["absent"]["hd"] == 0.0
