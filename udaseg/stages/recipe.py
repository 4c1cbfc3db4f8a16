"""``udaseg run RECIPE --work W``: a paper's pipeline as a list of udaseg commands, run in order.

A recipe is YAML::

    description: SIFA on MMWHS, MR -> CT
    vars:                       # defaults; --set name=value overrides; ${work} is --work
      steps: 20000
    presets:                    # --preset NAME: named sets of vars (e.g. cpu-small)
      cpu-small: {steps: 300}
    stages:
      - name: preprocess        # unique; --only / --from pick stages by it
        run: udaseg preprocess mmwhs --raw ${raw} --work ${work}
      - name: eval-sifa
        label: SIFA             # evaluate stages: the row of the comparison table
        run: udaseg evaluate --pred ${work}/predict/sifa --ref ${raw} --dataset mmwhs ...

Each stage is exactly the command a user would type, so ``--dry-run`` prints a script that can be
split over cluster nodes. ``udaseg run`` executes them in this process one after the other; a
stage whose artifact is complete and current is skipped by the stage itself (every stage checks
its inputs' and options' hashes), and a stage whose input changed reruns, and with it everything
downstream whose inputs it rewrote. The run ends with a comparison table of every ``evaluate``
stage (mean Dice per class, mean Dice, mean ASSD and HD95 where computed), written to
``W/runs/<recipe>/``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from udaseg.errors import UdasegError, look_up_option
from udaseg.progress import NullProgress, Progress

RECIPE_KEYS = ("description", "vars", "presets", "stages", "notes")
STAGE_KEYS = ("name", "run", "label")
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# recipes shipped with udaseg: examples/recipes of the source tree, installed as udaseg.recipes
BUILTIN = Path(__file__).resolve().parents[2] / "examples" / "recipes"


@dataclass
class Stage:
    """One command of a recipe: ``args`` is the udaseg argument list after substitution."""

    name: str
    args: list[str]
    label: str | None = None

    @property
    def command(self) -> str:
        return "udaseg " + shlex.join(self.args)

    @property
    def kind(self) -> str:
        return self.args[0] if self.args else ""


@dataclass
class Recipe:
    name: str
    path: Path
    description: str
    stages: list[Stage]
    variables: dict[str, Any] = field(default_factory=dict)


def find_recipe(recipe: str | Path) -> Path:
    """A recipe file: a path, or the name of a built-in recipe (``sifa-mmwhs``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    folder = builtin_folder()
    builtin = sorted(p.stem for p in folder.glob("*.yaml"))
    if str(recipe) in builtin:
        return folder / f"{recipe}.yaml"
    look_up_option(str(recipe), builtin, what="recipe")  # raises with "did you mean"
    raise AssertionError("unreachable")


def builtin_folder() -> Path:
    """The shipped recipes: the checkout's examples/recipes, else the installed copy."""
    if BUILTIN.is_dir():
        return BUILTIN
    import importlib.resources

    return Path(str(importlib.resources.files("udaseg.recipes")))


def load_recipe(
    recipe: str | Path,
    work: Path,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Recipe:
    """Read, validate and substitute a recipe.

    Raises:
        UdasegError: unreadable YAML, unknown keys, duplicate stage names, an unknown preset,
            ``--set`` of an undeclared variable, or a ``${var}`` that no variable defines
            (naming the stage).
    """
    path = find_recipe(recipe)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UdasegError(f"cannot read recipe {path}: {exc}", path=path, exit_code=2) from exc
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise UdasegError(f"recipe {path} needs a list of stages", path=path, exit_code=2)
    for key in data:
        look_up_option(key, RECIPE_KEYS, what=f"key in recipe {path.name}")
    variables = dict(data.get("vars") or {})
    presets = data.get("presets") or {}
    if preset is not None:
        look_up_option(preset, list(presets), what=f"preset of recipe {path.name}")
        for key, value in presets[preset].items():
            look_up_option(key, list(variables), what=f"variable in preset {preset}")
            variables[key] = value
    for key, value in (overrides or {}).items():
        look_up_option(key, list(variables), what=f"variable of recipe {path.name} (--set)")
        variables[key] = value
    variables["work"] = str(work)
    variables = _resolve(variables, path)
    stages, seen = [], set()
    for i, entry in enumerate(data["stages"]):
        if not isinstance(entry, dict) or "run" not in entry or "name" not in entry:
            raise UdasegError(
                f"stage {i + 1} of recipe {path} needs a name and a run command",
                path=path,
                exit_code=2,
            )
        for key in entry:
            look_up_option(key, STAGE_KEYS, what=f"key of stage {entry['name']}")
        name = str(entry["name"])
        if name in seen:
            raise UdasegError(f"recipe {path} has two stages named {name}", path=path, exit_code=2)
        seen.add(name)
        text = _substitute(" ".join(str(entry["run"]).split()), variables, name, path)
        args = shlex.split(text)
        if args[:1] == ["udaseg"]:
            args = args[1:]
        look_up_option(args[0] if args else "", commands(), what=f"command of stage {name}")
        stages.append(Stage(name, args, entry.get("label")))
    return Recipe(path.stem, path, str(data.get("description", "")), stages, variables)


def commands() -> list[str]:
    """The udaseg subcommands a stage may run."""
    return sorted(_cli().commands)


@functools.cache
def _cli():
    """The click command tree of udaseg's CLI (built once: building it takes ~0.1 s)."""
    import typer.main

    from udaseg.cli import app

    return typer.main.get_command(app)


def check(stage: Stage) -> None:
    """Parse a stage's options the way the command would, without running it, so a typo or a
    missing option in a recipe shows up before hours of earlier stages have run.

    Raises:
        UdasegError: naming the stage and the parser's message.
    """
    from typer.exceptions import TyperException

    command, args, path = _cli(), list(stage.args), ["udaseg"]
    # descend through command groups (``translate apply``)
    while hasattr(command, "commands") and args and args[0] in command.commands:
        path.append(args[0])
        command, args = command.commands[args.pop(0)], args
    try:
        command.make_context(" ".join(path), args)
    except TyperException as exc:
        raise UdasegError(
            f"stage {stage.name}: {exc}",
            hint=f"fix the command in the recipe: {stage.command}",
            exit_code=2,
        ) from exc


def _resolve(variables: dict[str, Any], path: Path) -> dict[str, Any]:
    """Substitute variables into each other (``raw: ${work}/raw``); a cycle is an error."""
    resolved = dict(variables)
    for _ in range(len(resolved) + 1):
        pending = [k for k, v in resolved.items() if isinstance(v, str) and VAR.search(v)]
        if not pending:
            return resolved
        for key in pending:
            resolved[key] = _substitute(resolved[key], resolved, f"vars.{key}", path)
    raise UdasegError(
        f"the variables of recipe {path} refer to each other in a cycle ({', '.join(pending)})",
        path=path,
        exit_code=2,
    )


def _substitute(text: str, variables: dict[str, Any], stage: str, path: Path) -> str:
    def value(match: re.Match) -> str:
        key = match.group(1)
        if key not in variables:
            raise UdasegError(
                f"stage {stage} of recipe {path.name} uses ${{{key}}}, which no variable defines",
                hint=f"declare it under vars: (known: {', '.join(sorted(variables))})",
                path=path,
                exit_code=2,
            )
        return str(variables[key])

    return VAR.sub(value, text)


def select(stages: list[Stage], only: list[str] | None, start: str | None) -> list[Stage]:
    """The stages to run: ``only`` these names, or every stage from ``start`` on."""
    names = [s.name for s in stages]
    if only:
        for name in only:
            look_up_option(name, names, what="stage (--only)")
        return [s for s in stages if s.name in only]
    if start:
        look_up_option(start, names, what="stage (--from)")
        return stages[names.index(start) :]
    return stages


def run(
    recipe: Recipe,
    stages: list[Stage],
    *,
    progress: Progress | None = None,
    echo=print,
) -> dict[str, Any]:
    """Run ``stages`` in order in this process; returns the run summary (also written to
    ``W/runs/<recipe>/summary.json`` with the comparison table as ``comparison.md``).

    Raises:
        UdasegError: the first failing stage, named, with the message of its error.
    """
    from udaseg.artifacts import write_atomic

    progress = progress or NullProgress()
    results = []
    for stage in stages:
        echo(f"$ {stage.command}")
        started = time.perf_counter()
        summary = _call(stage)
        skipped = _skipped(summary)
        results.append(
            {
                "stage": stage.name,
                "command": stage.command,
                "status": "skipped" if skipped else "ran",
                "seconds": round(time.perf_counter() - started, 2),
                "label": stage.label,
                "summary": summary,
            }
        )
        echo(f"  {stage.name}: {'up to date, skipped' if skipped else 'done'}")
    table = comparison(results)
    out = Path(recipe.variables["work"]) / "runs" / recipe.name
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "recipe": str(recipe.path),
        "variables": recipe.variables,
        "stages": [{k: v for k, v in r.items() if k != "summary"} for r in results],
        "comparison": table,
    }
    write_atomic(out / "summary.json", json.dumps(record, indent=2, default=str) + "\n")
    write_atomic(out / "comparison.md", comparison_markdown(table, recipe))
    record["output"] = str(out)
    return record


def _call(stage: Stage) -> Any:
    """Run one udaseg command in this process and return its --json summary."""
    from typer.exceptions import TyperException

    from udaseg.cli import app

    args = list(stage.args)
    if "--json" not in args and "--help" not in args:
        args.append("--json")
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            app(args, prog_name="udaseg", standalone_mode=False)
    except UdasegError as exc:
        raise UdasegError(
            f"stage {stage.name} failed: {exc.message}",
            hint=(exc.hint + "; " if exc.hint else "")
            + "completed stages are skipped when you run the recipe again",
            path=exc.path,
            exit_code=exc.exit_code,
        ) from exc
    except TyperException as exc:  # a bad option in the recipe itself
        raise UdasegError(
            f"stage {stage.name}: {exc}",
            hint=f"fix the command in the recipe: {stage.command}",
            exit_code=2,
        ) from exc
    text = buffer.getvalue().strip()
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"output": text}


