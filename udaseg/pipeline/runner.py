"""``udaseg run PIPELINE --work W``: a paper's pipeline as a list of udaseg commands, run in order.

A pipeline is YAML::

    description: SIFA on MMWHS, MR -> CT
    vars:                       # defaults; --var name=value overrides; ${work} is --work
      steps: 20000
    presets:                    # --preset NAME: named sets of vars (e.g. cpu-small)
      cpu-small: {steps: 300}
      full: {with: [bounds]}    # `with`: optional groups the preset runs, as --with would
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

PIPELINE_KEYS = ("description", "vars", "presets", "dataset", "stages", "outputs", "notes")
STAGE_KEYS = ("name", "run", "label", "when", "optional")
# the key of a preset that is not a variable: the optional groups it runs (``with: [bounds]``)
PRESET_WITH = "with"
DATASET_KEYS = ("manifest", "inplane_size")
# variables a pipeline's `dataset:` section defines from the manifest (see dataset_variables)
DERIVED = ("dataset_name", "patch", "geometry")
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
    # why the stage does not apply to this dataset (``when:``), e.g. "domain lge has no labels"
    not_applicable: str | None = None
    # the group of an optional stage (``optional: bounds``): it runs only when --with names it
    optional: str | None = None

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
    # what the run made for its user, e.g. {"predictions of the target": "W/predict/..."}
    outputs: dict[str, str] = field(default_factory=dict)
    # the --preset its variables came from (None: the pipeline's defaults)
    preset: str | None = None
    # the optional groups that preset runs (its ``with:``), as if --with named them
    preset_with: list[str] = field(default_factory=list)


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
            a preset's variable or ``with:`` group that the pipeline does not declare, a
            variable named ``with``, ``--var`` of an undeclared variable, or a ``${var}`` that
            no variable defines (naming the stage).
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
    if PRESET_WITH in variables:
        raise UdasegError(
            f"pipeline {path}: a variable may not be named {PRESET_WITH}",
            hint=f"rename it; {PRESET_WITH}: in a preset lists the optional groups it runs",
            path=path,
            exit_code=2,
        )
    presets = data.get("presets") or {}
    preset_with: list[str] = []
    if preset is not None:
        look_up_option(preset, list(presets), what=f"preset of pipeline {path.name}")
        for key, value in (presets[preset] or {}).items():
            if key == PRESET_WITH:
                preset_with = _preset_groups(value, preset, path)
                continue
            look_up_option(key, list(variables), what=f"variable in preset {preset}")
            variables[key] = value
    for key, value in (overrides or {}).items():
        look_up_option(key, list(variables), what=f"variable of pipeline {path.name} (--var)")
        variables[key] = value
    variables["work"] = str(work)
    manifest = None
    if data.get("dataset") is not None:
        manifest, derived = dataset_variables(data["dataset"], variables, path)
        variables.update(derived)
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
        when = entry.get("when")
        reason = None
        if when is not None:
            reason = _not_applicable(_substitute(str(when), variables, name, path), manifest, name)
        stages.append(
            Stage(name, args, entry.get("label"), reason, _group(entry.get("optional"), name))
        )
    outputs = {
        str(label): _substitute(str(where), variables, f"outputs.{label}", path)
        for label, where in (data.get("outputs") or {}).items()
    }
    groups = sorted({s.optional for s in stages if s.optional})
    for group in preset_with:
        look_up_option(
            group,
            groups,
            what=f"optional stage group ({PRESET_WITH}: of preset {preset} in {path})",
        )
    description = str(data.get("description", ""))
    return Pipeline(path.stem, path, description, stages, variables, outputs, preset, preset_with)


def dataset_variables(section: Any, variables: dict[str, Any], path: Path) -> tuple[Any, dict]:
    """The manifest a dataset-generic pipeline runs on, and the variables it defines from it.

    ``section`` is the pipeline's ``dataset:`` mapping: ``manifest`` (a built-in name or a YAML
    path, usually ``${dataset}``) and optionally ``inplane_size`` (pixels of the longer in-plane
    side, or empty to keep the manifest's grid). Defined: ``dataset_name`` (the stores are
    ``W/preprocessed/<dataset_name>__<domain>``); ``patch`` ("rows,cols" of the preprocessed
    slices, the training patch; 256,256 where the manifest fixes no in-plane size);
    ``geometry`` (``--set`` options for ``udaseg preprocess`` that resample to
    ``inplane_size`` pixels over the manifest's field of view, or empty).

    Raises:
        UdasegError (exit code 2): unknown keys, a variable that redefines a derived one, a
            manifest that does not load, a size that is not a positive integer.
    """
    from udaseg.data.manifest import load_manifest

    if not isinstance(section, dict) or "manifest" not in section:
        raise UdasegError(
            f"pipeline {path.name}: 'dataset' must be a mapping with a 'manifest' key",
            path=path,
            exit_code=2,
        )
    for key in section:
        look_up_option(key, DATASET_KEYS, what=f"key of the dataset section of {path.name}")
    for key in DERIVED:
        if key in variables:
            raise UdasegError(
                f"pipeline {path.name}: variable {key} is defined by its dataset section",
                hint=f"rename the variable; {', '.join(DERIVED)} come from the manifest",
                path=path,
                exit_code=2,
            )
    # the manifest's own expression may not use the variables it defines
    known = _resolve({**variables, **dict.fromkeys(DERIVED, "")}, path)
    name = _substitute(str(section["manifest"]), known, "dataset.manifest", path)
    manifest = load_manifest(name)
    size_text = _substitute(str(section.get("inplane_size") or ""), known, "dataset", path)
    geometry = manifest.geometry
    rows_cols = geometry.inplane_size
    options = ""
    if size_text.strip():
        try:
            size = int(size_text)
            if size < 1:
                raise ValueError
        except ValueError:
            raise UdasegError(
                f"pipeline {path.name}: inplane_size {size_text!r} is not a positive integer",
                hint="give the pixels of the longer in-plane side, e.g. --var size=128, "
                "or leave it empty to keep the manifest's grid",
                path=path,
                exit_code=2,
            ) from None
        rows_cols, options = _resized(geometry, size)
    # slices of no fixed size: the models' usual 256x256 patches
    patch = ",".join(str(n) for n in rows_cols) if rows_cols else "256,256"
    return manifest, {"dataset_name": manifest.name, "patch": patch, "geometry": options}


def _resized(geometry, size: int) -> tuple[tuple[int, int], str]:
    """The (rows, cols) and preprocess ``--set`` options that put ``size`` pixels on the longer
    side of the manifest's in-plane grid, keeping its field of view (spacing scaled with it)."""
    if geometry.inplane_size is None:  # no fixed grid: a fixed square one of that size
        return (size, size), f"--set 'geometry.inplane_size=[{size},{size}]'"
    rows, cols = geometry.inplane_size
    scale = max(rows, cols) / size
    new = (max(1, round(rows / scale)), max(1, round(cols / scale)))
    options = f"--set 'geometry.inplane_size=[{new[0]},{new[1]}]'"
    if geometry.inplane_mm is not None:
        options += f" --set geometry.inplane_mm={geometry.inplane_mm * scale:g}"
    return new, options


def _preset_groups(value: Any, preset: str, path: Path) -> list[str]:
    """A preset's ``with:``: a list of optional stage groups, or one group as a string."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UdasegError(
        f"preset {preset} of pipeline {path}: {PRESET_WITH}: must list optional stage groups",
        hint=f"write {PRESET_WITH}: [bounds] or {PRESET_WITH}: bounds",
        path=path,
        exit_code=2,
    )


def _group(optional: Any, stage: str) -> str | None:
    """An optional stage's group: ``optional: bounds``, or ``optional: true`` for a group of one
    (the stage's own name); None for a stage that always runs."""
    if optional is None or optional is False:
        return None
    return stage if optional is True else str(optional)


def _not_applicable(when: str, manifest, stage: str) -> str | None:
    """Why a stage's ``when:`` condition fails on this dataset, or None when it holds.
    Conditions: ``labelled:DOMAIN`` (the manifest gives that domain's labels)."""
    kind, _, domain = when.partition(":")
    if kind != "labelled" or not domain:
        raise UdasegError(
            f"stage {stage}: unknown condition when: {when!r}",
            hint="conditions: labelled:DOMAIN",
            exit_code=2,
        )
    if manifest is None:
        raise UdasegError(
            f"stage {stage}: when: {when} needs the pipeline's dataset section", exit_code=2
        )
    if domain not in manifest.domains:
        look_up_option(domain, list(manifest.domains), what=f"domain of {manifest.name}")
    if manifest.domains[domain].labelled:
        return None
    return f"domain {domain} of {manifest.name} has no labels"


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
        if stage.not_applicable:
            continue
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


def select(
    stages: list[Stage],
    only: list[str] | None,
    start: str | None,
    extra: list[str] | None = None,
) -> list[Stage]:
    """The stages to run: ``only`` these names, or every stage from ``start`` on; optional
    stages (``optional: GROUP``) only when ``only`` names them or ``extra`` (``--with``, and the
    preset's ``with:``, :attr:`Pipeline.preset_with`) names their group."""
    names = [s.name for s in stages]
    groups = sorted({s.optional for s in stages if s.optional})
    for name in extra or []:
        look_up_option(name, groups, what="optional stage group (--with)")
    if only:
        for name in only:
            look_up_option(name, names, what="stage (--only)")
        return [s for s in stages if s.name in only]
    chosen = [s for s in stages if not s.optional or s.optional in (extra or [])]
    if start:
        look_up_option(start, names, what="stage (--from)")
        return [s for s in chosen if names.index(s.name) >= names.index(start)]
    return chosen


def run(
    pipeline: Pipeline,
    stages: list[Stage],
    *,
    progress: Progress | None = None,
    echo=print,
    wait_for_locks: float = 0.0,
) -> dict[str, Any]:
    """Run ``stages`` in order in this process; returns the run summary (also written to
    ``W/runs/<pipeline>/summary.json`` with the comparison table as ``comparison.md``).

    ``wait_for_locks``: where a stage's artifact is being built by another process (e.g. the
    other direction of a route, training the translator both share), wait for it, polling every
    this many seconds, then run the stage (which finds the artifact current and skips it);
    0 fails at once, naming the holder.

    The summary records the provenance ``udaseg report`` shows beside each result: the preset
    and the optional groups it switched on (``preset_with``), the optional groups whose stages
    were chosen (``with``: the preset's, ``--with``'s, or named by ``--only``), the variables,
    the udaseg version and git commit, each stage's command and the artifacts it wrote
    (``artifacts``: workspace-relative keys such as ``evaluate/x``), and an index of every
    artifact any run of this pipeline wrote into W (kept across runs with other variables, e.g.
    both directions of a route).

    Raises:
        UdasegError: the first failing stage, named, with the message of its error.
    """
    from udaseg import __version__
    from udaseg.artifacts import git_commit, write_atomic

    progress = progress or NullProgress()
    check_inputs(pipeline, stages)
    results = []
    for stage in stages:
        if stage.not_applicable:
            echo(f"  {stage.name}: not applicable, {stage.not_applicable}")
            results.append(
                {
                    "stage": stage.name,
                    "command": stage.command,
                    "status": "not applicable",
                    "reason": stage.not_applicable,
                    "seconds": 0.0,
                    "label": stage.label,
                    "artifacts": [],
                    "summary": None,
                }
            )
            continue
        echo(f"$ {stage.command}")
        started = time.perf_counter()
        summary = _call(stage, progress, wait_for_locks, echo)
        skipped = _skipped(summary)
        results.append(
            {
                "stage": stage.name,
                "command": stage.command,
                "status": "skipped" if skipped else "ran",
                "seconds": round(time.perf_counter() - started, 2),
                "label": stage.label,
                "artifacts": _artifact_keys(summary, pipeline.variables["work"]),
                "summary": summary,
            }
        )
        echo(f"  {stage.name}: {'up to date, skipped' if skipped else 'done'}")
    table = comparison(results)
    out = layout.run_dir(pipeline.variables["work"], layout.RUNS, pipeline.name)
    out.mkdir(parents=True, exist_ok=True)
    stage_records = [{k: v for k, v in r.items() if k != "summary"} for r in results]
    record = {
        "pipeline": str(pipeline.path),
        "preset": pipeline.preset,
        "preset_with": pipeline.preset_with,
        "with": sorted({s.optional for s in stages if s.optional}),
        "udaseg_version": __version__,
        "git_commit": git_commit(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "variables": pipeline.variables,
        "stages": stage_records,
        "comparison": table,
    }
    record["artifacts"] = _artifact_index(out / layout.SUMMARY, record)
    write_atomic(out / layout.SUMMARY, json.dumps(record, indent=2, default=str) + "\n")
    write_atomic(out / layout.COMPARISON, comparison_markdown(table, pipeline))
    record["output"] = str(out)
    record["outputs"] = {
        label: where for label, where in pipeline.outputs.items() if Path(where).exists()
    }
    for label, where in record["outputs"].items():
        echo(f"{label}: {where}")
    return record


def _artifact_keys(summary: Any, work: str | Path) -> list[str]:
    """The workspace-relative folders (``segment/x``) a stage's summary names as its output."""
    summaries = summary if isinstance(summary, list) else [summary]
    keys = []
    for one in summaries:
        if isinstance(one, dict) and isinstance(one.get("output"), str) and one["output"]:
            try:
                keys.append(Path(one["output"]).resolve().relative_to(Path(work).resolve()))
            except ValueError:  # written outside the workspace (an export): not a W artifact
                continue
    return [key.as_posix() for key in keys]


def _artifact_index(path: Path, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Artifact key -> how this pipeline made it, merged over the index an earlier run left in
    ``path``: a rerun with other variables (the route's other direction) writes other
    artifacts into W, and the provenance of the first ones must survive it."""
    try:
        index = dict(json.loads(path.read_text(encoding="utf-8")).get("artifacts") or {})
    except (OSError, ValueError, AttributeError):
        index = {}
    made = {k: record[k] for k in ("preset", "with", "udaseg_version", "git_commit", "finished")}
    for stage in record["stages"]:
        for key in stage["artifacts"]:
            index[key] = {
                "stage": stage["stage"],
                "label": stage["label"],
                "command": stage["command"],
                "status": stage["status"],
                **made,
                "variables": record["variables"],
            }
    return index


def _call(stage: Stage, progress: Progress, wait_for_locks: float = 0.0, echo=print) -> Any:
    """Run one stage command in this process; its summary (an evaluate stage's: the scores in
    its ``summary.json``, which the comparison table reads)."""
    command = _parse(stage)
    try:
        result = _run_waiting(command, stage.name, progress, wait_for_locks, echo)
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


def _run_waiting(command, name: str, progress: Progress, wait_for_locks: float, echo) -> Any:
    """``command.run(progress)``; while another process holds the lock of the artifact it
    builds, wait (when ``wait_for_locks`` > 0, polling every that many seconds) and run it again,
    saying so once and then how long it waited."""
    from udaseg.artifacts import ArtifactLockedError

    waited_since = None
    while True:
        try:
            result = command.run(progress)
            break
        except ArtifactLockedError as exc:
            if wait_for_locks <= 0:
                raise
            if waited_since is None:
                waited_since = time.perf_counter()
                echo(f"  {name}: {exc.message}; waiting")
            time.sleep(wait_for_locks)
    if waited_since is not None:
        echo(f"  {name}: waited {time.perf_counter() - waited_since:.0f} s")
    return result


def _skipped(summary: Any) -> bool:
    if isinstance(summary, list):
        return bool(summary) and all(_skipped(s) for s in summary)
    return isinstance(summary, dict) and bool(summary.get("skipped"))
