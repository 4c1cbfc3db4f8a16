"""How each row of the comparison was made, by following the artifact chain its manifests record:
the evaluate run -> its predict run (``inputs["pred"]``) -> the model behind it (the predict
run's ``segment-train`` or ``adapt`` inputs: stage, method or model, steps, seed, precision, the
udaseg version and git commit that built it, and the artifacts it was built from) -> the pipeline
that ran the evaluate stage (``W/runs/<pipeline>/summary.json``: its preset and variables).

A pipeline run's summary indexes every artifact it wrote (see
:func:`udaseg.pipeline.runner.run`); a summary written before that index existed still names
its evaluate stages' ``--name``, which is how their rows are found.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udaseg import artifacts, layout
from udaseg.reporting.discovery import Artifact, Evaluation, Workspace
from udaseg.reporting.document import Section, Table

# how many characters of a commit hash the table shows (git's usual short form is 7 to 12)
SHORT_COMMIT = 10


@dataclass(frozen=True)
class PipelineRun:
    """How a pipeline made one artifact: the pipeline's name, the stage (its name in the YAML)
    and its comparison ``label``, the ``command``, and the run's ``preset`` and ``variables``;
    ``recorded`` is False for a summary written before presets and versions were recorded."""

    pipeline: str
    stage: str
    label: str | None
    command: str
    preset: str | None
    variables: dict[str, Any]
    udaseg_version: str | None
    git_commit: str | None
    finished: str | None
    recorded: bool = True

    @property
    def setup(self) -> tuple:
        """What tells two runs of a pipeline apart in the pipelines table."""
        return (self.pipeline, self.preset, json.dumps(self.variables, sort_keys=True, default=str))


def pipeline_index(work: Path) -> tuple[dict[str, PipelineRun], list[str]]:
    """Artifact key (``evaluate/x``) -> the pipeline run that made it, over every
    ``W/runs/*/summary.json`` (the newest run wins when two pipelines claim one artifact);
    and notes for summaries that cannot be read."""
    index: dict[str, PipelineRun] = {}
    notes = []
    paths = sorted(Path(work).glob(f"{layout.RUNS}/*/{layout.SUMMARY}"), key=_mtime)
    for path in paths:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            index.update(_entries(path.parent.name, record))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            notes.append(f"cannot read the pipeline run summary {path}: {exc}")
    return index, notes


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def _entries(pipeline: str, record: dict) -> dict[str, PipelineRun]:
    indexed = record.get("artifacts")
    if isinstance(indexed, dict):
        return {
            key: PipelineRun(
                pipeline,
                entry["stage"],
                entry.get("label"),
                entry["command"],
                entry.get("preset"),
                dict(entry.get("variables") or {}),
                entry.get("udaseg_version"),
                entry.get("git_commit"),
                entry.get("finished"),
            )
            for key, entry in indexed.items()
        }
    # an older summary: only its evaluate stages' --name says which artifact they wrote
    found = {}
    for stage in record.get("stages", []):
        args = shlex.split(stage.get("command", ""))
        if args[1:2] == ["evaluate"] and "--name" in args[:-1]:
            key = f"{layout.EVALUATE}/{args[args.index('--name') + 1]}"
            found[key] = PipelineRun(
                pipeline,
                stage["stage"],
                stage.get("label"),
                stage["command"],
                None,
                dict(record.get("variables") or {}),
                None,
                None,
                None,
                recorded=False,
            )
    return found


@dataclass
class Chain:
    """The artifacts behind one evaluate run: its predict run (None: the predictions are no
    predict run) and the models that predict run loaded."""

    evaluation: Evaluation
    predict: Artifact | None
    models: list[Artifact]


def follow(evaluation: Evaluation, known: dict[Path, Artifact]) -> Chain:
    """The predict run and the models behind an evaluate run, by its manifests' inputs
    (``known``: the workspace's artifacts by resolved folder)."""
    predict = _input(evaluation.artifact, "pred", known)
    if predict is None or predict.manifest.stage != "predict":
        return Chain(evaluation, None, [])
    models = [
        model
        for name, record in predict.manifest.inputs.items()
        if record.get("stage") in layout.MODEL_STAGES
        if (model := _input(predict, name, known)) is not None
    ]
    return Chain(evaluation, predict, models)


def _input(artifact: Artifact, name: str, known: dict[Path, Artifact]) -> Artifact | None:
    """The artifact an input of ``artifact`` names, from the workspace or read from its folder
    (an input outside the workspace); None when it has no readable manifest any more."""
    record = artifact.manifest.inputs.get(name)
    if not isinstance(record, dict) or not record.get("path"):
        return None
    path = Path(record["path"]).resolve()
    if path in known:
        return known[path]
    try:
        return Artifact(path, artifacts.load_manifest(path))
    except artifacts.StaleInputError:
        return None


