"""``udaseg phantom`` and ``udaseg preprocess``: the data a pipeline starts from."""

from __future__ import annotations

import typer

from udaseg.cli.common import stage_command, state


def register(app: typer.Typer) -> None:
    stage_command(
        app,
        "phantom",
        _phantom_line,
        panel="Data",
        help="Write a small synthetic cross-modality dataset in a real dataset's file layout, "
        "with dataset.yaml, a manifest for `udaseg preprocess`.",
        example="udaseg phantom --out W/raw && udaseg preprocess W/raw/dataset.yaml "
        "--raw W/raw --work W",
    )
    stage_command(
        app,
        "preprocess",
        _preprocess_lines,
        help="Raw scans -> reoriented, resampled, cropped, normalised volumes in HDF5 "
        "(one store per domain).",
        example="udaseg preprocess mmwhs --raw ~/data/MMWHS --work W --set geometry.inplane_mm=2.0",
    )


def _phantom_line(summary: dict) -> str:
    if summary["skipped"]:
        return f"{summary['out']} already holds this phantom; skipped (use --force to rewrite)"
    return (
        f"wrote the phantom to {summary['out']} ({summary['cases']} cases); "
        f"manifest: {summary['manifest']}"
    )


def _preprocess_lines(manifests) -> str:
    return "\n".join(
        f"{s['dataset']}/{s['domain']}: {s['cases']} cases, "
        + state(s, f"{s.get('seconds', 0)} s")
        + f" -> {s['output']}"
        for s in (m.summary for m in manifests)
    )
