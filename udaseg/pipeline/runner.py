"""``udaseg run PIPELINE --work W``: a paper's pipeline as a list of udaseg commands, run in order.

A pipeline is YAML::

    description: SIFA on MMWHS, MR -> CT
    vars:                       # defaults; --var name=value overrides; ${work} is --work
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
split over cluster nodes. ``udaseg run`` parses each into its stage's config
(:mod:`udaseg.pipeline.commands`) and calls the stage in this process, one after the other; a
stage whose artifact is complete and current is skipped by the stage itself (every stage checks
its inputs' and options' hashes), and a stage whose input changed reruns, and with it everything
downstream whose inputs it rewrote. The run ends with a comparison table of every ``evaluate``
stage (mean Dice per class, mean Dice, mean ASSD and HD95 where computed), written to
``W/runs/<pipeline>/``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from udaseg import layout
from udaseg.errors import UdasegError, look_up_option
from udaseg.evaluation.comparison import comparison, comparison_markdown, read_summary
from udaseg.progress import NullProgress, Progress

PIPELINE_KEYS = ("description", "vars", "presets", "stages", "notes")
STAGE_KEYS = ("name", "run", "label")
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# pipelines shipped with udaseg: examples/pipelines of the source tree
# (installed as udaseg.builtin_pipelines)
BUILTIN = Path(__file__).resolve().parents[2] / "examples" / "pipelines"


@dataclass
class Stage:
    """One command of a pipeline: ``args`` is the udaseg argument list after substitution."""

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
class Pipeline:
    name: str
    path: Path
    description: str
    stages: list[Stage]
    variables: dict[str, Any] = field(default_factory=dict)


def find_pipeline(pipeline: str | Path) -> Path:
    """A pipeline file: a path, or the name of a built-in pipeline (``sifa-mmwhs``)."""
    path = Path(pipeline)
    if path.is_file():
        return path
    folder = builtin_folder()
    builtin = sorted(p.stem for p in folder.glob("*.yaml"))
    if str(pipeline) in builtin:
        return folder / f"{pipeline}.yaml"
    look_up_option(str(pipeline), builtin, what="pipeline")  # raises with "did you mean"
    raise AssertionError("unreachable")


def builtin_folder() -> Path:
    """The shipped pipelines: the checkout's examples/pipelines, else the installed copy."""
    if BUILTIN.is_dir():
        return BUILTIN
    import importlib.resources

    return Path(str(importlib.resources.files("udaseg.builtin_pipelines")))