def built_with(manifest: artifacts.Manifest) -> str:
    """``0.1.0 62405f103c+dirty``: the udaseg version and short git commit that built an
    artifact; ``0.1.0 (no git commit recorded)`` for a copy installed outside a checkout."""
    commit = manifest.git_commit
    if not commit:
        return f"{manifest.udaseg_version} (no git commit recorded)"
    bare, dirty = commit.removesuffix("+dirty"), commit.endswith("+dirty")
    return f"{manifest.udaseg_version} {bare[:SHORT_COMMIT]}{'+dirty' if dirty else ''}"


def _key(artifact: Artifact, work: Path) -> str:
    try:
        return artifact.path.resolve().relative_to(Path(work).resolve()).as_posix()
    except ValueError:
        return str(artifact.path)


def _made_by(artifact: Artifact) -> str:
    """What made an artifact, in a few words: the stage and its method or model."""
    config, stage = artifact.manifest.config, artifact.manifest.stage
    if stage == "adapt":
        return f"adapt {config.get('method', '?')} ({config.get('model', '?')})"
    if stage == "segment-train":
        return f"segment-train {config.get('model', '?')} on {config.get('train_on', '?')}"
    if stage == "translate-train":
        return f"translate-train {config.get('method', '?')}"
    if stage == "pseudo-label":
        kept = ", largest component" if config.get("largest_component") else ""
        return f"pseudo-label (threshold {config.get('threshold', '?')}{kept})"
    return stage


def _steps(model: Artifact) -> str:
    steps = model.manifest.summary.get("steps")
    hparams = model.manifest.config.get("hparams") or {}
    if steps is None:
        steps = hparams.get("steps")
    batch = model.manifest.config.get("global_batch_size") or hparams.get("batch_size")
    return "—" if steps is None else f"{steps}" + (f" × batch {batch}" if batch else "")


def _seed(artifact: Artifact) -> str:
    return str(artifact.manifest.config.get("seed", "—"))


def _precision(model: Artifact) -> str:
    config = model.manifest.config
    text = str(config.get("precision", "—"))
    processes = config.get("world_size") or 1
    return text + (f", {processes} processes" if processes > 1 else "")


def _model_cell(model: Artifact, work: Path, known: dict[Path, Artifact]) -> str:
    """The model and the artifacts it was built from (other than the preprocessed stores)."""
    parents = [f"{name} {_key(parent, work)}" for name, parent in _parents(model, known)]
    cell = _key(model, work) + (f" (from {', '.join(parents)})" if parents else "")
    stale = [name for name, record in model.manifest.inputs.items() if record.get("stale")]
    if stale:  # built with --force over an input that had changed: say so beside the result
        cell += f"; built with --force from out-of-date input {', '.join(stale)}"
    return cell


def _input_name(name: str, record: dict) -> str:
    """An input's name (``init``, ``translator``), or the stage that made it for the numbered
    ``store0``, ``store1`` of segment-train, which say less."""
    return str(record.get("stage", name)) if re.fullmatch(r"store\d+", name) else name


def _prediction_cell(predict: Artifact, work: Path) -> str:
    config = predict.manifest.config
    details = [f"split {config['split']}" if config.get("split") else None]
    details.append(f"checkpoint {config['checkpoint']}" if config.get("checkpoint") else None)
    details.append("largest component" if config.get("largest_component") else None)
    details.append("TTA" if config.get("tta") else None)
    shown = ", ".join(d for d in details if d)
    return _key(predict, work) + (f" ({shown})" if shown else "")


def _builds(chain: Chain) -> str:
    """The udaseg build of the model, and of the predict and evaluate runs where it differs."""
    model = chain.models[0].manifest if chain.models else None
    base = built_with(model) if model else None
    parts = [f"model {base}"] if base else []
    for what, artifact in (("predict", chain.predict), ("evaluate", chain.evaluation.artifact)):
        if artifact is not None and built_with(artifact.manifest) != base:
            parts.append(f"{what} {built_with(artifact.manifest)}")
    return "; ".join(parts)


def _pipeline_cell(run: PipelineRun | None, setups: dict[tuple, str], artifact: Artifact) -> str:
    if run is None:
        return "—"
    label = f" “{run.label}”" if run.label else ""
    cell = f"{setups[run.setup]}, stage {run.stage}{label}"
    # both are UTC times written as YYYY-MM-DDTHH:MM:SSZ, so they compare as text
    if run.finished and artifact.manifest.created > run.finished:
        cell += f" (but the artifact was rebuilt after that run finished, {run.finished})"
    return cell


