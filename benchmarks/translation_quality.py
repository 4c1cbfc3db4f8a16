"""Does a translator keep the anatomy and move the appearance? Measured, not eyeballed.

Not a test: for a translate-train run and the stores it was trained on, over the source's
validation cases (or --cases), prints
- anatomy kept (cycle): mean Dice of a source-trained segmenter on the original source volumes and
  on their cycle reconstructions (source -> target -> source), also per organ; the check allows
  a difference of at most 0.02. A translator with style codes returns in each slice's own
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

A one-way translator (``cut.v1`` without ``--set bidirectional=true``) has no cycle and no
reverse direction: those are printed as not applying, every other measure is reported.

    python benchmarks/translation_quality.py --translate W/translate/RUN \\
        --source-segmenter W/segment/unet_ct --target-segmenter W/segment/unet_mr \\
        [--styles W/styles/RUN] [--both]

``--checkpoint latest`` reads a run that is still training (or was killed) from its last
checkpoint in ``W/translate/RUN.partial``: whether the organs' tones are moving the right way
shows long before a CPU run ends. Its stores are taken from ``model.json`` by the workspace's
layout (``W/preprocessed/<dataset>__<domain>``) unless ``--source-store`` / ``--target-store``
name them.

The measures themselves are :mod:`udaseg.translation.quality`; this script opens the runs,
measures and prints.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

from udaseg.data.sampling import split_cases, store_path
from udaseg.data.store import Store
from udaseg.inference.models import context_slices
from udaseg.training.checkpoint import load_model
from udaseg.translation.io import load_translator, open_run, open_unfinished_run
from udaseg.translation.quality import (
    CYCLE_TOLERANCE,
    NO_CYCLE,
    direction_report,
    style_distances,
)
from udaseg.translation.registry import translates_back


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

    if args.checkpoint == "final":
        run = open_run(args.translate)
    else:
        run = open_unfinished_run(args.translate, args.source_store, args.target_store)
    translator, _ = load_translator(run.directory, args.checkpoint)
    source, target = Store(store_path(run.source)), Store(store_path(run.target))
    cases = args.cases.split(",") if args.cases else split_cases(run.source, args.split, source)
    src = load_model(args.source_segmenter, "final")
    tgt = load_model(args.target_segmenter, "final") if args.target_segmenter else None
    # the quality measures segment single slices (udaseg.translation.quality.organ_dice)
    for option, loaded in (("--source-segmenter", src), ("--target-segmenter", tgt)):
        if loaded is not None and context_slices(loaded[1]):
            parser.error(f"{option}: a 2.5D model (--context-slices); use a plain 2D one")

    report = {"translate": str(args.translate), "checkpoint": args.checkpoint, "cases": cases}
    measure = partial(direction_report, translator, styled=run.has_style_codes)
    forward = measure(source, target, cases, src, tgt, back=False, other_dir=run.target)
    report.update(forward)
    if args.styles:
        originals = [source.image(case) for case in cases]
        report["style_distances"] = style_distances(translator, args.styles, originals)
    if args.both and not translates_back(translator):
        report["reverse"] = {"cases": [], "applies": False, "reason": NO_CYCLE}
    elif args.both:
        reverse_cases = split_cases(run.target, args.split, target)
        reverse = measure(target, source, reverse_cases, tgt, src, back=True, other_dir=run.source)
        report["reverse"] = {"cases": reverse_cases, **reverse}
    print_report(report, source.classes)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def print_report(report: dict, class_names) -> None:
    print(f"{report['translate']}: {len(report['cases'])} source cases")
    print_direction(report, class_names, "source", "target")
    if "style_distances" in report:
        print(f"  styles: mean pairwise |difference| {report['style_distances']['mean']:.3f}")
    if "reverse" in report and report["reverse"].get("applies", True) is False:
        print(f"reverse direction (target -> source): {report['reverse']['reason']}")
    elif "reverse" in report:
        print(f"reverse direction: {len(report['reverse']['cases'])} target cases")
        print_direction(report["reverse"], class_names, "target", "source")


def print_direction(report: dict, class_names, origin: str, other: str) -> None:
    cycle = "dice_cycle" in report  # absent for a one-way translator (report["cycle"] says why)
    if cycle:
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
    else:
        print(
            f"  anatomy kept (cycle): {report.get('cycle') or NO_CYCLE}; {origin} segmenter "
            f"Dice on the original {report['dice_original']:.3f}"
        )
    if "other_model_on_translated" in report:
        print(
            f"  {other} segmenter Dice: on untranslated {origin} "
            f"{report['other_model_on_original']:.3f}, on translated "
            f"{report['other_model_on_translated']:.3f}"
        )
    # the two checks in one line, so a sweep's logs can be grepped
    closer = [
        n
        for n in class_names
        if report["wasserstein"][n]["after"] < report["wasserstein"][n]["before"]
    ]
    if cycle:
        gap = report["dice_original"] - report["dice_cycle"]
        kept = abs(gap) <= CYCLE_TOLERANCE
        cycle_check = f"cycle difference {gap:+.3f} ({'within' if kept else 'beyond'} "
        cycle_check += f"{CYCLE_TOLERANCE})"
    else:
        cycle_check = "cycle difference n/a (one-way)"
    print(
        f"  checks: {cycle_check}; {len(closer)} of {len(class_names)} organs closer to "
        f"{other}'s intensities" + (f" ({', '.join(closer)})" if closer else "")
    )
    for name in class_names:
        w, e = report["wasserstein"][name], report["edge_ratio"][name]
        d = report["organ_dice"][name]
        dice = f"cycle Dice {d['original']:.3f} -> {d['cycle']:.3f}" if cycle else "cycle n/a"
        print(
            f"  {name:<14} {dice}; "
            f"W1 to {other} intensities: before {w['before']:.3f}, after "
            f"{w['after']:.3f}"
            + (f" ({other}'s own spread {w['target_spread']:.3f})" if "target_spread" in w else "")
            + "; edge ratio at the label's contour: original "
            f"{e['original']:.2f}, translated {e['translated']:.2f} ({other}'s own "
            f"{e['other_domain']:.2f})"
        )


if __name__ == "__main__":
    main()
