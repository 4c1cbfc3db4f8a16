"""What every command shares: a typer command built from a stage's config class, and printing.

A stage command's options are its config class's fields (:mod:`udaseg.config`): ``--field-name``
with the field's type, default and help, in the help panel of its kind (changes results, or
runtime only). A ``bool`` field is a ``--x/--no-x`` switch, a ``list`` field a repeatable option,
the ``hparams`` dict ``--set key=value`` (repeatable). Only ``--work``, ``--force``, ``--json`` and,
for training stages, ``--show-defaults`` are added here. Nothing here imports torch.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from udaseg import config as cfg
from udaseg.config import option_flag as flag
from udaseg.config import parse_kv

RESULTS = cfg.RESULT_PANEL
RUNTIME = cfg.RUNTIME_PANEL

WORK_HELP = "Workspace root: stages read and write their artifacts under it."
JSON_HELP = "Print a machine-readable JSON summary on stdout (progress goes to stderr)."
FORCE_HELP = "Rebuild even if the artifact is current, and use inputs that changed since."

WorkOpt = Annotated[Path, typer.Option("--work", "-w", help=WORK_HELP, rich_help_panel=RESULTS)]
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_HELP, rich_help_panel=RUNTIME)]
ForceOpt = Annotated[bool, typer.Option("--force", help=FORCE_HELP, rich_help_panel=RUNTIME)]


def progress(as_json: bool):
    """Rich progress bars on stderr (off when only JSON is wanted and stderr is not a terminal)."""
    from udaseg.progress import rich_progress

    return rich_progress(enabled=sys.stderr.isatty() or not as_json)


def emit(summary: object, as_json: bool, text: str | None = None) -> None:
    """Print ``summary`` as JSON with ``--json``, else ``text`` (rich markup allowed)."""
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    elif text:
        from rich.console import Console

        Console().print(text)


def state(summary: dict, done: str) -> str:
    """``done`` for a run that worked, or the line of a run that was up to date."""
    return "up to date, skipped (--force recomputes)" if summary.get("skipped") else done


def opt(cls: type, name: str, *decls: str, **extra: Any) -> Any:
    """A typer option with the help and panel of field ``name`` of ``cls`` (hand-built commands
    that still take their defaults and help from a config class)."""
    panel = RESULTS if cfg.is_result(cls, name) else RUNTIME
    return typer.Option(*decls, help=cfg.help_of(cls, name), rich_help_panel=panel, **extra)


def _parameter(item: Any, shape: cfg.Shape) -> inspect.Parameter:
    """The typer parameter of one config field."""
    panel = RESULTS if item.metadata["kind"] == cfg.RESULT else RUNTIME
    help_text = item.metadata["help"]
    name = flag(item.name)
    if item.metadata.get("argument"):
        info: Any = typer.Argument(help=help_text)
        cli_type = shape.item | None if shape.optional else shape.item
    elif shape.kind == "switch":
        info = typer.Option(f"{name}/--no-{name[2:]}", help=help_text, rich_help_panel=panel)
        cli_type = bool
    elif shape.kind == "pairs":
        info = typer.Option(name, help=help_text, rich_help_panel=panel, metavar="KEY=VALUE")
        cli_type = list[str] | None
    elif shape.kind == "list":
        info = typer.Option(name, help=help_text, rich_help_panel=panel)
        cli_type = list[shape.item] | None
    else:
        info = typer.Option(name, help=help_text, rich_help_panel=panel)
        cli_type = shape.item | None if shape.optional else shape.item
    if item.default_factory is not cfg.dataclasses.MISSING:
        default = None  # lists and dicts: absent on the command line, the factory's value
    elif item.default is cfg.dataclasses.MISSING:
        default = inspect.Parameter.empty
    else:
        default = item.default
    return inspect.Parameter(
        item.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[cli_type, info],
    )


def config_from_options(cls: type, options: dict[str, Any]) -> Any:
    """Build ``cls`` from parsed command-line values (lists and ``--set`` pairs converted)."""
    shapes = cfg.field_shapes(cls)
    values = {}
    for item in cfg.config_fields(cls):
        value, kind = options[item.name], shapes[item.name].kind
        if kind == "pairs":
            value = parse_kv(value, flag(item.name))
        elif kind == "list" and item.default_factory is not cfg.dataclasses.MISSING:
            value = list(value or [])  # absent on the command line: the factory's empty list
        values[item.name] = value
    return cls(**values)


def stage_command(
    app: typer.Typer,
    command: str,
    describe: Callable[[Any], str],
    *,
    help: str,
    example: str,
    panel: str = "Stages",
    name: str | None = None,
    summarise: Callable[[Any], Any] | None = None,
) -> None:
    """Register ``udaseg <command>`` on ``app``: options from the stage's config class, run
    through :data:`udaseg.stages.STAGES`, then ``describe(result)`` printed (text or a rich
    renderable), or with ``--json`` the result's summary (``summarise(result)`` when given).
    Stages whose module has ``show_defaults(config)`` also get ``--show-defaults``."""
    from udaseg.stages import STAGES

    entry = STAGES[command]
    # the config class is read at registration (for the options) without importing torch: the
    # stage modules import it only inside their functions
    cls = entry.config_class
    shapes = cfg.field_shapes(cls)
    parameters = []
    if entry.takes_work:
        parameters.append(
            inspect.Parameter("work", inspect.Parameter.KEYWORD_ONLY, annotation=WorkOpt)
        )
    parameters += [_parameter(item, shapes[item.name]) for item in cfg.config_fields(cls)]
    if entry.shows_defaults:
        parameters.append(
            inspect.Parameter(
                "show_defaults",
                inspect.Parameter.KEYWORD_ONLY,
                default=False,
                annotation=Annotated[
                    bool,
                    typer.Option(
                        "--show-defaults",
                        help="Print the resolved hyperparameters (defaults + --set) and exit.",
                        rich_help_panel=RUNTIME,
                    ),
                ],
            )
        )
    parameters += [
        inspect.Parameter(
            "force", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=ForceOpt
        ),
        inspect.Parameter(
            "as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOpt
        ),
    ]

    def run_command(**options: Any) -> None:
        work = options.pop("work", None)
        force = options.pop("force")
        as_json = options.pop("as_json")
        show = options.pop("show_defaults", False)
        config = config_from_options(cls, options)
        if show:
            resolved = entry.module.show_defaults(config)
            emit(resolved, as_json, json.dumps(resolved, indent=2, default=str))
            return
        with progress(as_json) as bars:
            result = entry.run(config, work, force=force, progress=bars)
        summary = _summary(result)
        if not summary:  # a non-zero rank under torchrun: rank 0 reports
            return
        if as_json:
            emit(summarise(result) if summarise else summary, True)
        else:
            from rich.console import Console

            Console().print(describe(result))

    run_command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run_command.__doc__ = f"{help}\n\nExample: {example}"
    run_command.__name__ = (name or command).replace("-", "_").replace(" ", "_")
    short = help.split(". ")[0].split(": ")[0].rstrip(".")
    app.command(name or command, rich_help_panel=panel, short_help=short)(run_command)


def _summary(result: Any) -> Any:
    if isinstance(result, list):
        summaries = [_summary(r) for r in result]
        return summaries if len(summaries) > 1 else summaries[0]
    return result.summary if hasattr(result, "summary") else result
