"""The comparison of evaluate runs: one row per run with its mean Dice per class, mean Dice, mean
ASSD and mean HD95, as rows and as a Markdown table.

Rows are built from the summaries ``udaseg evaluate`` returns (its ``summary.json``); ``udaseg
run`` writes them as ``comparison.md`` and ``udaseg report`` shows them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from udaseg import artifacts, layout


class Described(Protocol):
    """What a comparison table is headed with: a pipeline's name and description."""

    name: str
    description: str


def read_summary(run: Path) -> dict[str, Any]:
    """The scores of an evaluate run: its ``summary.json`` (see :mod:`udaseg.metrics.tables`)."""
    data = json.loads((Path(run) / layout.SUMMARY).read_text(encoding="utf-8"))
    return artifacts.expanded(data, run)


def comparison(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluate stage: label, cases, Dice per class, mean Dice, mean ASSD and mean
    HD95 (None where the stage did not compute that metric; distances in the run's unit).

    ``results``: one dict per stage with ``stage`` (its name), ``label`` (the row's label, or
    None for the stage name) and ``summary`` (what the stage returned); summaries without
    ``per_class`` are not evaluate runs and are left out.
    """
    rows = []
    for result in results:
        summary = result["summary"]
        if not (isinstance(summary, dict) and "per_class" in summary):
            continue
        dice = {
            name: metrics.get("dice", {}).get("mean")
            for name, metrics in summary["per_class"].items()
        }
        means = summary.get("mean_over_classes", {})
        rows.append(
            {
                "label": result["label"] or result["stage"],
                "stage": result["stage"],
                "cases": summary.get("n_cases"),
                "dice": dice,
                "mean_dice": means.get("dice", {}).get("mean"),
                "mean_assd": means.get("assd", {}).get("mean"),
                "mean_hd95": means.get("hd95", {}).get("mean"),
            }
        )
    return rows


def comparison_markdown(rows: list[dict[str, Any]], pipeline: Described) -> str:
    """The comparison as a Markdown table (— for a value that could not be computed), headed by
    the pipeline's name and description."""
    if not rows:
        return f"# {pipeline.name}\n\nNo evaluate stage ran.\n"
    classes = list(rows[0]["dice"])
    distances = [
        (key, title)
        for key, title in (("mean_assd", "mean ASSD (mm)"), ("mean_hd95", "mean HD95 (mm)"))
        if any(row.get(key) is not None for row in rows)
    ]
    head = ["method", *classes, "mean Dice", *(title for _, title in distances)]
    lines = [
        f"# {pipeline.name}",
        "",
        pipeline.description.strip(),
        "",
        "| " + " | ".join(head) + " |",
        "| --- |" + " ---: |" * (len(head) - 1),
    ]
    for row in rows:
        cells = [fmt(row["dice"].get(c)) for c in classes]
        cells += [fmt(row["mean_dice"]), *(fmt(row.get(key), 2) for key, _ in distances)]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", f"Dice and ASSD: mean over the {rows[0]['cases']} evaluated cases."]
    return "\n".join(lines) + "\n"


def fmt(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or — for None or NaN (a value that could not be
    computed)."""
    if value is None or value != value:  # None or NaN
        return "—"
    return f"{value:.{digits}f}"
