"""Benchmark udaseg.metrics.evaluate_case against medpy on realistic 3D label volumes.

Builds synthetic abdominal-CT-like cases (a body outline with four organ classes) and two
predictions of each: "clean" (boundary errors only: organs grown or eroded in places, holes) and
"specks" (the same plus 15 scattered false-positive blobs per class inside the body, which make
every class's bounding box nearly the whole body). Times udaseg's ``evaluate_case`` (Dice + ASSD +
HD95 for every class) and medpy (``dc`` + ``assd`` + ``hd95`` per class) on the same volumes and
prints, per kind of prediction, both times summed over the cases, the speed-up and the largest
|udaseg - medpy| of each metric over all cases and classes. Both run single-threaded, case by case
in turn. Exits non-zero when any value differs by more than 1e-6.

    python benchmarks/metrics.py                     # 3 cases of each kind, 200 x 256 x 256
    python benchmarks/metrics.py --size 64 96 96     # quick run
"""

from __future__ import annotations

import argparse
import math
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
METRICS = ("dice", "assd", "hd95")


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
    """Return (ref, clean_pred, specks_pred) uint8 label maps of ``shape`` with classes 1-4."""
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
    specks = pred.copy()
    for label in ORGANS:
        _scatter_false_positives(specks, body, label, rng)
    return ref, pred, specks


def _scatter_false_positives(pred, body, label, rng, n_blobs=15):
    inside = np.argwhere(body[::4, ::4, ::4]) * 4
    for centre in inside[rng.integers(0, len(inside), size=n_blobs)]:
        box = tuple(slice(c, c + int(rng.integers(1, 4))) for c in centre)
        pred[box] = label


def run_udaseg(pred, ref):
    return evaluate_case(pred, ref, CLASSES, spacing_mm=SPACING_MM, metrics=METRICS)


def run_medpy(pred, ref):
    per_class = {}
    for name, values in CLASSES.items():
        p, r = np.isin(pred, values), np.isin(ref, values)
        per_class[name] = {
            "dice": medpy_binary.dc(p, r),
            "assd": medpy_binary.assd(p, r, SPACING_MM),
            "hd95": medpy_binary.hd95(p, r, SPACING_MM),
        }
    return per_class


def time_both(cases, repeats: int):
    """Seconds of udaseg and of medpy over ``cases``, and their results.

    The two run case by case, one after the other, so that both see the same load on a shared
    machine; udaseg's time for a case is the mean of ``repeats`` runs, as one run is short
    enough to land in a single burst of someone else's work.
    """
    seconds = {"udaseg": 0.0, "medpy": 0.0}
    results = {"udaseg": [], "medpy": []}
    for pred, ref in cases:
        for name, run, n in (("udaseg", run_udaseg, repeats), ("medpy", run_medpy, 1)):
            start = time.perf_counter()
            for _ in range(n):
                result = run(pred, ref)
            seconds[name] += (time.perf_counter() - start) / n
            results[name].append(result)
    return seconds, results


def largest_difference(ours, theirs, metric: str) -> float:
    """Largest |ours - theirs| of one metric over cases and classes; NaN on one side only is inf."""
    worst = 0.0
    for a, b in zip(ours, theirs, strict=True):
        for name in a:
            x, y = a[name][metric], b[name][metric]
            if math.isnan(x) and math.isnan(y):
                continue
            worst = max(worst, abs(x - y) if not (math.isnan(x) or math.isnan(y)) else math.inf)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, nargs=3, default=(200, 256, 256), metavar=("D", "H", "W")
    )
    parser.add_argument("--cases", type=int, default=3, help="cases of each kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="udaseg runs per case, averaged")
    args = parser.parse_args()
    shape = tuple(args.size)
    made = [make_case(shape, args.seed + i) for i in range(args.cases)]
    kinds = {
        "clean": [(clean, ref) for ref, clean, _ in made],
        "specks": [(specks, ref) for ref, _, specks in made],
    }
    print(
        f"{args.cases} cases of each kind of {shape}, {len(CLASSES)} classes, "
        f"spacing {SPACING_MM} mm, Dice + ASSD + HD95 per class"
    )
    header = "| case | medpy s | udaseg s | ratio | " + " | ".join(
        f"max abs diff {m}" for m in METRICS
    )
    print(header + " |")
    print("| --- " * (4 + len(METRICS)) + "|")
    worst = 0.0
    for kind, cases in kinds.items():
        seconds, results = time_both(cases, args.repeats)
        diffs = [largest_difference(results["udaseg"], results["medpy"], m) for m in METRICS]
        worst = max(worst, *diffs)
        udaseg_s, medpy_s = seconds["udaseg"], seconds["medpy"]
        cells = [kind, f"{medpy_s:.1f}", f"{udaseg_s:.2f}", f"{medpy_s / udaseg_s:.0f}x"]
        print("| " + " | ".join(cells + [f"{d:.1e}" for d in diffs]) + " |", flush=True)
    if not worst <= TOL:
        raise SystemExit(f"udaseg and medpy values differ by up to {worst:.2e} > {TOL}")


if __name__ == "__main__":
    main()
