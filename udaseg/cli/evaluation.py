"""``udaseg predict`` and ``udaseg evaluate``: label maps for scans, and their scores."""

from __future__ import annotations

import typer

from udaseg import layout
from udaseg.cli.common import stage_command, state
from udaseg.evaluation.comparison import read_summary


def register(app: typer.Typer) -> None:
    stage_command(
        app,
        "predict",
        _predicted_line,
        help="Segment scans with a trained model -> <case>.nii.gz label maps on the ORIGINAL "
        "scan grid, in the dataset's own label codes, with label tables for ITK-SNAP and 3D "
        "Slicer.",
        example="udaseg predict --model-dir W/segment/no-adaptation "
        "--data W/preprocessed/mmwhs__ct --split val --work W  (then: udaseg evaluate --pred "
        "W/predict/no-adaptation__mmwhs__ct --ref RAW --dataset mmwhs --domain ct --work W)",
    )
    stage_command(
        app,
        "evaluate",
        _scores,
        summarise=_summary_json,
        help="Dice, ASSD/ASD, HD95 per class and case -> per_case.csv, summary.json and a "
        "paper-style table.md.",
        example="udaseg evaluate --pred W/predict/sifa --ref RAW --dataset mmwhs --domain mr "
        "--metric dice,asd --work W",
    )


def _predicted_line(manifest) -> str:
    s = manifest.summary
    done = f"{s.get('cases')} cases in {s.get('seconds', 0)} s ({s.get('label_values')})"
    return f"predict {s['run']}: {state(s, done)} -> {s['output']}"


def _summary_json(manifest) -> dict:
    """evaluate's --json: its summary.json, with whether it ran and how long it took."""
    skipped = bool(manifest.summary.get("skipped"))
    return {
        **read_summary(manifest.summary["output"]),
        "skipped": skipped,
        "seconds": manifest.summary.get("seconds"),
    }


def _scores(manifest):
    from rich.console import Group

    from udaseg.metrics.tables import rich_table

    summary = read_summary(manifest.summary["output"])
    done = f"{summary['n_cases']} cases in {manifest.summary.get('seconds', 0)} s"
    line = (
        f"{state(manifest.summary, done)} -> {manifest.summary['output']} "
        f"({layout.PER_CASE}, {layout.SUMMARY}, {layout.TABLE})"
    )
    return Group(rich_table(summary), line)
