"""Aggregate per-case metrics and render them as the tables segmentation papers print.

Input everywhere is ``per_case``: ``{case_id: {class_name: {metric: value}}}`` as returned by
:func:`udaseg.metrics.evaluate_case`, where NaN marks a value that does not exist (a distance when
exactly one of prediction and reference is empty for that class, with ``empty_distance="nan"``).

Statistics over cases (:func:`describe`) leave missing values out and count them: ``mean``,
``std`` (population, ``ddof=0``, as ``np.std``), ``median``, ``n`` (cases with a value) and
``n_missing``. A statistic over no values is ``None`` (``null`` in JSON, never NaN, so strict JSON
readers such as ``jq`` accept the files).

The "Mean" column (:func:`aggregate`, key ``mean_over_classes``):

* its ``mean`` is the mean over classes of the per-class means (classes with no value at all are
  left out), which is the number papers print in their "Average" column;
* ``std``/``median``/``n``/``n_missing`` describe, over cases, each case's mean over the classes
  that have a value in that case (a case with no value in any class is missing);
* ``n_missing_values`` counts every missing (case, class) value; the table shows it as
  "(k missing)" beside the Mean column.

When nothing is missing the mean over classes of the class means equals the mean over cases of the
per-case means, so both readings agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# the order rows appear in every table: overlap first, then the surface distances
METRIC_ORDER = ("dice", "assd", "asd", "hd95", "hd")
METRIC_LABELS = {"dice": "Dice", "assd": "ASSD", "asd": "ASD", "hd95": "HD95", "hd": "HD"}
UNIT_LABELS = {"mm": "mm", "voxel": "voxels"}
MISSING = "—"

PerCase = Mapping[str, Mapping[str, Mapping[str, float]]]


def describe(values: Sequence[float]) -> dict[str, Any]:
    """Mean, std (ddof=0), median, n and n_missing of ``values``; NaN entries count as missing.

    Returns ``None`` for mean/std/median when no value is present.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    present = array[~np.isnan(array)]
    stats: dict[str, Any] = {"n": int(present.size), "n_missing": int(array.size - present.size)}
    if present.size == 0:
        return {"mean": None, "std": None, "median": None, **stats}
    return {
        "mean": float(present.mean()),
        "std": float(present.std()),
        "median": float(np.median(present)),
        **stats,
    }