def _skipped(summary: Any) -> bool:
    if isinstance(summary, list):
        return bool(summary) and all(_skipped(s) for s in summary)
    return isinstance(summary, dict) and bool(summary.get("skipped"))


def comparison(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluate stage: label, cases, Dice per class, mean Dice, mean ASSD and mean
    HD95 (None where the stage did not compute that metric)."""
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


def comparison_markdown(rows: list[dict[str, Any]], recipe: Recipe) -> str:
    """The comparison as a Markdown table (— for a value that could not be computed)."""
    if not rows:
        return f"# {recipe.name}\n\nNo evaluate stage ran.\n"
    classes = list(rows[0]["dice"])
    distances = [
        (key, title)
        for key, title in (("mean_assd", "mean ASSD (mm)"), ("mean_hd95", "mean HD95 (mm)"))
        if any(row.get(key) is not None for row in rows)
    ]
    head = ["method", *classes, "mean Dice", *(title for _, title in distances)]
    lines = [
        f"# {recipe.name}",
        "",
        recipe.description.strip(),
        "",
        "| " + " | ".join(head) + " |",
        "| --- |" + " ---: |" * (len(head) - 1),
    ]
    for row in rows:
        cells = [_fmt(row["dice"].get(c)) for c in classes]
        cells += [_fmt(row["mean_dice"]), *(_fmt(row.get(key), 2) for key, _ in distances)]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", f"Dice and ASSD: mean over the {rows[0]['cases']} evaluated cases."]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return f"{value:.{digits}f}"
