"""The report's sections on the scores of evaluate runs: the comparison table (one row per run),
each run's per-case table, and box plots of the per-case Dice.

Every number is read from what ``udaseg evaluate`` wrote: ``summary.json`` for the means,
``per_case.csv`` for the cases; nothing is recomputed.
"""

from __future__ import annotations

from udaseg import layout
from udaseg.evaluation.comparison import comparison, fmt
from udaseg.metrics.tables import METRIC_LABELS, case_means
from udaseg.reporting.discovery import Evaluation
from udaseg.reporting.document import Group, Picture, Section, Table
from udaseg.reporting.figures import dice_boxplot_png
from udaseg.reporting.predictions import NO_EVALUATION

# decimals shown: overlap scores in 0..1, distances in mm (or voxels)
DIGITS = {"dice": 3}
DISTANCE_DIGITS = 2


def boxplot_section(evaluations: list[Evaluation]) -> Section:
    """Per-class Dice of every case, one box per run, grouped by class."""
    section = Section("dice", "Dice per class")
    if not evaluations:
        section.notes.append(NO_EVALUATION)
        return section
    scored = [e for e in evaluations if e.dice]
    for evaluation in evaluations:
        if not evaluation.dice:
            section.notes.append(f"{evaluation.artifact.key} did not compute Dice")
    if not scored:
        return section
    section.text.append(
        "Dice of every evaluated case, per class: one box per run (the box spans the middle "
        "half of the cases, the line is the median, dots are the cases)."
    )
    caption = ", ".join(f"{e.artifact.key} ({len(e.dice)} cases)" for e in scored)
    section.pictures.append(Picture("dice_per_class.png", dice_boxplot_png(scored), caption))
    return section


def comparison_section(evaluations: list[Evaluation]) -> Section:
    """One row per evaluate run: cases, mean Dice per class, mean Dice, mean ASSD and mean
    HD95 (the distance columns where some run computed them)."""
    section = Section("comparison", "Comparison")
    if not evaluations:
        section.notes.append(NO_EVALUATION)
        return section
    results = [{"summary": e.summary, "label": e.name, "stage": e.name} for e in evaluations]
    rows = comparison(results)
    classes = list(dict.fromkeys(c for row in rows for c in row["dice"]))
    units = [_unit(e) for e in evaluations]
    same_unit = len(set(units)) == 1
    distances = [
        (key, name)
        for key, name in (("mean_assd", "ASSD"), ("mean_hd95", "HD95"))
        if key == "mean_assd" or any(row.get(key) is not None for row in rows)
    ]
    head = ["run", "dataset / domain", "cases", *classes, "mean Dice"]
    head += [f"mean {name} ({units[0]})" if same_unit else f"mean {name}" for _, name in distances]
    cells = []
    for row, evaluation, unit in zip(rows, evaluations, units, strict=True):
        s = evaluation.summary
        cells.append(
            [
                row["label"],
                f"{s.get('dataset', '—')} / {s.get('domain') or '—'}",
                str(row["cases"]),
                *(fmt(row["dice"].get(c)) for c in classes),
                fmt(row["mean_dice"]),
                *(
                    fmt(row.get(key), DISTANCE_DIGITS) + ("" if same_unit else f" {unit}")
                    for key, _ in distances
                ),
            ]
        )
    section.text.append(
        f"Every evaluate run in the workspace (`W/{layout.EVALUATE}/*/{layout.SUMMARY}`): Dice "
        "per class and its mean over classes, averaged over the run's cases; mean ASSD (average "
        "symmetric surface distance) and HD95 over classes; — where no value could be computed, "
        "e.g. an empty mask. Each run's cases are under Per-case results, how each row was made "
        "under Provenance."
    )
    section.tables.append(Table(head, cells))
    return section


def _unit(evaluation: Evaluation) -> str:
    return evaluation.summary.get("options", {}).get("unit", "mm")


def per_case_section(evaluations: list[Evaluation]) -> Section:
    """Per evaluate run (a group): one row per case with every metric the run computed per
    class and over classes, then the mean and std over cases from its summary.json."""
    section = Section("per-case", "Per-case results")
    if not evaluations:
        section.notes.append(NO_EVALUATION)
        return section
    section.text.append(
        f"Each evaluate run's `{layout.PER_CASE}`, one row per case: per class, then the mean "
        "over the classes that have a value in that case; the last rows are the mean and "
        f"standard deviation over cases from its `{layout.SUMMARY}` (the comparison's numbers). "
        "Dice from 0 to 1, higher is better; distances (ASSD, HD95) in the run's unit, lower is "
        "better; — where a value does not exist (a distance to an empty mask)."
    )
    for evaluation in evaluations:
        group = Group(
            evaluation.artifact.key,
            f"{evaluation.name}: {_cases(len(evaluation.per_case))}",
            open=len(evaluations) == 1,
        )
        if evaluation.per_case:
            group.tables.append(per_case_table(evaluation))
        else:
            group.notes.append(f"{evaluation.artifact.key}/{layout.PER_CASE} holds no case")
        section.groups.append(group)
    return section


def _cases(n: int) -> str:
    return f"{n} case" if n == 1 else f"{n} cases"


def per_case_table(evaluation: Evaluation) -> Table:
    """The table of one run: columns grouped per class (then "mean over classes"), one column
    per metric inside each group; rows per case, then "mean" and "std" over cases."""
    classes, metrics = evaluation.classes, evaluation.metrics
    unit = _unit(evaluation)
    head = ["case"] + [_metric_head(m, unit) for _ in [*classes, "mean"] for m in metrics]
    spans = [("", 1)] + [(c, len(metrics)) for c in [*classes, "mean over classes"]]
    full = {
        case: {c: {m: values.get(c, {}).get(m, float("nan")) for m in metrics} for c in classes}
        for case, values in evaluation.per_case.items()
    }
    by_case = case_means(full, classes, metrics)
    rows = [
        [case]
        + [_cell(full[case][c][m], m) for c in classes for m in metrics]
        + [_cell(by_case[case][m], m) for m in metrics]
        for case in full
    ]
    per_class = evaluation.summary.get("per_class", {})
    over = evaluation.summary.get("mean_over_classes", {})
    for stat in ("mean", "std"):

        def value(c: str, m: str, stat: str = stat) -> float | None:
            return per_class.get(c, {}).get(m, {}).get(stat)

        rows.append(
            [stat]
            + [_cell(value(c, m), m) for c in classes for m in metrics]
            + [_cell(over.get(m, {}).get(stat), m) for m in metrics]
        )
    return Table(head, rows, spans)


def _metric_head(metric: str, unit: str) -> str:
    name = METRIC_LABELS.get(metric, metric)
    return name if metric == "dice" else f"{name} ({unit})"


def _cell(value: float | None, metric: str) -> str:
    return fmt(value, DIGITS.get(metric, DISTANCE_DIGITS))
