"""Cross-checks of udaseg.metrics against medpy 0.5.2 and an independent brute-force search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage
from scipy.spatial import cKDTree

from udaseg.metrics import (
    compute_asd,
    compute_assd,
    compute_dice,
    compute_hd,
    compute_hd95,
    evaluate_case,
)

SPACING_3D = (2.5, 0.8, 1.1)
TOL = 1e-6


def blobby_labels(shape, seed, n_labels=3, sigma=2.0):
    """Smoothed noise cut into ``n_labels`` foreground levels: blobs that touch the borders."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    cuts = np.quantile(noise, np.linspace(0.55, 0.95, n_labels))
    return np.searchsorted(cuts, noise).astype(np.int16)


def prediction_like(ref, seed, n_false_positives=25):
    """``ref`` perturbed by a shifted, partly relabelled copy plus scattered false positives."""
    rng = np.random.default_rng(seed)
    pred = np.roll(ref, 1, axis=1)
    noise = ndimage.gaussian_filter(rng.normal(size=ref.shape), 1.5)
    pred[noise > np.quantile(noise, 0.9)] = 0
    spots = tuple(rng.integers(0, n, size=n_false_positives) for n in ref.shape)
    pred[spots] = rng.integers(1, ref.max() + 1, size=n_false_positives)
    return pred


@pytest.fixture(scope="module")
def volume_pair():
    ref = blobby_labels((18, 22, 26), seed=1)
    return prediction_like(ref, seed=2), ref


def reference_surface(mask, connectivity):
    """Surface by explicit neighbour checks (no erosion): foreground with a background neighbour."""
    padded = np.pad(mask, 1)
    surface = np.zeros_like(mask)
    for offset in itertools.product((-1, 0, 1), repeat=mask.ndim):
        if 0 < np.count_nonzero(offset) <= connectivity:
            window = tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, mask.shape, strict=True))
            surface |= mask & ~padded[window]
    return surface


def brute_force_directed(a, b, spacing, connectivity):
    points_a = np.argwhere(reference_surface(a, connectivity)) * np.asarray(spacing)
    points_b = np.argwhere(reference_surface(b, connectivity)) * np.asarray(spacing)
    return cKDTree(points_b).query(points_a)[0], cKDTree(points_a).query(points_b)[0]


@pytest.mark.parametrize("connectivity", [1, 2, 3])
@pytest.mark.parametrize("label", [1, 2, 3])
def test_matches_medpy_on_random_3d_labels(volume_pair, connectivity, label):
    pred_labels, ref_labels = volume_pair
    pred, ref = pred_labels == label, ref_labels == label
    assert pred.any() and ref.any()
    args = (SPACING_3D, connectivity)
    assert compute_dice(pred, ref) == pytest.approx(medpy_binary.dc(pred, ref), rel=0, abs=TOL)
    assert compute_assd(pred, ref, *args) == pytest.approx(
        medpy_binary.assd(pred, ref, *args), abs=TOL
    )
    assert compute_asd(pred, ref, *args) == pytest.approx(
        medpy_binary.asd(pred, ref, *args), abs=TOL
    )
    assert compute_asd(ref, pred, *args) == pytest.approx(
        medpy_binary.asd(ref, pred, *args), abs=TOL
    )
    assert compute_hd95(pred, ref, *args) == pytest.approx(
        medpy_binary.hd95(pred, ref, *args), abs=TOL
    )
    assert compute_hd(pred, ref, *args) == pytest.approx(
        medpy_binary.hd(pred, ref, *args), rel=0, abs=TOL
    )


@pytest.mark.parametrize("connectivity", [1, 3])
def test_mean_of_directed_assd_matches_old_medpy_definition(volume_pair, connectivity):
    pred_labels, ref_labels = volume_pair
    pred, ref = pred_labels >= 2, ref_labels >= 2
    args = (SPACING_3D, connectivity)
    old_assd = (medpy_binary.asd(pred, ref, *args) + medpy_binary.asd(ref, pred, *args)) / 2
    ours = compute_assd(pred, ref, *args, mode="mean-of-directed")
    assert ours == pytest.approx(old_assd, rel=0, abs=TOL)
    assert abs(ours - compute_assd(pred, ref, *args)) > 1e-3  # the two definitions do differ


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_max_directed_hd95_matches_brute_force(volume_pair, connectivity):
    pred_labels, ref_labels = volume_pair
    pred, ref = pred_labels == 3, ref_labels == 3
    d_pr, d_rp = brute_force_directed(pred, ref, SPACING_3D, connectivity)
    expected = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    ours = compute_hd95(pred, ref, SPACING_3D, connectivity, mode="max-directed")
    assert ours == pytest.approx(expected, rel=0, abs=TOL)
    pooled = np.percentile(np.concatenate([d_pr, d_rp]), 95)
    assert compute_hd95(pred, ref, SPACING_3D, connectivity) == pytest.approx(
        pooled, rel=0, abs=TOL
    )


@pytest.mark.parametrize("connectivity", [1, 2])
def test_matches_medpy_in_2d(connectivity):
    ref = blobby_labels((40, 50), seed=5, n_labels=2, sigma=3.0)
    pred = prediction_like(ref, seed=6, n_false_positives=6)
    spacing = (0.7, 1.9)
    for label in (1, 2):
        p, r = pred == label, ref == label
        args = (spacing, connectivity)
        assert compute_assd(p, r, *args) == pytest.approx(
            medpy_binary.assd(p, r, *args), rel=0, abs=TOL
        )
        assert compute_hd95(p, r, *args) == pytest.approx(
            medpy_binary.hd95(p, r, *args), rel=0, abs=TOL
        )
        assert compute_hd(p, r, *args) == pytest.approx(
            medpy_binary.hd(p, r, *args), rel=0, abs=TOL
        )


def test_evaluate_case_matches_medpy_for_classes_and_regions(volume_pair):
    pred_labels, ref_labels = volume_pair
    classes = {"one": [1], "three": [3], "all": [1, 2, 3]}
    result = evaluate_case(pred_labels, ref_labels, classes, spacing_mm=SPACING_3D)
    for name, values in classes.items():
        p, r = np.isin(pred_labels, values), np.isin(ref_labels, values)
        assert result[name]["dice"] == pytest.approx(medpy_binary.dc(p, r), rel=0, abs=TOL)
        assert result[name]["assd"] == pytest.approx(
            medpy_binary.assd(p, r, SPACING_3D), rel=0, abs=TOL
        )
        assert result[name]["hd95"] == pytest.approx(
            medpy_binary.hd95(p, r, SPACING_3D), rel=0, abs=TOL
        )
