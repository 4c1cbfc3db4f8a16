"""``udaseg`` command line: parse options into a stage config, call the stage, print the result.

One module per command group, each thin: the options of a stage command come from its config
class (:mod:`udaseg.config`), the work from :mod:`udaseg.stages`. torch, SimpleITK and h5py are
imported inside the commands, so ``udaseg --help`` answers at once.
"""

from __future__ import annotations

import sys

import typer
import typer.core

from udaseg import __version__
from udaseg.errors import UdasegError

# the order of --help: the pipeline's
ORDER = (
    "phantom",
    "preprocess",
    "translate",
    "cluster-styles",
    "segment-train",
    "adapt",
    "pseudo-label",
    "predict",
    "export",
    "evaluate",
    "report",
    "run",
)


class _PipelineOrder(typer.core.TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


app = typer.Typer(
    name="udaseg",
    cls=_PipelineOrder,
    help="Unsupervised cross-modality domain adaptation for medical image segmentation: "
    "labelled source scans + unlabelled target scans -> a segmenter for the target. "
    "Stages share artifacts under --work and can each run alone (e.g. on their own GPU node).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"udaseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """udaseg: staged, reproducible UDA pipelines (SIFA, DAR-UNet, AttENT, BiGL, GLUA)."""


def _register() -> None:
    from udaseg.cli import data, evaluation, export, pipelines, training, translate

    for module in (data, translate, training, evaluation, export, pipelines):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point: run the app, turning UdasegError into a clean message."""
    try:
        app(prog_name="udaseg")
    except UdasegError as exc:
        _print_error(exc)
        sys.exit(exc.exit_code)


def _print_error(exc: UdasegError) -> None:
    from rich.console import Console
    from rich.text import Text

    text = Text("error: ", style="bold red")
    text.append(str(exc))
    Console(stderr=True).print(text)
