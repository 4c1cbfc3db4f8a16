"""``udaseg run PIPELINE`` and ``udaseg report``: whole pipelines, and what a workspace holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from udaseg import layout
from udaseg.cli.common import RESULTS, RUNTIME, JsonOpt, WorkOpt, emit, stage_command
from udaseg.config import parse_kv


def register(app: typer.Typer) -> None:
    stage_command(
        app,
        "report",
        _report_lines,
        panel="Pipelines",
        help="Report on a workspace: WORK/report/report.html (self-contained) and report.md. "
        "Data, translator samples, style embedding, training curves, predictions next to ground "
        "truth, Dice box plots and the comparison of every evaluated run; a section without "
        "artifacts says what is missing.",
        example="udaseg report --work W",
    )
    app.command("run", rich_help_panel="Pipelines")(run_pipeline)


def run_pipeline(
    pipeline: Annotated[
        str,
        typer.Argument(help="Pipeline YAML file, or the name of one in examples/pipelines."),
    ],
    work: WorkOpt,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Named variable set of the pipeline, e.g. cpu-small (it may also switch "
            "optional stages on, as --with does).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    var: Annotated[
        list[str] | None,
        typer.Option(
            "--var", help="Pipeline variable name=value (repeatable).", rich_help_panel=RESULTS
        ),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(help="Comma list of stage names to run.", rich_help_panel=RUNTIME),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Run from this stage on.", rich_help_panel=RUNTIME),
    ] = None,
    with_: Annotated[
        str | None,
        typer.Option(
            "--with",
            help="Comma list of optional stages to run as well (e.g. the bounds of `uda`).",
            rich_help_panel=RUNTIME,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the commands (a script to split over nodes) and run nothing.",
            rich_help_panel=RUNTIME,
        ),
    ] = False,
    wait_for_locks: Annotated[
        float,
        typer.Option(
            "--wait-for-locks",
            help="Where another process builds a stage's artifact (e.g. the other direction "
            "training a translator both use), wait for it, checking every SECONDS, instead "
            "of failing.",
            metavar="SECONDS",
            rich_help_panel=RUNTIME,
        ),
    ] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Run a pipeline (a paper's experiment as stage commands), skipping current stages.

    Each stage's command is printed before it runs; stages whose artifacts are complete and
    current are skipped; the run ends with a comparison table of every evaluate stage.

    Example: udaseg run phantom-demo --work W  (udaseg run sifa-mmwhs --work W --preset
    cpu-small --var raw=~/data/MMWHS --dry-run prints the commands)
    """
    from udaseg.pipeline import runner

    loaded = runner.load_pipeline(pipeline, work, preset, parse_kv(var, "--var"))
    chosen = runner.select(
        loaded.stages,
        [s.strip() for s in only.split(",")] if only else None,
        from_,
        # the preset's groups run as if --with named them
        loaded.preset_with + ([s.strip() for s in with_.split(",")] if with_ else []),
    )
    if dry_run:
        for stage in chosen:
            runner.check(stage)
        runner.check_inputs(loaded, chosen)
        commands = [s.command for s in chosen]
        if as_json:
            emit({"pipeline": str(loaded.path), "commands": commands}, True)
        else:
            typer.echo("\n".join(commands))  # plain lines, unwrapped: a script to copy
        return

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    record = runner.run(loaded, chosen, echo=echo, wait_for_locks=wait_for_locks)
    if as_json:
        emit(record, True)
    else:  # plain Markdown, unwrapped, to paste into notes
        typer.echo((Path(record["output"]) / layout.COMPARISON).read_text(encoding="utf-8"))


def _report_lines(manifest) -> str:
    s = manifest.summary
    # sections share some notes ("no evaluate run"): each is printed once
    missing = dict.fromkeys(n for section in s["sections"].values() for n in section["notes"])
    return "\n".join(
        [
            f"report of {s['artifacts']} artifacts ({s['evaluate_runs']} evaluate runs): "
            f"{s['sections_with_content']} sections, {s['images']} images in {s['seconds']} s",
            *(f"  note: {n}" for n in missing),
            f"-> {s['html']}",
            f"-> {s['markdown']}",
        ]
    )
