"""How well a translator keeps the anatomy and moves the appearance: measures, not pictures.

Volumes are (S, H, W) float32 on a store's processed grid, intensities on the normalised [-1, 1]
scale; labels are (S, H, W) uint8 class ids (0 background, 1..C the store's ``classes``). A
segmenter is the ``(model, model.json info)`` pair :func:`udaseg.training.checkpoint.load_model`
returns; translators are rendered on the CPU in batches of 8 slices
(:func:`udaseg.translation.io.render_volume`).

* anatomy kept (cycle): Dice of a segmenter trained on the origin domain on the original volumes
  and on their cycle reconstructions (origin -> other -> origin), per organ and on average
  (:func:`direction_report`); a cycle should cost at most :data:`CYCLE_TOLERANCE` of mean Dice.
  A translator with style codes returns in each slice's own style, the cycle it is trained on.
  A one-way translator (``translates_back`` false, e.g. ``cut.v1`` without ``bidirectional``) has
  no cycle: the measure is reported as not applying (:data:`NO_CYCLE`), the others still apply;
* anatomy where the label says (translated): Dice of a segmenter trained on the other domain (used
  only as a measuring instrument) on the translated volumes against the origin's labels, beside
  the same segmenter on the untranslated volumes;
* boundaries (:func:`edge_ratio`): per organ, the mean in-plane gradient magnitude on the label's
  contours over that on the slices showing the organ;
* appearance moved (:func:`wasserstein_report`): per organ, the 1-Wasserstein distance between
  the intensities inside the organ in the origin (before / after translation) and in the other
  domain (whose labels are read only to measure), beside the other domain's own spread (the same
  distance between its val and train cases, :func:`spread_halves`);
* multi-style (:func:`style_distances`): mean absolute difference between renderings of the same
  slices in each pair of a cluster-styles run's styles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance

from udaseg import layout
from udaseg.data.sampling import split_cases
from udaseg.data.store import Store
from udaseg.errors import UdasegError
from udaseg.inference import segment_volume
from udaseg.metrics import compute_dice
from udaseg.translation.io import encode_styles, render_volume
from udaseg.translation.registry import translates_back

# the anatomy check: mean Dice on the cycle reconstructions at most this far below the
# originals'
CYCLE_TOLERANCE = 0.02
# why the cycle measure (and the reverse direction) is missing for a one-way translator
NO_CYCLE = (
    "does not apply: the translator is one-way (no target -> source generator); "
    "cut.v1 trains one with --set bidirectional=true"
)


def organ_dice(model, info, volume, label, classes) -> list[float]:
    """Dice of each class in ``classes`` (segmenter ``model`` on ``volume`` against ``label``)."""
    prediction = segment_volume(model, volume, dims=info["dims"], patch_size=info["patch_size"])
    return [float(compute_dice(prediction == c, label == c)) for c in classes]


def mean_dice(model, info, volume, label, classes) -> float:
    """Mean over ``classes`` of :func:`organ_dice`."""
    return float(np.mean(organ_dice(model, info, volume, label, classes)))


def organ_intensities(volumes, labels, class_id, limit=200_000, seed=0) -> np.ndarray:
    """The intensities (1D float32) of the voxels labelled ``class_id`` in ``volumes`` (each
    with its label of ``labels``): at most ``limit`` of them, a seeded random subset."""
    values = np.concatenate([v[lab == class_id] for v, lab in zip(volumes, labels, strict=True)])
    if len(values) > limit:  # a fixed random subset keeps it fast and repeatable
        values = np.random.default_rng(seed).choice(values, limit, replace=False)
    return values


def spread_halves(artifact: Path, store: Store, loaded: dict) -> list | None:
    """The store's own spread halves, [(val images, labels), (train images, labels)], taken from
    ``loaded`` ({case: (image, label)} of its labelled cases); None where either split is missing
    or has no labelled case."""
    try:
        ids = [split_cases(artifact, split, store) for split in ("val", "train")]
    except UdasegError:
        return None
    halves = [[loaded[c] for c in half if c in loaded] for half in ids]
    return [tuple(zip(*half, strict=True)) for half in halves] if all(halves) else None


def direction_report(
    translator, origin, other, cases, own, foreign, back: bool, styled: bool = False, other_dir=None
) -> dict:
    """One direction of the translator: ``origin`` volumes of ``cases`` rendered in ``other``'s
    appearance (``back``: with translate_back) and cycled back. ``own``: (model, info) trained on
    ``origin`` (the cycle instrument); ``foreign``: trained on ``other`` or None. ``styled``: the
    translator has style codes (the cycle returns in each slice's own style). ``other_dir``:
    ``other``'s artifact directory, whose splits give its own val-to-train distance per organ.

    ``origin`` and ``other`` are labelled stores. Returns ``per_case`` rows and their means
    (``dice_original``, ``dice_cycle``; ``dice_cycle_default_style`` when ``styled``;
    ``other_model_on_original`` / ``_on_translated`` with ``foreign``), ``organ_dice``
    ({organ: {"original", "cycle"}}), ``wasserstein`` (:func:`wasserstein_report`) and
    ``edge_ratio`` (:func:`edge_report`). For a one-way translator (:func:`translates_back`
    false) the cycle is not measured: no ``dice_cycle`` keys and no "cycle" per organ, and
    ``cycle`` says why (:data:`NO_CYCLE`); ``cycle`` is None when measured.

    Raises:
        UdasegError: ``back`` with a one-way translator (it has no reverse direction).
    """
    cycle = translates_back(translator)
    if back and not cycle:
        raise UdasegError(f"the reverse direction {NO_CYCLE}", exit_code=2)
    classes = range(1, len(origin.classes) + 1)
    rows, organs, originals, translated, labels = [], [], [], [], []
    for case in cases:
        image, label = origin.image(case), origin.label(case)
        moved = render_volume(translator, image, None, 8, "cpu", back=back)
        # per organ too: where the cycle loses anatomy (small organs first, as a mean per-pixel
        # cycle loss weighs them least) is what a user tuning the translator needs to see
        per_organ = {"original": organ_dice(*own, image, label, classes)}
        row = {"case": case, "dice_original": float(np.mean(per_organ["original"]))}
        if cycle:
            # a translator with style codes closes the cycle in each slice's own style, as it
            # was trained; its default (mean) style back is reported beside it
            domain = "target" if back else "source"
            codes = encode_styles(translator, image, 8, "cpu", domain=domain) if styled else None
            cycled = render_volume(translator, moved, codes, 8, "cpu", back=not back)
            per_organ["cycle"] = organ_dice(*own, cycled, label, classes)
            row["dice_cycle"] = float(np.mean(per_organ["cycle"]))
        if cycle and styled:
            default = render_volume(translator, moved, None, 8, "cpu", back=not back)
            row["dice_cycle_default_style"] = mean_dice(*own, default, label, classes)
        if foreign:
            row["other_model_on_original"] = mean_dice(*foreign, image, label, classes)
            row["other_model_on_translated"] = mean_dice(*foreign, moved, label, classes)
        rows.append(row)
        organs.append(per_organ)
        originals.append(image)
        translated.append(moved)
        labels.append(label)
    report = {"per_case": rows, "cycle": None if cycle else NO_CYCLE}
    for key in rows[0]:
        if key != "case":
            report[key] = float(np.mean([r[key] for r in rows]))
    report["organ_dice"] = {
        name: {k: float(np.mean([o[k][i] for o in organs])) for k in organs[0]}
        for i, name in enumerate(origin.classes)
    }
    # the other domain's labelled volumes, read only to measure
    loaded = {c: (other.image(c), other.label(c)) for c in other.case_ids}
    loaded = {c: pair for c, pair in loaded.items() if pair[1] is not None}
    reference = [image for image, _ in loaded.values()], [label for _, label in loaded.values()]
    names = origin.classes
    spread = spread_halves(other_dir, other, loaded) if other_dir is not None else None
    report["wasserstein"] = wasserstein_report(
        names, reference, originals, translated, labels, spread
    )
    report["edge_ratio"] = edge_report(names, reference, originals, translated, labels)
    return report


def wasserstein_report(names, reference, originals, translated, labels, spread=None) -> dict:
    """Per organ: W1(origin organ, other domain's organ) before and after translation, and
    with ``spread`` ((val images, labels), (train images, labels) of the other domain) the other
    domain's own W1 between its val and train cases."""
    report = {}
    for class_id, name in enumerate(names, start=1):
        target = organ_intensities(*reference, class_id)
        before = organ_intensities(originals, labels, class_id)
        after = organ_intensities(translated, labels, class_id)
        report[name] = {
            "before": float(wasserstein_distance(before, target)),
            "after": float(wasserstein_distance(after, target)),
        }
        if spread is not None:
            halves = [organ_intensities(*half, class_id) for half in spread]
            if all(len(h) for h in halves):
                report[name]["target_spread"] = float(wasserstein_distance(*halves))
    return report


def edge_ratio(volumes, labels, class_id: int) -> float:
    """Mean in-plane gradient magnitude (Sobel, normalised units per pixel) on the organ's 2D
    contours over the mean on every slice that shows the organ: > 1 where the image has an edge
    at the label's boundary, about 1 where the boundary is invisible or has moved."""
    on_contour, on_slices = [], []
    for volume, label in zip(volumes, labels, strict=True):
        mask = label == class_id
        shown = mask.any(axis=(1, 2))
        if not shown.any():
            continue
        image, mask = volume[shown].astype(np.float64), mask[shown]
        gradient = np.hypot(ndimage.sobel(image, axis=1), ndimage.sobel(image, axis=2))
        # the contour: organ pixels with a 4-neighbour outside the organ, slice by slice
        inner = ndimage.binary_erosion(
            mask, structure=ndimage.generate_binary_structure(2, 1)[None]
        )
        on_contour.append(gradient[mask & ~inner])
        on_slices.append(gradient.ravel())
    if not on_contour:
        return float("nan")
    return float(np.concatenate(on_contour).mean() / np.concatenate(on_slices).mean())


def edge_report(names, reference, originals, translated, labels) -> dict:
    """Per organ: :func:`edge_ratio` of the original, the translated and the other domain's own
    images (with their own labels: what an edge there looks like in that modality)."""
    return {
        name: {
            "original": edge_ratio(originals, labels, class_id),
            "translated": edge_ratio(translated, labels, class_id),
            "other_domain": edge_ratio(*reference, class_id),
        }
        for class_id, name in enumerate(names, start=1)
    }


def style_distances(translator, styles_dir: Path, originals) -> dict:
    """Mean |difference| between renderings of the same slices in each pair of chosen styles."""
    codes = np.load(Path(styles_dir) / layout.CENTROIDS)
    middle = [volume[len(volume) // 3 : 2 * len(volume) // 3] for volume in originals]
    slices = np.concatenate(middle)[:32]
    renders = [render_volume(translator, slices, code, 8, "cpu") for code in codes]
    pairs = {
        f"{i}-{j}": float(np.abs(renders[i] - renders[j]).mean())
        for i in range(len(codes))
        for j in range(i + 1, len(codes))
    }
    return {"pairs": pairs, "mean": float(np.mean(list(pairs.values()))) if pairs else 0.0}