def provenance_section(workspace: Workspace, evaluations: list[Evaluation]) -> Section:
    """One row per evaluate run (the comparison's order): the pipeline run and the artifact
    chain behind it; then one row per pipeline setup (preset and variables) those rows name."""
    section = Section("provenance", "Provenance")
    if not evaluations:
        section.notes.append("no evaluate run in W: nothing to trace")
        return section
    index, notes = pipeline_index(workspace.root)
    section.notes.extend(notes)
    work = workspace.root
    known = {a.path.resolve(): a for stage in workspace.by_stage.values() for a in stage}
    runs = {e.artifact.key: index.get(e.artifact.key) for e in evaluations}
    setups = _setup_names([r for r in runs.values() if r is not None])
    head = ["run", "pipeline", "prediction", "model", "trained by", "steps", "seed", "precision"]
    rows = []
    chains = [follow(evaluation, known) for evaluation in evaluations]
    for evaluation, chain in zip(evaluations, chains, strict=True):
        models = chain.models

        def each(describe, models=models) -> str:
            return "; ".join(describe(m) for m in models) if models else "—"

        rows.append(
            [
                evaluation.name,
                _pipeline_cell(runs[evaluation.artifact.key], setups, evaluation.artifact),
                _prediction_cell(chain.predict, work) if chain.predict else "— (no predict run)",
                each(lambda m: _model_cell(m, work, known)),
                each(_made_by),
                each(_steps),
                each(_seed),
                each(_precision),
                _builds(chain) or built_with(evaluation.artifact.manifest),
            ]
        )
    section.text.append(
        "How each comparison row was made, by following the manifests: the evaluate run, the "
        "predict run whose predictions it scored, the model that predict run loaded (with the "
        "artifacts it was built from), and the pipeline run that ran the evaluate stage. udaseg: "
        "the version and git commit (+dirty: with uncommitted changes) that trained the model, "
        "and those of the predict or evaluate run where they differ."
    )
    section.tables.append(
        Table([*head, "udaseg"], rows, caption="How each row of the comparison was made")
    )
    upstream = _upstream([m for c in chains for m in c.models], known)
    if upstream:
        section.tables.append(_upstream_table(upstream, work, known))
    if setups:
        section.tables.append(_setups_table(runs, setups))
    missing = [key for key, run in runs.items() if run is None]
    if missing:
        section.notes.append(
            f"no pipeline run summary (W/{layout.RUNS}/*/{layout.SUMMARY}) names "
            f"{', '.join(missing)}: run by hand, or by `udaseg run` before it recorded them"
        )
    return section


def _parents(artifact: Artifact, known: dict[Path, Artifact]) -> list[tuple[str, Artifact]]:
    """(input name, artifact) of every input of ``artifact`` but the preprocessed stores."""
    return [
        (_input_name(name, record), parent)
        for name, record in artifact.manifest.inputs.items()
        if record.get("stage") != "preprocess"
        if (parent := _input(artifact, name, known)) is not None
    ]


def _upstream(models: list[Artifact], known: dict[Path, Artifact]) -> list[Artifact]:
    """Every artifact the models were built from, nearest first, each once."""
    seen = {m.path for m in models}
    found, queue = [], list(models)
    while queue:
        for _, parent in _parents(queue.pop(0), known):
            if parent.path not in seen:
                seen.add(parent.path)
                found.append(parent)
                queue.append(parent)
    return found


def _upstream_table(upstream: list[Artifact], work: Path, known: dict[Path, Artifact]) -> Table:
    rows = [
        [
            _key(artifact, work),
            _made_by(artifact),
            ", ".join(f"{name} {_key(p, work)}" for name, p in _parents(artifact, known)) or "—",
            _steps(artifact),
            _seed(artifact),
            _precision(artifact),
            built_with(artifact.manifest),
        ]
        for artifact in upstream
    ]
    head = ["artifact", "made by", "from", "steps", "seed", "precision", "udaseg"]
    caption = (
        "What the models were built from, back to the preprocessed stores (left out): a "
        "pseudo-labelled store's teacher, a warm start's model, a translator"
    )
    return Table(head, rows, caption=caption)


def _setup_names(runs: list[PipelineRun]) -> dict[tuple, str]:
    """A name per distinct pipeline setup: the pipeline's name, numbered when one pipeline ran
    with several presets or variables (a route run in both directions)."""
    setups = list(dict.fromkeys(run.setup for run in runs))
    names = {}
    for setup in setups:
        same = [s for s in setups if s[0] == setup[0]]
        names[setup] = setup[0] if len(same) == 1 else f"{setup[0]} #{same.index(setup) + 1}"
    return names


def _setups_table(runs: dict[str, PipelineRun | None], setups: dict[tuple, str]) -> Table:
    first = {}
    for run in runs.values():
        if run is not None:
            first.setdefault(run.setup, run)
    rows = []
    for setup, name in setups.items():
        run = first[setup]
        variables = ", ".join(f"{k}={v}" for k, v in run.variables.items() if k != "work")
        if not run.recorded:
            preset, build = "not recorded", "not recorded"
        else:
            preset = run.preset or "none (the pipeline's defaults)"
            commit = run.git_commit
            build = f"{run.udaseg_version} " + (
                commit[:SHORT_COMMIT] + ("+dirty" if commit.endswith("+dirty") else "")
                if commit
                else "(no git commit recorded)"
            )
        rows.append([name, preset, variables or "—", build, run.finished or "—"])
    head = ["pipeline", "preset", "variables", "udaseg", "finished"]
    return Table(head, rows, caption="The pipeline runs the rows name (W/runs/*/summary.json)")