def load_pipeline(
    pipeline: str | Path,
    work: Path,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Pipeline:
    """Read, validate and substitute a pipeline.

    Raises:
        UdasegError: unreadable YAML, unknown keys, duplicate stage names, an unknown preset,
            ``--var`` of an undeclared variable, or a ``${var}`` that no variable defines
            (naming the stage).
    """
    path = find_pipeline(pipeline)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UdasegError(f"cannot read pipeline {path}: {exc}", path=path, exit_code=2) from exc
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise UdasegError(f"pipeline {path} needs a list of stages", path=path, exit_code=2)
    for key in data:
        look_up_option(key, PIPELINE_KEYS, what=f"key in pipeline {path.name}")
    variables = dict(data.get("vars") or {})
    presets = data.get("presets") or {}
    if preset is not None:
        look_up_option(preset, list(presets), what=f"preset of pipeline {path.name}")
        for key, value in presets[preset].items():
            look_up_option(key, list(variables), what=f"variable in preset {preset}")
            variables[key] = value
    for key, value in (overrides or {}).items():
        look_up_option(key, list(variables), what=f"variable of pipeline {path.name} (--var)")
        variables[key] = value
    variables["work"] = str(work)
    variables = _resolve(variables, path)
    stages, seen = [], set()
    for i, entry in enumerate(data["stages"]):
        if not isinstance(entry, dict) or "run" not in entry or "name" not in entry:
            raise UdasegError(
                f"stage {i + 1} of pipeline {path} needs a name and a run command",
                path=path,
                exit_code=2,
            )
        for key in entry:
            look_up_option(key, STAGE_KEYS, what=f"key of stage {entry['name']}")
        name = str(entry["name"])
        if name in seen:
            raise UdasegError(
                f"pipeline {path} has two stages named {name}", path=path, exit_code=2
            )
        seen.add(name)
        text = _substitute(" ".join(str(entry["run"]).split()), variables, name, path)
        args = shlex.split(text)
        if args[:1] == ["udaseg"]:
            args = args[1:]
        look_up_option(args[0] if args else "", commands(), what=f"command of stage {name}")
        stages.append(Stage(name, args, entry.get("label")))
    return Pipeline(path.stem, path, str(data.get("description", "")), stages, variables)


def commands() -> list[str]:
    """The udaseg commands a stage may run (the first word of each stage command)."""
    from udaseg.stages import STAGES

    return sorted({command.split()[0] for command in STAGES})


def check(stage: Stage) -> None:
    """Parse a stage's command the way it will run, without running it, so a typo or a missing
    option in a pipeline shows up before hours of earlier stages have run.

    Raises:
        UdasegError: naming the stage and what is wrong with its command.
    """
    _parse(stage)


def check_inputs(pipeline: Pipeline, stages: list[Stage]) -> None:
    """Refuse a raw data folder that does not exist before anything runs or is submitted: the
    ``--raw`` of a preprocess stage, and an evaluate ``--ref`` that is one of the pipeline's raw
    folders, unless a stage chosen before it writes that folder (``phantom --out``).

    Raises:
        UdasegError (exit code 2): naming the stage, the option, the folder and the pipeline
            variable that holds it.
    """
    raw_folders = {
        _absolute(stage.args[i + 1])
        for stage in pipeline.stages
        if stage.kind == "preprocess"
        for i, arg in enumerate(stage.args[:-1])
        if arg == "--raw"
    }
    written: list[Path] = []
    for stage in stages:
        config = _parse(stage).config
        needed = []
        if stage.kind == "phantom":
            written.append(_absolute(config.out))
        elif stage.kind == "preprocess" and config.raw is not None:
            needed.append(("--raw", config.raw))
        elif stage.kind == "evaluate" and _absolute(config.ref) in raw_folders:
            needed.append(("--ref", config.ref))
        for option, folder in needed:
            path = _absolute(folder)
            if path.is_dir() or any(path == w or w in path.parents for w in written):
                continue
            names = [k for k, v in pipeline.variables.items() if _absolute(str(v)) == path]
            held = f" (pipeline variable {names[0]})" if names else ""
            raise UdasegError(
                f"stage {stage.name}: {option} {folder}{held} "
                + ("is not a folder" if path.exists() else "does not exist"),
                hint=f"pass the downloaded dataset folder: --var {names[0]}=PATH"
                if names
                else f"fix {option} in the pipeline: {stage.command}",
                path=path,
                exit_code=2,
            )


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute and normalised (``a/../b`` is ``b``), without following links."""
    return Path(os.path.abspath(path))


def _parse(stage: Stage):
    from udaseg.pipeline.commands import parse

    try:
        return parse(stage.args)
    except UdasegError as exc:
        raise UdasegError(
            f"stage {stage.name}: {exc.message}",
            hint=f"fix the command in the pipeline: {stage.command}",
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
        f"the variables of pipeline {path} refer to each other in a cycle ({', '.join(pending)})",
        path=path,
        exit_code=2,
    )


def _substitute(text: str, variables: dict[str, Any], stage: str, path: Path) -> str:
    def value(match: re.Match) -> str:
        key = match.group(1)
        if key not in variables:
            raise UdasegError(
                f"stage {stage} of pipeline {path.name} uses ${{{key}}}, which no variable defines",
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
    pipeline: Pipeline,
    stages: list[Stage],
    *,
    progress: Progress | None = None,
    echo=print,
) -> dict[str, Any]:
    """Run ``stages`` in order in this process; returns the run summary (also written to
    ``W/runs/<pipeline>/summary.json`` with the comparison table as ``comparison.md``).

    Raises:
        UdasegError: the first failing stage, named, with the message of its error.
    """
    from udaseg.artifacts import write_atomic

    progress = progress or NullProgress()
    check_inputs(pipeline, stages)
    results = []
    for stage in stages:
        echo(f"$ {stage.command}")
        started = time.perf_counter()
        summary = _call(stage, progress)
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
    out = layout.run_dir(pipeline.variables["work"], layout.RUNS, pipeline.name)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "pipeline": str(pipeline.path),
        "variables": pipeline.variables,
        "stages": [{k: v for k, v in r.items() if k != "summary"} for r in results],
        "comparison": table,
    }
    write_atomic(out / layout.SUMMARY, json.dumps(record, indent=2, default=str) + "\n")
    write_atomic(out / layout.COMPARISON, comparison_markdown(table, pipeline))
    record["output"] = str(out)
    return record


def _call(stage: Stage, progress: Progress) -> Any:
    """Run one stage command in this process; its summary (an evaluate stage's: the scores in
    its ``summary.json``, which the comparison table reads)."""
    command = _parse(stage)
    try:
        result = command.run(progress)
    except UdasegError as exc:
        raise UdasegError(
            f"stage {stage.name} failed: {exc.message}",
            hint=(exc.hint + "; " if exc.hint else "")
            + "completed stages are skipped when you run the pipeline again",
            path=exc.path,
            exit_code=exc.exit_code,
        ) from exc
    if isinstance(result, list):
        return [r.summary for r in result]
    if not hasattr(result, "summary"):
        return result
    if result.stage == "evaluate":
        return {**read_summary(result.summary["output"]), **result.summary}
    return result.summary


def _skipped(summary: Any) -> bool:
    if isinstance(summary, list):
        return bool(summary) and all(_skipped(s) for s in summary)
    return isinstance(summary, dict) and bool(summary.get("skipped"))