def case_means(
    per_case: PerCase, classes: Sequence[str], metrics: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Each case's mean over the classes that have a value; NaN when no class has one."""
    means = {}
    for case, scores in per_case.items():
        row = {}
        for metric in metrics:
            values = [scores[c][metric] for c in classes if not math.isnan(scores[c][metric])]
            row[metric] = float(np.mean(values)) if values else math.nan
        means[case] = row
    return means


def aggregate(
    per_case: PerCase, classes: Sequence[str], metrics: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Statistics per class and over classes (see the module docstring for the Mean column).

    Returns:
        ``{"per_class": {class: {metric: stats}}, "mean_over_classes": {metric: stats}}`` where
        stats are :func:`describe`'s keys (plus ``n_missing_values`` for the mean over classes).
    """
    cases = list(per_case)
    per_class = {
        c: {m: describe([per_case[k][c][m] for k in cases]) for m in metrics} for c in classes
    }
    by_case = case_means(per_case, classes, metrics)
    over: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        stats = describe([by_case[k][metric] for k in cases])
        class_means = [per_class[c][metric]["mean"] for c in classes]
        present = [v for v in class_means if v is not None]
        stats["mean"] = float(np.mean(present)) if present else None
        stats["n_missing_values"] = sum(per_class[c][metric]["n_missing"] for c in classes)
        over[metric] = stats
    return {"per_class": per_class, "mean_over_classes": over}


def ordered_metrics(metrics: Sequence[str]) -> list[str]:
    """``metrics`` in table order (Dice, ASSD, ASD, HD95, HD), duplicates dropped."""
    return [m for m in METRIC_ORDER if m in set(metrics)]


def metric_definitions(options: Mapping[str, Any]) -> dict[str, str]:
    """One sentence per metric in ``options["metrics"]`` saying exactly what was computed."""
    unit = "mm" if options["unit"] == "mm" else "voxels (spacing ignored)"
    surface = (
        f"surface = foreground voxels with a background neighbour (connectivity "
        f"{options['connectivity']}); distances in {unit}"
    )
    texts = {
        "dice": "2|P∩R| / (|P| + |R|) per class; 1 when both masks are empty, 0 when one is",
        "assd": {
            "pooled": "average symmetric surface distance: mean of the pred->ref and ref->pred "
            "surface distances pooled in one list (medpy>=0.5.2 assd, MONAI)",
            "mean-of-directed": "average symmetric surface distance: (mean pred->ref + mean "
            "ref->pred) / 2 (medpy<=0.4 assd, as in SIFA's numbers)",
        }[options["assd"]],
        "asd": "one-directional average surface distance pred->ref: mean over the prediction's "
        "surface voxels of the distance to the reference surface (medpy asd(pred, ref)); not "
        "symmetric, unlike the ASSD most papers call ASD",
        "hd95": {
            "pooled": "95th percentile of the pred->ref and ref->pred surface distances pooled "
            "(medpy hd95)",
            "max-directed": "larger of the two directed 95th percentiles (MONAI, DeepMind "
            "surface-distance)",
        }[options["hd95"]],
        "hd": "Hausdorff distance: largest surface distance in either direction (medpy hd)",
    }
    return {m: texts[m] + ("" if m == "dice" else f"; {surface}") for m in options["metrics"]}


def definitions_line(options: Mapping[str, Any]) -> str:
    """The caption line, e.g. ``ASSD: pooled (medpy>=0.5.2), HD95: pooled (medpy), connectivity
    1, unit mm, empty: nan``."""
    short = {
        ("assd", "pooled"): "ASSD: pooled (medpy>=0.5.2)",
        ("assd", "mean-of-directed"): "ASSD: mean-of-directed (medpy<=0.4, SIFA)",
        ("hd95", "pooled"): "HD95: pooled (medpy)",
        ("hd95", "max-directed"): "HD95: max-directed (MONAI, DeepMind)",
    }
    parts = []
    for metric in options["metrics"]:
        if metric in ("assd", "hd95"):
            parts.append(short[metric, options[metric]])
        elif metric == "asd":
            parts.append("ASD: one-directional pred->ref (medpy asd)")
        elif metric == "hd":
            parts.append("HD: max (medpy hd)")
    parts += [
        f"connectivity {options['connectivity']}",
        f"unit {options['unit']}",
        f"empty: {options['empty_distance']}",
    ]
    return ", ".join(parts)


def format_cell(stats: Mapping[str, Any], metric: str, missing: int | None = None) -> str:
    """``"mean ± std"`` (Dice 3 decimals, distances 2), ``"—"`` without a value, and
    ``" (k missing)"`` appended when ``missing`` (default ``stats["n_missing"]``) is positive."""
    if stats.get("mean") is None:
        return MISSING
    digits = 3 if metric == "dice" else 2
    text = f"{stats['mean']:.{digits}f} ± {(stats.get('std') or 0.0):.{digits}f}"
    missing = stats.get("n_missing", 0) if missing is None else missing
    return f"{text} ({missing} missing)" if missing else text


def row_label(metric: str, unit: str) -> str:
    """``Dice``, or a distance's name with its unit, e.g. ``HD95 (mm)``."""
    label = METRIC_LABELS[metric]
    return label if metric == "dice" else f"{label} ({UNIT_LABELS[unit]})"


def table_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the paper table: one row per metric, classes then "Mean" as columns.

    ``summary`` is the content of ``summary.json`` (keys ``per_class``, ``mean_over_classes``,
    ``metrics``, ``options``).
    """
    classes = list(summary["per_class"])
    header = ["Metric", *classes, "Mean"]
    rows = []
    for metric in ordered_metrics(summary["metrics"]):
        over = summary["mean_over_classes"][metric]
        cells = [format_cell(summary["per_class"][c][metric], metric) for c in classes]
        cells.append(format_cell(over, metric, missing=over["n_missing_values"]))
        rows.append([row_label(metric, summary["options"]["unit"]), *cells])
    return header, rows


def _title(summary: Mapping[str, Any]) -> str:
    where = summary["dataset"] + (f" ({summary['domain']})" if summary.get("domain") else "")
    return f"{summary['run']}: {where}, {summary['n_cases']} cases"


def _footnote(summary: Mapping[str, Any]) -> str:
    return (
        "mean ± std over cases (population std); Mean: mean of the class means, ± the std over "
        "cases of each case's mean over its classes with a value; (k missing): values left out "
        "because exactly one of prediction and reference is empty for the class"
    )


def markdown_table(summary: Mapping[str, Any]) -> str:
    """``table.md``: a title line, the definitions line, the table and a footnote."""
    header, rows = table_rows(summary)
    lines = [
        f"**{_title(summary)}.** {summary['caption']}",
        "",
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        f"_{_footnote(summary)}._",
    ]
    return "\n".join(lines) + "\n"


def rich_table(summary: Mapping[str, Any]) -> Any:
    """The same table as :func:`markdown_table`, as a ``rich.table.Table`` for the terminal."""
    from rich.table import Table

    header, rows = table_rows(summary)
    table = Table(title=_title(summary), caption=summary["caption"], title_justify="left")
    table.add_column(header[0], style="bold")
    for name in header[1:]:
        table.add_column(name, justify="right", style="bold" if name == "Mean" else None)
    for row in rows:
        table.add_row(*row)
    return table
