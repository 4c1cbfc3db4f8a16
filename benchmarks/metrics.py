"""Benchmark udaseg.metrics.evaluate_case against medpy on realistic 3D label volumes.

Builds synthetic abdominal-CT-like cases (a body outline with four organ classes, predictions with
boundary errors and scattered false-positive blobs inside the body), times udaseg's
``evaluate_case`` (Dice + ASSD + HD95 for every class) and medpy (``dc`` + ``assd`` + ``hd95`` per
class) on the same volumes, checks that the values agree to 1e-6 and prints the speed-up.

    python benchmarks/metrics.py                     # 3 cases of 200 x 256 x 256
    python benchmarks/metrics.py --size 64 96 96     # quick run
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from udaseg.metrics import evaluate_case

CLASSES = {"liver": [1], "right_kidney": [2], "left_kidney": [3], "spleen": [4]}
# organ centres and radii as fractions of the volume size, (D, H, W) order
ORGANS = {
    1: ((0.5, 0.45, 0.35), (0.25, 0.22, 0.2)),
    2: ((0.5, 0.62, 0.35), (0.12, 0.07, 0.06)),
    3: ((0.5, 0.62, 0.65), (0.12, 0.07, 0.06)),
    4: ((0.45, 0.5, 0.7), (0.15, 0.1, 0.08)),
}
SPACING_MM = (2.5, 0.8, 0.8)
TOL = 1e-6


def smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    # smoothing at low resolution then upsampling is much cheaper than smoothing the full volume
    small = tuple(max(4, n // 4) for n in shape)
    field = ndimage.gaussian_filter(rng.normal(size=small), sigma / 4)
    field = ndimage.zoom(field, [n / s for n, s in zip(shape, small, strict=True)], order=1)
    return field / field.std()


def ellipsoid(shape, centre, radii, wobble):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g / n - c) / r) ** 2 for g, n, c, r in zip(grid, shape, centre, radii, strict=True))
    return r2 + 0.15 * wobble <= 1.0


def make_case(shape, seed):
    """Return (pred, ref) uint8 label maps of ``shape`` with classes 1-4."""
    rng = np.random.default_rng(seed)
    wobble = smooth_noise(shape, rng, sigma=8.0)
    body = ellipsoid(shape, (0.5, 0.5, 0.5), (0.48, 0.4, 0.46), wobble)
    ref = np.zeros(shape, dtype=np.uint8)
    for label, (centre, radii) in ORGANS.items():
        ref[ellipsoid(shape, centre, radii, wobble) & body] = label
    pred = ref.copy()
    boundary_error = smooth_noise(shape, rng, sigma=3.0)
    grown = ndimage.grey_dilation(ref, size=(1, 3, 3))
    pred[boundary_error > 1.0] = grown[boundary_error > 1.0]
    pred[boundary_error < -1.2] = 0
    for label in ORGANS:
        _scatter_false_positives(pred, body, label, rng)
    return pred, ref


def _scatter_false_positives(pred, body, label, rng, n_blobs=15):
    inside = np.argwhere(body[::4, ::4, ::4]) * 4
    for centre in inside[rng.integers(0, len(inside), size=n_blobs)]:
        box = tuple(slice(c, c + int(rng.integers(1, 4))) for c in centre)
        pred[box] = label


def time_udaseg(cases):
    start = time.perf_counter()
    results = [
        evaluate_case(p, r, CLASSES, spacing_mm=SPACING_MM, metrics=("dice", "assd", "hd95"))
        for p, r in cases
    ]
    return time.perf_counter() - start, results


def time_medpy(cases):
    start = time.perf_counter()
    results = []
    for pred, ref in cases:
        per_class = {}
        for name, values in CLASSES.items():
            p, r = np.isin(pred, values), np.isin(ref, values)
            per_class[name] = {
                "dice": medpy_binary.dc(p, r),
                "assd": medpy_binary.assd(p, r, SPACING_MM),
                "hd95": medpy_binary.hd95(p, r, SPACING_MM),
            }
        results.append(per_class)
    return time.perf_counter() - start, results


def largest_difference(ours, theirs) -> float:
    return max(
        abs(a[name][metric] - b[name][metric])
        for a, b in zip(ours, theirs, strict=True)
        for name in a
        for metric in a[name]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, nargs=3, default=(200, 256, 256), metavar=("D", "H", "W")
    )
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = tuple(args.size)
    cases = [make_case(shape, args.seed + i) for i in range(args.cases)]
    print(f"{args.cases} cases of {shape}, {len(CLASSES)} classes, spacing {SPACING_MM} mm")
    udaseg_s, ours = time_udaseg(cases)
    medpy_s, theirs = time_medpy(cases)
    diff = largest_difference(ours, theirs)
    for name, values in ours[0].items():
        print(f"  case 0 {name:13s} " + "  ".join(f"{m} {v:8.4f}" for m, v in values.items()))
    print(f"largest |udaseg - medpy| = {diff:.2e}")
    if not diff <= TOL:
        raise SystemExit(f"values disagree by {diff:.2e} > {TOL}")
    print(f"udaseg {udaseg_s:.2f} s, medpy {medpy_s:.2f} s, ratio {medpy_s / udaseg_s:.1f}x")


if __name__ == "__main__":
    main()
