"""Does a translator keep the anatomy and move the appearance? Measured, not eyeballed.

Not a test: for a translate-train run and the stores it was trained on, over the source's
validation cases (or --cases), prints
- anatomy kept (cycle): mean Dice of a source-trained segmenter on the original source volumes and
  on their cycle reconstructions (source -> target -> source), also per organ; the issue asks
  for a difference of at most 0.02. A translator with style codes returns in each slice's own
  style, the cycle it is trained on (the cycle through its default, mean style is reported
  beside it);
- anatomy where the label says (translated): mean Dice of a target-trained segmenter (the
  supervised bound, used here only as a measuring instrument) on the translated volumes against
  the source labels, next to the same segmenter on the untranslated source;
- boundaries where the label says: per organ, the mean gradient magnitude on the label's contours
  over that on the slices showing the organ, for the original, the translated and the other
  domain's own labelled images (no segmenter involved);
- appearance moved: per organ, the 1-Wasserstein distance between the intensities inside the organ
  in the source (untranslated / translated) and in the target (target labels are used only to
  measure), on the normalised [-1, 1] scale; beside it the target's own spread, the same distance
  between the target's val and train cases: a source organ already closer than that is as near as
  the target's cases are to each other, and "closer than untranslated" is below the noise there;
- multi-style (with --styles RUN): mean absolute difference between renderings of the same
  slices in each pair of the K chosen styles;
- with --both, the same for the reverse direction (target -> source -> target, on the target's
  cases, the target segmenter as the cycle instrument): one CycleGAN run checks both ways.

    python benchmarks/translation_quality.py --translate W/translate/RUN \\
        --source-segmenter W/segment/unet_ct --target-segmenter W/segment/unet_mr \\
        [--styles W/styles/RUN] [--both]

``--checkpoint latest`` reads a run that is still training (or was killed) from its last
checkpoint in ``W/translate/RUN.partial``: whether the organs' tones are moving the right way
shows long before a CPU run ends. Its stores are taken from ``model.json`` by the workspace's
layout (``W/preprocessed/<dataset>__<domain>``) unless ``--source-store`` / ``--target-store``
name them.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance

from udaseg.artifacts import PARTIAL_SUFFIX, partial_dir
from udaseg.data.sampling import split_cases, store_path
from udaseg.data.store import Store
from udaseg.errors import UdasegError
from udaseg.inference import segment_volume
from udaseg.metrics import compute_dice
from udaseg.stages.preprocess import output_dir
from udaseg.stages.translate_apply import render_volume
from udaseg.training.checkpoint import load_model
from udaseg.translation.io import (
    TranslateRun,
    encode_styles,
    load_translator,
    open_run,
    read_model_json,
)

# the anatomy check: cycle Dice at most this far below the originals' (issue #5)
CYCLE_TOLERANCE = 0.02


def organ_dice(model, info, volume, label, classes) -> list[float]:
    """Dice of each class in ``classes`` (segmenter ``model`` on ``volume`` against ``label``)."""
    prediction = segment_volume(model, volume, dims=info["dims"], patch_size=info["patch_size"])
    return [float(compute_dice(prediction == c, label == c)) for c in classes]


def mean_dice(model, info, volume, label, classes) -> float:
    return float(np.mean(organ_dice(model, info, volume, label, classes)))


def organ_intensities(volumes, labels, class_id, limit=200_000, seed=0) -> np.ndarray:
    values = np.concatenate([v[lab == class_id] for v, lab in zip(volumes, labels, strict=True)])
    if len(values) > limit:  # a fixed random subset keeps it fast and repeatable
        values = np.random.default_rng(seed).choice(values, limit, replace=False)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--translate", type=Path, required=True)
    parser.add_argument("--source-segmenter", type=Path, required=True)
    parser.add_argument("--target-segmenter", type=Path)
    parser.add_argument("--styles", type=Path, help="a cluster-styles run (multi-style check)")
    parser.add_argument("--cases", help="source cases (default: the val split)")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--both",
        action="store_true",
        help="also measure the reverse direction (target -> source -> target) on the target's "
        "--split cases, with the target segmenter as the cycle instrument (needs "
        "--target-segmenter)",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--checkpoint",
        choices=["final", "latest"],
        default="final",
        help="latest: a run still training or killed, read from RUN.partial's last checkpoint",
    )
    parser.add_argument("--source-store", type=Path, help="with --checkpoint latest")
    parser.add_argument("--target-store", type=Path, help="with --checkpoint latest")
    args = parser.parse_args()
    if args.both and not args.target_segmenter:
        parser.error("--both needs --target-segmenter")

    run = open_run(args.translate) if args.checkpoint == "final" else unfinished_run(args)
    translator, _ = load_translator(run.directory, args.checkpoint)
    source, target = Store(store_path(run.source)), Store(store_path(run.target))
    cases = args.cases.split(",") if args.cases else split_cases(run.source, args.split, source)
    src = load_model(args.source_segmenter, "final")
    tgt = load_model(args.target_segmenter, "final") if args.target_segmenter else None

    report = {"translate": str(args.translate), "checkpoint": args.checkpoint, "cases": cases}
    measure = partial(direction_report, translator, styled=run.has_style_codes)
    forward = measure(source, target, cases, src, tgt, back=False, other_dir=run.target)
    report.update(forward)
    if args.styles:
        originals = [source.image(case) for case in cases]
        report["style_distances"] = style_distances(translator, args.styles, originals)
    if args.both:
        reverse_cases = split_cases(run.target, args.split, target)
        reverse = measure(target, source, reverse_cases, tgt, src, back=True, other_dir=run.source)
        report["reverse"] = {"cases": reverse_cases, **reverse}
    print_report(report, source.classes)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def unfinished_run(args: argparse.Namespace) -> TranslateRun:
    """A translate run that has no manifest yet: its folder (the ``.partial`` one where it
    exists), ``model.json`` and its stores (``--source-store`` / ``--target-store``, else by the
    workspace layout)."""
    directory = Path(args.translate)
    if not directory.name.endswith(PARTIAL_SUFFIX) and partial_dir(directory).is_dir():
        directory = partial_dir(directory)
    info = read_model_json(directory)
    # the run's own folder is W/translate/RUN[.partial]: its stores sit in W/preprocessed
    work = directory.resolve().parent.parent
    stores = []
    for side, given in (("source", args.source_store), ("target", args.target_store)):
        store_dir = given or output_dir(work, info[side]["dataset"], info[side]["domain"])
        if not store_path(store_dir).is_file():
            raise UdasegError(
                f"the {side} store of {directory.name} is not at {store_dir}",
                hint=f"name it with --{side}-store W/preprocessed/<dataset>__<domain>",
                path=store_dir,
            )
        stores.append(store_dir)
    return TranslateRun(directory, None, info, *stores)


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
    ``other``'s artifact directory, whose splits give its own val-to-train distance per organ."""
    classes = range(1, len(origin.classes) + 1)
    rows, organs, originals, translated, labels = [], [], [], [], []
    for case in cases:
        image, label = origin.image(case), origin.label(case)
        moved = render_volume(translator, image, None, 8, "cpu", back=back)
        # a translator with style codes closes the cycle in each slice's own style, as it was
        # trained; its default (mean) style back is reported beside it
        domain = "target" if back else "source"
        codes = encode_styles(translator, image, 8, "cpu", domain=domain) if styled else None
        cycled = render_volume(translator, moved, codes, 8, "cpu", back=not back)
        # per organ too: where the cycle loses anatomy (small organs first, as a mean per-pixel
        # cycle loss weighs them least) is what a user tuning the translator needs to see
        per_organ = {
            "original": organ_dice(*own, image, label, classes),
            "cycle": organ_dice(*own, cycled, label, classes),
        }
        row = {
            "case": case,
            "dice_original": float(np.mean(per_organ["original"])),
            "dice_cycle": float(np.mean(per_organ["cycle"])),
        }
        if styled:
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
    report = {"per_case": rows}
    for key in rows[0]:
        if key != "case":
            report[key] = float(np.mean([r[key] for r in rows]))
    report["organ_dice"] = {
        name: {k: float(np.mean([o[k][i] for o in organs])) for k in ("original", "cycle")}
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
    codes = np.load(Path(styles_dir) / "centroids.npy")
    middle = [volume[len(volume) // 3 : 2 * len(volume) // 3] for volume in originals]
    slices = np.concatenate(middle)[:32]
    renders = [render_volume(translator, slices, code, 8, "cpu") for code in codes]
    pairs = {
        f"{i}-{j}": float(np.abs(renders[i] - renders[j]).mean())
        for i in range(len(codes))
        for j in range(i + 1, len(codes))
    }
    return {"pairs": pairs, "mean": float(np.mean(list(pairs.values()))) if pairs else 0.0}


def print_report(report: dict, class_names) -> None:
    print(f"{report['translate']}: {len(report['cases'])} source cases")
    print_direction(report, class_names, "source", "target")
    if "style_distances" in report:
        print(f"  styles: mean pairwise |difference| {report['style_distances']['mean']:.3f}")
    if "reverse" in report:
        print(f"reverse direction: {len(report['reverse']['cases'])} target cases")
        print_direction(report["reverse"], class_names, "target", "source")


def print_direction(report: dict, class_names, origin: str, other: str) -> None:
    print(
        f"  anatomy kept: {origin} segmenter Dice original {report['dice_original']:.3f}, "
        f"cycle {report['dice_cycle']:.3f} "
        f"(difference {report['dice_original'] - report['dice_cycle']:+.3f})"
        + (
            f"; back in the default style {report['dice_cycle_default_style']:.3f}"
            if "dice_cycle_default_style" in report
            else ""
        )
    )
    if "other_model_on_translated" in report:
        print(
            f"  {other} segmenter Dice: on untranslated {origin} "
            f"{report['other_model_on_original']:.3f}, on translated "
            f"{report['other_model_on_translated']:.3f}"
        )
    # the two checks in one line, so a sweep's logs can be grepped
    gap = report["dice_original"] - report["dice_cycle"]
    kept = abs(gap) <= CYCLE_TOLERANCE
    closer = [
        n
        for n in class_names
        if report["wasserstein"][n]["after"] < report["wasserstein"][n]["before"]
    ]
    print(
        f"  checks: cycle difference {gap:+.3f} ({'within' if kept else 'beyond'} "
        f"{CYCLE_TOLERANCE}); {len(closer)} of {len(class_names)} organs closer to {other}'s "
        "intensities" + (f" ({', '.join(closer)})" if closer else "")
    )
    for name in class_names:
        w, e = report["wasserstein"][name], report["edge_ratio"][name]
        d = report["organ_dice"][name]
        print(
            f"  {name:<14} cycle Dice {d['original']:.3f} -> {d['cycle']:.3f}; "
            f"W1 to {other} intensities: before {w['before']:.3f}, after "
            f"{w['after']:.3f}"
            + (f" ({other}'s own spread {w['target_spread']:.3f})" if "target_spread" in w else "")
            + "; edge ratio at the label's contour: original "
            f"{e['original']:.2f}, translated {e['translated']:.2f} ({other}'s own "
            f"{e['other_domain']:.2f})"
        )


if __name__ == "__main__":
    main()
