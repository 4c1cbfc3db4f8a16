"""``udaseg translate`` (train, apply, or both style steps at once), ``udaseg cluster-styles``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from udaseg.cli.common import (
    RESULTS,
    WORK_HELP,
    ForceOpt,
    JsonOpt,
    emit,
    opt,
    progress,
    stage_command,
)
from udaseg.config.cluster_styles import ClusterStylesConfig
from udaseg.config.translate_apply import TranslateApplyConfig
from udaseg.errors import UdasegError

C = ClusterStylesConfig


def register(app: typer.Typer) -> None:
    translate = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown")
    translate.callback(invoke_without_command=True)(translate_styles)
    stage_command(
        translate,
        "translate train",
        _trained_line,
        name="train",
        help="Train an image-to-image translator on unpaired source and target slices "
        "(no target labels are read); hyperparameters with --set key=value.",
        example="udaseg translate train --method cyclegan.v1 --source W/preprocessed/mmwhs__mr "
        "--target W/preprocessed/mmwhs__ct --work W --set steps=1200 --set width=32",
    )
    stage_command(
        translate,
        "translate apply",
        _apply_line,
        name="apply",
        help="Render every source volume, slice by slice, in each of K target styles "
        "(labels copied).",
        example="udaseg translate apply --translator W/translate/RUN --style-run "
        "W/styles/RUN__k5 --work W  (then: udaseg segment-train --train-on translated "
        "--translated W/translated/RUN__k5 ...)",
    )
    app.add_typer(translate, name="translate", rich_help_panel="Stages")
    stage_command(
        app,
        "cluster-styles",
        _styles_line,
        help="KMeans over target style codes -> K representative styles (methods with style "
        "codes): centroids.npy, members.json, styles.png.",
        example="udaseg cluster-styles --translator W/translate/RUN --styles 5 --work W",
    )


def translate_styles(
    ctx: typer.Context,
    translator: Annotated[Path | None, opt(C, "translator", "--translator")] = None,
    work: Annotated[
        Path | None, typer.Option("--work", "-w", help=WORK_HELP, rich_help_panel=RESULTS)
    ] = None,
    styles: Annotated[
        int | None,
        opt(TranslateApplyConfig, "styles", "--styles", min=1),
    ] = None,
    pick: Annotated[str, opt(C, "pick", "--pick")] = C.pick,
    embedding: Annotated[str, opt(C, "embedding", "--embedding")] = C.embedding,
    seed: Annotated[int, opt(C, "seed", "--seed")] = C.seed,
    batch_size: Annotated[int, opt(C, "batch_size", "--batch-size", min=1)] = C.batch_size,
    device: Annotated[str, opt(C, "device", "--device")] = C.device,
    amp: Annotated[bool, opt(C, "amp", "--amp/--no-amp")] = C.amp,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Image-to-image translation: train a translator, render the source in K target styles.

    `translate train` trains a translator on unpaired source and target slices; `translate
    apply` renders the source in K target styles (labels kept).

    Without a subcommand, `udaseg cluster-styles` (methods with style codes) then `udaseg
    translate apply` in one job. Example: udaseg translate --translator W/translate/RUN
    --styles 5 --work W
    """
    given = translator is not None or work is not None or styles is not None
    if ctx.invoked_subcommand is not None:
        if given:
            raise UdasegError(
                f"--translator/--work/--styles before `{ctx.invoked_subcommand}` belong to "
                "`udaseg translate` without a subcommand",
                hint=f"put the options after the subcommand: udaseg translate "
                f"{ctx.invoked_subcommand} --work W ...",
                exit_code=2,
            )
        return
    if translator is None or work is None:
        missing = "--translator" if translator is None else "--work"
        raise UdasegError(
            f"udaseg translate needs {missing}",
            hint="udaseg translate --translator W/translate/RUN --styles 5 --work W, or a "
            "subcommand: udaseg translate train|apply --help",
            exit_code=2,
        )
    from udaseg.pipeline.styles import render_in_styles

    with progress(as_json) as bars:
        result = render_in_styles(
            translator,
            work,
            styles=styles,
            pick=pick,
            embedding=embedding,
            seed=seed,
            batch_size=batch_size,
            device=device,
            amp=amp,
            force=force,
            progress=bars,
        )
    lines = [_styles_line(m) for m in result if m.stage == "cluster-styles"]
    lines += [_apply_line(m) for m in result if m.stage == "translate-apply"]
    emit({m.stage: m.summary for m in result}, as_json, "\n".join(lines))


def _trained_line(manifest) -> str:
    s = manifest.summary
    losses = ", ".join(f"{k} {v:.4g}" for k, v in s.get("last_losses", {}).items())
    ran = " (up to date, skipped)" if s.get("skipped") else f" in {s.get('seconds', 0)} s"
    return (
        f"{s['method']}: {s['steps']} steps{ran}"
        + (f"; last losses {losses}" if losses else "")
        + f" -> {s['output']}"
    )


def _styles_line(manifest) -> str:
    s = manifest.summary
    skipped = " (up to date, skipped)" if s.get("skipped") else ""
    return (
        f"cluster-styles: {s['codes']} target style codes -> {s['styles']} styles, cluster "
        f"sizes {s['cluster_sizes']}{skipped} -> {s['output']}"
    )


def _apply_line(manifest) -> str:
    s = manifest.summary
    ran = (
        "up to date, skipped"
        if s.get("skipped")
        else f"{s['slices']} slices in {s['seconds']} s ({s['slices_per_second']} slices/s)"
    )
    return (
        f"translate apply: {s['cases']} source cases x {s['styles']} styles = {s['copies']} "
        f"copies, {ran} -> {s['output']}"
    )
