"""What a workspace holds, for the report: every complete artifact found by its manifest, the
unfinished ones, the loss curves its training runs logged and the results of its evaluate runs.

Artifacts are found by reading the ``manifest.json`` of every ``W/<folder>/<run>/``: the stage the
manifest names decides what it is, never the folder's name.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udaseg import artifacts, layout
from udaseg.data.dicom import natural_key
from udaseg.errors import UdasegError
from udaseg.evaluation.comparison import read_summary
from udaseg.metrics.tables import ordered_metrics

# errors that mean "this artifact cannot be drawn": reported in the page, never a crash
SKIPPABLE = (UdasegError, OSError, ValueError)


@dataclass(frozen=True)
class Artifact:
    """A complete artifact found in the workspace: its folder and manifest."""

    path: Path
    manifest: artifacts.Manifest

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def key(self) -> str:
        """``<folder>/<run>``, unique in the workspace."""
        return f"{self.path.parent.name}/{self.path.name}"


@dataclass
class Workspace:
    """What :func:`discover` found: complete artifacts by stage (oldest first), unfinished
    folders, and manifests that could not be read."""

    root: Path
    by_stage: dict[str, list[Artifact]] = field(default_factory=dict)
    unfinished: list[Path] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def runs(self, *stages: str) -> list[Artifact]:
        return [a for stage in stages for a in self.by_stage.get(stage, [])]


def discover(work: Path, *, skip: Collection[str] = ()) -> Workspace:
    """Every ``W/<folder>/<run>/`` with a readable manifest, grouped by the manifest's stage;
    artifacts of the stages in ``skip`` (the report's own) are left out.

    Raises:
        UdasegError: ``work`` is not a folder (exit code 2).
    """
    work = Path(work)
    if not work.is_dir():
        raise UdasegError(
            f"workspace {work} does not exist",
            hint="pass the folder given as --work to the stages",
            path=work,
            exit_code=2,
        )
    found = Workspace(work)
    for folder in sorted(p for p in work.iterdir() if p.is_dir() and _visible(p)):
        for run in sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p)):
            if run.name.endswith(layout.PARTIAL_SUFFIX):
                found.unfinished.append(run)
                continue
            if not (run / layout.MANIFEST).is_file() or _leftover(run):
                continue
            try:
                manifest = artifacts.load_manifest(run)
            except artifacts.StaleInputError as exc:
                found.unreadable.append(str(exc))
                continue
            if manifest.stage not in skip:
                found.by_stage.setdefault(manifest.stage, []).append(Artifact(run, manifest))
    for runs in found.by_stage.values():
        runs.sort(key=_made_order)
    return found


def _made_order(artifact: Artifact) -> tuple:
    """Oldest first: the manifest's creation time has whole seconds, its file's mtime breaks
    ties between the runs of one pipeline (which finish within a second on small data)."""
    mtime = (artifact.path / layout.MANIFEST).stat().st_mtime_ns
    return (artifact.manifest.created, mtime, natural_key(artifact.name))


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _leftover(run: Path) -> bool:
    """An ``<name>.old`` copy that a publish interrupted between its two renames left behind."""
    original = run.name.removesuffix(layout.OLD_SUFFIX)
    return original != run.name and run.with_name(original).is_dir()


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """``metrics.jsonl`` as (training rows, validation rows), each sorted by step with one row
    per step: the last one written wins, so a log that a resumed run wrote a step into twice
    still reads as one continuous run. A line that is not JSON (one being written while we
    read) is skipped. Validation rows look like ``{"step", "val": {"score", "dice": {class:
    value}}}``."""
    train: dict[int, dict] = {}
    val: dict[int, dict] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), int | float):
            continue
        (val if isinstance(row.get("val"), dict) else train)[row["step"]] = row
    return [train[k] for k in sorted(train)], [val[k] for k in sorted(val)]


@dataclass(frozen=True)
class Evaluation:
    """An evaluate run: its artifact, ``summary`` (summary.json) and ``per_case``
    (per_case.csv as {case: {class: {metric: value}}}, in the file's case and class order; NaN
    where evaluate wrote no value, e.g. a distance to an empty mask)."""

    artifact: Artifact
    summary: dict[str, Any]
    per_case: dict[str, dict[str, dict[str, float]]]

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def metrics(self) -> list[str]:
        """The metrics per_case.csv holds, in table order (Dice, ASSD, ASD, HD95, HD; others
        after them)."""
        found = list(
            dict.fromkeys(m for c in self.per_case.values() for v in c.values() for m in v)
        )
        known = ordered_metrics(found)
        return known + [m for m in found if m not in known]

    @property
    def classes(self) -> list[str]:
        return list(dict.fromkeys(c for classes in self.per_case.values() for c in classes))

    @property
    def dice(self) -> dict[str, dict[str, float]]:
        """{case: {class: Dice}} (empty when Dice was not computed)."""
        return {
            case: {c: v["dice"] for c, v in classes.items() if "dice" in v}
            for case, classes in self.per_case.items()
            if any("dice" in v for v in classes.values())
        }


def load_evaluations(workspace: Workspace) -> tuple[list[Evaluation], list[str]]:
    """Every evaluate run with its summary and per-case scores; notes for unreadable ones."""
    found, notes = [], []
    for artifact in workspace.runs("evaluate"):
        try:
            summary = read_summary(artifact.path)
            per_case = read_per_case(artifact.path / layout.PER_CASE)
        except SKIPPABLE as exc:
            notes.append(f"{artifact.key}: cannot read its results: {exc}")
            continue
        found.append(Evaluation(artifact, summary, per_case))
    return found, notes


def read_per_case(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """per_case.csv (columns ``case``, ``class``, then one per metric) as {case: {class:
    {metric: value}}}; an empty cell or ``nan`` reads as NaN."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        metrics = [m for m in reader.fieldnames or [] if m not in ("case", "class")]
        per_case: dict[str, dict[str, dict[str, float]]] = {}
        for row in reader:
            values = {m: _number(row.get(m)) for m in metrics}
            per_case.setdefault(row["case"], {})[row["class"]] = values
    return per_case


def _number(cell: str | None) -> float:
    return math.nan if cell in (None, "") else float(cell)  # type: ignore[arg-type]
