"""``udaseg export nnunet``: hand a run's stores on to another tool."""

from __future__ import annotations

from pathlib import Path

import typer

from udaseg.cli.common import stage_command, state


def register(app: typer.Typer) -> None:
    export = typer.Typer(
        no_args_is_help=True,
        rich_markup_mode="markdown",
        help="Hand stores on to other tools: `export nnunet` writes an nnU-Net v2 raw dataset.",
    )
    stage_command(
        export,
        "export nnunet",
        _exported_line,
        name="nnunet",
        help="Write labelled stores (translated, pseudo-labelled or preprocessed) and target "
        "images as an nnU-Net v2 raw dataset: imagesTr, labelsTr, imagesTs, dataset.json.",
        example="udaseg export nnunet --train W/translated/RUN --train W/pseudo/RUN "
        "--target W/preprocessed/crossmoda__hrT2 --target-split val --dataset-id 501 "
        "--name crossmoda --work W  (then: nnUNet_raw=W/export/nnunet "
        "nnUNetv2_plan_and_preprocess -d 501)",
    )
    app.add_typer(export, name="export", rich_help_panel="Stages")


def _exported_line(manifest) -> str:
    s = manifest.summary
    files = s.get("files", {})
    counts = ", ".join(f"{n} {folder}" for folder, n in files.items())
    ignore = s.get("labels", {}).get("ignore")
    done = counts + (f"; ignore label {ignore}" if ignore is not None else "")
    return (
        f"export nnunet {s['dataset']}: {state(s, done)} -> {s['output']}\n"
        # nnUNet_raw is the folder that holds the dataset folders
        f"next: nnUNet_raw={Path(s['output']).resolve().parent} {s['next']}"
    )
