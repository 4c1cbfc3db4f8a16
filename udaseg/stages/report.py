"""``udaseg report W``: one page that shows what a workspace holds, as HTML and as Markdown.

Artifacts are found by reading the ``manifest.json`` of every ``W/<folder>/<run>/`` (the stage it
names decides what it is, never the folder's name); ``.partial`` folders are listed as unfinished.
Sections, each present only when its artifacts exist (otherwise a line says what is missing):

* **Data**: the first case of every ``preprocess`` store, at the slice with the most labelled
  voxels (the middle slice when unlabelled), labels drawn over it; the same for every
  ``pseudo-label`` store (voxels left unlabelled are not coloured);
* **Translator**: the newest ``samples/step_N.png`` of every ``translate-train`` run (rows
  source / translated / reconstructed / target, a column per sample or style) and the
  ``styles.png`` of every ``cluster-styles`` run (style embedding + the source in each style);
* **Training curves**: every loss term against the step, and the validation score and Dice per
  class where logged, from ``metrics.jsonl`` of every ``translate-train``, ``segment-train`` and
  ``adapt`` run;
* **Predictions**: per reference (the same scans), the first evaluated case at the slice with the
  most reference foreground: image | ground truth | each run's prediction, read through the
  readers ``udaseg evaluate`` used (so the grids are the ones that were scored);
* **Dice per class**: box plots of the per-case Dice of every ``evaluate`` run;
* **Comparison**: one row per ``evaluate`` run: mean Dice per class, mean Dice, mean ASSD.

Output ``W/report/`` (an artifact, built in ``W/report.partial/`` and renamed when complete)::

    report.html    self-contained: images as data:image/png;base64 URIs, inline CSS, and a tiny
                   inline script that writes how many images rendered into #render-check
    report.md      the same text and tables; images linked as figures/<name>.png
    figures/*.png  the pictures
    manifest.json  stage "report"; inputs: every artifact the report shows
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from udaseg import __version__, artifacts
from udaseg.data.dicom import natural_key
from udaseg.errors import UdasegError

STAGE = "report"
# bump when the same workspace would give a different report
REPORT_VERSION = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAINING_STAGES = ("translate-train", "segment-train", "adapt")
# metrics.jsonl keys that are not loss terms
NOT_LOSSES = frozenset({"step", "lr", "seconds", "val"})
# errors that mean "this artifact cannot be drawn": reported in the page, never a crash
_SKIPPABLE = (UdasegError, OSError, ValueError)
NO_EVALUATION = "no evaluate run in W (W/evaluate/): run `udaseg predict` then `udaseg evaluate`"


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
class Picture:
    """One image of the report: PNG bytes, the file name under figures/, and its caption."""

    name: str
    png: bytes
    caption: str


@dataclass
class Table:
    """A table: ``head`` names and ``rows`` of already formatted cells."""

    head: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """A section of the report: paragraphs, pictures, tables and notes (missing or unreadable
    artifacts), rendered in that order."""

    key: str
    title: str
    text: list[str] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Panel:
    """One panel of a picture: ``image`` (H, W) float32 intensities or None (black), ``label``
    (H, W) class ids 0..C or None, drawn with rows ``aspect`` times as tall as columns are wide
    (row spacing / column spacing, mm)."""

    title: str
    image: np.ndarray | None
    label: np.ndarray | None = None
    aspect: float = 1.0


# --- finding artifacts --------------------------------------------------------------------------


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


def discover(work: Path) -> Workspace:
    """Every ``W/<folder>/<run>/`` with a readable manifest, grouped by the manifest's stage.

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
            if run.name.endswith(artifacts.PARTIAL_SUFFIX):
                found.unfinished.append(run)
                continue
            if not (run / artifacts.MANIFEST_NAME).is_file() or _leftover(run):
                continue
            try:
                manifest = artifacts.load_manifest(run)
            except artifacts.StaleInputError as exc:
                found.unreadable.append(str(exc))
                continue
            if manifest.stage != STAGE:
                found.by_stage.setdefault(manifest.stage, []).append(Artifact(run, manifest))
    for runs in found.by_stage.values():
        runs.sort(key=_made_order)
    return found


def _made_order(artifact: Artifact) -> tuple:
    """Oldest first: the manifest's creation time has whole seconds, its file's mtime breaks
    ties between the runs of one recipe (which finish within a second on small data)."""
    mtime = (artifact.path / artifacts.MANIFEST_NAME).stat().st_mtime_ns
    return (artifact.manifest.created, mtime, natural_key(artifact.name))


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _leftover(run: Path) -> bool:
    """An ``<name>.old`` copy that a publish interrupted between its two renames left behind."""
    return run.name.endswith(".old") and run.with_name(run.name[:-4]).is_dir()


# --- pictures -----------------------------------------------------------------------------------


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _class_colours(n_classes: int) -> list[tuple[float, float, float]]:
    """One RGB colour per class id 1..C (index 0 = class 1)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n_classes <= 10 else "tab20"]
    return [tuple(cmap(i % cmap.N)[:3]) for i in range(n_classes)]


def _draw_label(ax, label: np.ndarray, colours: list, aspect: float, alpha: float) -> None:
    """Classes as fills of opacity ``alpha`` with solid outlines (label (H, W) ids 0..C)."""
    rgba = np.zeros((*label.shape, 4), np.float32)
    present = [int(c) for c in np.unique(label) if 0 < c <= len(colours)]
    for c in present:
        rgba[label == c] = (*colours[c - 1], alpha)
    ax.imshow(rgba, interpolation="nearest", aspect=aspect)
    for c in present:
        mask = (label == c).astype(np.float32)
        if 0 < mask.sum() < mask.size:
            ax.contour(mask, levels=[0.5], colors=[colours[c - 1]], linewidths=0.8)


def panels_png(panels: list[Panel], classes: list[str]) -> bytes:
    """A row of panels (grey images, labels drawn over them) with a legend of ``classes``;
    each image gets its own 1st..99th percentile grey window."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from udaseg.translation.io import display_window

    colours = _class_colours(len(classes))
    height = max(p.aspect * _shape(p)[0] / _shape(p)[1] for p in panels)
    figure = Figure(figsize=(2.6 * len(panels), 2.6 * min(height, 2.0) + 0.9), dpi=100)
    for i, panel in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), i + 1)
        image = panel.image if panel.image is not None else np.zeros(_shape(panel), np.float32)
        low, high = display_window([image])
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.set_aspect(panel.aspect)
        if panel.label is not None:
            # over a scan the anatomy must show through; on black, fills can be bright
            alpha = 0.35 if panel.image is not None else 0.7
            _draw_label(ax, panel.label, colours, panel.aspect, alpha)
        ax.set_title(panel.title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if classes:
        handles = [Patch(color=colours[i], label=name) for i, name in enumerate(classes)]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(classes), 6), fontsize=7)
    figure.tight_layout(rect=(0, 0.08 if classes else 0, 1, 1))
    return _png(figure)


def _shape(panel: Panel) -> tuple[int, int]:
    shown = panel.label if panel.image is None else panel.image
    return shown.shape[-2:]  # type: ignore[union-attr]


def _busiest_slice(label: np.ndarray | None, n_slices: int) -> int:
    """Index of the slice (axis 0) with the most labelled voxels; the middle one without any."""
    from udaseg.data.store import foreground_voxels

    if label is None or not label.any():
        return n_slices // 2
    return int(np.argmax(foreground_voxels(label)))


# --- data ---------------------------------------------------------------------------------------


def data_section(workspace: Workspace) -> Section:
    """The first case of every preprocessed store, at its busiest labelled slice."""
    section = Section("data", "Data")
    stores = workspace.runs("preprocess")
    if not stores:
        section.notes.append(
            "no preprocess run in W (W/preprocessed/): run `udaseg preprocess` first"
        )
        return section
    pseudo = workspace.runs("pseudo-label")
    shown = [(a, None) for a in stores] + [(a, f"pseudo-labels {a.name}") for a in pseudo]
    panels, classes = [], []
    for artifact, what in shown:
        try:
            panel, store_classes = _store_panel(artifact, what)
        except _SKIPPABLE as exc:
            section.notes.append(f"{artifact.key}: cannot draw its first case: {exc}")
            continue
        panels.append(panel)
        classes = classes or store_classes
    section.text.append(
        "The first case of each preprocessed store (one per dataset and domain), on the canonical "
        "grid every stage trains on; the slice with the most labelled voxels, labels outlined "
        "(middle slice for unlabelled domains)."
    )
    if pseudo:
        section.text.append(
            "Pseudo-labelled target stores (`udaseg pseudo-label`): what self-training learns "
            "from; voxels the teacher was not sure of carry no label and are left uncoloured."
        )
    if panels:
        caption = ", ".join(a.key for a, _ in shown)
        section.pictures.append(Picture("data.png", panels_png(panels, classes), caption))
    return section


def _store_panel(artifact: Artifact, what: str | None = None) -> tuple[Panel, list[str]]:
    from udaseg.data.store import Store

    store = Store(artifact.path / "store.h5")
    try:
        case = store.case_ids[0]
        image, label = store.image(case), store.label(case)
        spacing = store.meta(case)["processed"]["spacing"]  # (x, y, z) mm
        title = f"{store.dataset} {store.domain} ({what or store.modality})"
        classes = list(store.classes)
    finally:
        store.close()
    k = _busiest_slice(label, len(image))
    panel = Panel(
        f"{title}\ncase {case}, slice {k + 1}/{len(image)}",
        image[k],
        None if label is None else label[k],
        float(spacing[1]) / float(spacing[0]),
    )
    return panel, classes


# --- translator ---------------------------------------------------------------------------------


def translator_section(workspace: Workspace) -> Section:
    """The newest sample grid of every translate run and the picture of every style run."""
    section = Section("translator", "Translator")
    translators, styles = workspace.runs("translate-train"), workspace.runs("cluster-styles")
    if not translators:
        section.notes.append(
            "no translate run in W (W/translate/): run `udaseg translate train` to see "
            "source / translated / reconstructed grids"
        )
    for artifact in translators:
        samples = sorted((artifact.path / "samples").glob("step_*.png"), key=_step_of)
        if not samples:
            section.notes.append(f"{artifact.key} has no samples/step_*.png")
            continue
        newest = samples[-1]
        summary = artifact.manifest.summary
        caption = (
            f"{artifact.key}: {summary.get('method', 'translator')}, samples after step "
            f"{_step_of(newest)} ({newest.relative_to(artifact.path)}); rows: source, translated, "
            "reconstructed, target (and one row per style for methods with style codes)"
        )
        _add_file(section, artifact, newest, f"translate__{artifact.name}.png", caption)
    if translators and not styles:
        section.notes.append(
            "no cluster-styles run in W (W/styles/): only translators with style codes have one"
        )
    for artifact in styles:
        summary = artifact.manifest.summary
        caption = (
            f"{artifact.key}: {summary.get('styles', '?')} styles clustered from "
            f"{summary.get('codes', '?')} target style codes; left the embedding coloured by "
            "cluster (triangles: the kept styles, star: the mean code), right a source slice in "
            "each style"
        )
        _add_file(
            section, artifact, artifact.path / "styles.png", f"styles__{artifact.name}.png", caption
        )
    if translators or styles:
        section.text.append(
            "Translators' own sample grids (the same seeded slices at every sample step) and the "
            "target styles chosen for `udaseg translate apply`."
        )
    return section


def _step_of(path: Path) -> int:
    digits = re.sub(r"\D", "", path.stem)
    return int(digits) if digits else -1


def _add_file(section: Section, artifact: Artifact, path: Path, name: str, caption: str) -> None:
    """Embed an existing PNG of an artifact, or note why it cannot be."""
    try:
        png = path.read_bytes()
    except OSError as exc:
        section.notes.append(f"{artifact.key}: cannot read {path}: {exc.strerror}")
        return
    if not png.startswith(PNG_SIGNATURE):
        section.notes.append(f"{artifact.key}: {path} is not a PNG file")
        return
    section.pictures.append(Picture(name, png, caption))


# --- training curves ----------------------------------------------------------------------------


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """``metrics.jsonl`` as (training rows, validation rows); a line that is not JSON (one being
    written while we read) is skipped. Validation rows look like ``{"step", "val": {"score",
    "dice": {class: value}}}``."""
    train, val = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or "step" not in row:
            continue
        (val if isinstance(row.get("val"), dict) else train).append(row)
    return train, val


def curves_png(title: str, train: list[dict], val: list[dict]) -> tuple[bytes, list[str]]:
    """Loss terms against the step (log scale when all positive), and beside it the validation
    score and Dice per class when ``val`` has rows. Returns the PNG and the names of terms left
    out because they are zero throughout."""
    from matplotlib.figure import Figure

    terms = _loss_terms(train)
    zero = [t for t, (_, values) in terms.items() if not np.any(values)]
    shown = {t: v for t, v in terms.items() if t not in zero}
    figure = Figure(figsize=(10.0 if val else 6.0, 3.4), dpi=100)
    ax = figure.add_subplot(1, 2 if val else 1, 1)
    for term, (steps, values) in shown.items():
        _plot_series(ax, steps, values, term)
    if shown and all(np.all(v > 0) for _, v in shown.values()):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{title}: training losses", fontsize=9)
    if shown:
        ax.legend(fontsize=7, ncol=2)
    if val:
        _plot_validation(figure.add_subplot(1, 2, 2), title, val)
    figure.tight_layout()
    return _png(figure), zero


def _loss_terms(rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every numeric, finite-valued term: name -> (steps, values), in first-seen order."""
    series: dict[str, tuple[list, list]] = {}
    for row in rows:
        for key, value in row.items():
            if key in NOT_LOSSES or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(row["step"])
                values.append(float(value))
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in series.items()}


def _plot_series(ax, steps: np.ndarray, values: np.ndarray, label: str) -> None:
    """A short series with markers; a long (noisy) one faint, with a moving average on top."""
    if len(values) < 50:
        ax.plot(steps, values, marker=".", linewidth=1, label=label)
        return
    (line,) = ax.plot(steps, values, linewidth=0.6, alpha=0.3)
    width = max(len(values) // 50, 2)
    smooth = np.convolve(values, np.ones(width) / width, mode="valid")
    ax.plot(steps[width - 1 :], smooth, linewidth=1.2, color=line.get_color(), label=label)


def _plot_validation(ax, title: str, rows: list[dict]) -> None:
    steps = [row["step"] for row in rows]
    scores = [row["val"].get("score", math.nan) for row in rows]
    ax.plot(steps, scores, marker="o", linewidth=1.5, color="black", label="score")
    dice = [row["val"].get("dice") for row in rows]
    names = list(dict.fromkeys(k for d in dice if isinstance(d, dict) for k in d))
    for name in names:
        values = [d.get(name, math.nan) if isinstance(d, dict) else math.nan for d in dice]
        ax.plot(steps, values, marker=".", linestyle="--", linewidth=1, label=f"Dice {name}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title}: validation", fontsize=9)
    ax.legend(fontsize=7, ncol=2)


def curves_section(workspace: Workspace) -> Section:
    """One picture per training run (translate, segment, adapt)."""
    section = Section("curves", "Training curves")
    runs = workspace.runs(*TRAINING_STAGES)
    if not runs:
        section.notes.append(
            "no training run in W (W/translate/, W/segment/, W/adapt/): run `udaseg translate "
            "train`, `udaseg segment-train` or `udaseg adapt`"
        )
        return section
    section.text.append(
        "Loss terms against the training step (as logged in each run's metrics.jsonl; long runs "
        "drawn faint with a moving average on top) and, where the run validated, the validation "
        "score (mean Dice) and Dice per class."
    )
    for artifact in runs:
        path = artifact.path / "metrics.jsonl"
        try:
            train, val = read_metrics(path)
        except _SKIPPABLE as exc:
            section.notes.append(f"{artifact.key}: cannot read {path.name}: {exc}")
            continue
        if not train and not val:
            section.notes.append(f"{artifact.key}: {path.name} holds no logged step")
            continue
        png, zero = curves_png(artifact.key, train, val)
        last = max(row["step"] for row in train + val)
        caption = f"{artifact.key} ({artifact.manifest.stage}), {last} steps"
        if not val:
            caption += ", no validation logged"
        if zero:
            caption += f"; zero throughout, not drawn: {', '.join(zero)}"
        name = f"curves__{artifact.path.parent.name}__{artifact.name}.png"
        section.pictures.append(Picture(name, png, caption))
    return section


# --- evaluations: predictions, box plots, comparison --------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """An evaluate run: its artifact, ``summary`` (summary.json) and ``dice`` (per_case.csv as
    {case: {class: Dice}})."""

    artifact: Artifact
    summary: dict[str, Any]
    dice: dict[str, dict[str, float]]

    @property
    def name(self) -> str:
        return self.artifact.name


def load_evaluations(workspace: Workspace) -> tuple[list[Evaluation], list[str]]:
    """Every evaluate run with its summary and per-case Dice; notes for unreadable ones."""
    found, notes = [], []
    for artifact in workspace.runs("evaluate"):
        try:
            summary = json.loads((artifact.path / "summary.json").read_text(encoding="utf-8"))
            dice = _per_case_dice(artifact.path / "per_case.csv")
        except _SKIPPABLE as exc:
            notes.append(f"{artifact.key}: cannot read its results: {exc}")
            continue
        found.append(Evaluation(artifact, summary, dice))
    return found, notes


def _per_case_dice(path: Path) -> dict[str, dict[str, float]]:
    """{case: {class: Dice}} from per_case.csv (empty when Dice was not computed)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    dice: dict[str, dict[str, float]] = {}
    for row in rows:
        if row.get("dice") not in (None, ""):
            dice.setdefault(row["case"], {})[row["class"]] = float(row["dice"])
    return dice


def predictions_section(evaluations: list[Evaluation]) -> Section:
    """One picture per reference and case: image | ground truth | every run's prediction."""
    section = Section("predictions", "Predictions")
    if not evaluations:
        section.notes.append(NO_EVALUATION)
        return section
    section.text.append(
        "For each set of reference labels, the first evaluated case at the slice with the most "
        "reference foreground, shown in the dataset's canonical orientation: the scan, the "
        "ground truth, and each run's prediction (with that case's mean Dice over classes), read "
        "exactly as `udaseg evaluate` read them."
    )
    groups: dict[tuple, list[Evaluation]] = {}
    for evaluation in evaluations:
        s = evaluation.summary
        if not s.get("cases"):
            section.notes.append(f"{evaluation.artifact.key} evaluated no case")
            continue
        key = (s["ref"]["path"], s["ref"]["kind"], s.get("domain"), s["cases"][0])
        groups.setdefault(key, []).append(evaluation)
    for n, group in enumerate(groups.values()):
        try:
            picture = _prediction_picture(group, section.notes, n)
        except _SKIPPABLE as exc:
            names = ", ".join(e.artifact.key for e in group)
            section.notes.append(f"cannot draw the predictions of {names}: {exc}")
            continue
        if picture is not None:
            section.pictures.append(picture)
    return section


def _dataset_manifest(artifact: Artifact):
    """The dataset manifest an evaluate run used, rebuilt from the copy in its manifest."""
    import yaml

    from udaseg.data.manifest import load_manifest

    recorded = artifact.manifest.config.get("manifest")
    if not isinstance(recorded, dict):
        raise UdasegError(f"{artifact.path} records no dataset manifest", path=artifact.path)
    # through a file: load_manifest is the one public way to validate a manifest
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dataset.yaml"
        path.write_text(yaml.safe_dump(recorded), encoding="utf-8")
        try:
            return load_manifest(path)
        except UdasegError as exc:
            raise UdasegError(
                f"the dataset manifest recorded in {artifact.path / artifacts.MANIFEST_NAME} "
                f"does not validate any more: {exc.message}",
                hint="rerun `udaseg evaluate` with this udaseg",
                path=artifact.path,
            ) from exc


@dataclass
class _Scored:
    """One case as `udaseg evaluate` read it: the reference (its ``array`` (S, H, W) class ids
    and ``geometry``) and each run's prediction (S, H, W) on the same grid."""

    manifest: Any
    ref: Any  # evaluate.Source
    case: str
    reference: Any  # evaluate._Labels
    predictions: list[tuple[Evaluation, np.ndarray]]


def _load_case(group: list[Evaluation], notes: list[str]) -> _Scored | None:
    """Load the group's first case: the reference once, then every run's prediction (a run whose
    prediction cannot be read or does not share the reference's grid gets a note)."""
    from udaseg.stages import evaluate

    summary = group[0].summary
    manifest = _dataset_manifest(group[0].artifact)
    domain = manifest.domain(summary["domain"]) if summary.get("domain") else None
    ref = evaluate.resolve_ref(Path(summary["ref"]["path"]), manifest, domain)
    case = summary["cases"][0]
    ref_item = evaluate._item(ref, "reference", case)
    reference, predictions = None, []
    for evaluation in group:
        try:
            pred = evaluate.resolve_pred(Path(evaluation.summary["pred"]["path"]), manifest)
            pred_item = evaluate._item(pred, "prediction", case)
            job = evaluate._Job(case, pred_item, ref_item, manifest, ref.domain, {})
            if reference is None:
                reference = evaluate._load(ref_item, job)
            labels = evaluate._load(pred_item, job)
            evaluate._check_pair(case, labels, reference)
        except UdasegError as exc:
            notes.append(f"{evaluation.artifact.key}: prediction of case {case} not shown: {exc}")
            continue
        predictions.append((evaluation, labels.array))
    if reference is None or not predictions:
        return None
    return _Scored(manifest, ref, case, reference, predictions)


def _prediction_picture(group: list[Evaluation], notes: list[str], n: int) -> Picture | None:
    """Scan | ground truth | each run's prediction, at the slice with the most reference
    foreground, in the dataset's canonical orientation."""
    scored = _load_case(group, notes)
    if scored is None:
        return None
    manifest, case, reference = scored.manifest, scored.case, scored.reference
    domain_name = group[0].summary.get("domain")
    domain = manifest.domain(domain_name) if domain_name else scored.ref.domain
    image = _reference_image(scored.ref, case, manifest, reference.array.shape)
    arrays = [reference.array, *(a for _, a in scored.predictions)]
    canonical, aspect = _canonical(
        arrays + ([image] if image is not None else []), reference.geometry, manifest.view, domain
    )
    truth = canonical[0]
    k = _busiest_slice(truth, len(truth))
    scan = canonical[-1][k] if image is not None else None
    where = " ".join(p for p in (manifest.name, domain_name, f"case {case}") if p)
    heading = f"{where}\nslice {k + 1}/{len(truth)}"
    panels = [Panel(heading, scan, None, aspect)] if scan is not None else []
    panels.append(
        Panel("ground truth" if panels else f"ground truth: {heading}", scan, truth[k], aspect)
    )
    predicted = canonical[1 : len(arrays)]  # after them: the scan, when there is one
    for (evaluation, _), labels in zip(scored.predictions, predicted, strict=True):
        scores = list(evaluation.dice.get(case, {}).values())
        dice = f"\nDice {np.nanmean(scores):.3f}" if scores else ""
        panels.append(Panel(f"{evaluation.name}{dice}", scan, labels[k], aspect))
    ref = group[0].summary["ref"]
    runs = ", ".join(e.artifact.key for e, _ in scored.predictions)
    caption = f"{where}, reference {ref['kind']} {ref['path']}: {runs}"
    if scan is None:
        caption += " (no scan image for a reference of label maps only: black background)"
    png = panels_png(panels, list(manifest.classes))
    return Picture(f"predictions__{_slug(where)}__{n}.png", png, caption)


def _reference_image(ref, case: str, manifest, shape: tuple) -> np.ndarray | None:
    """The scan under the reference labels (S, H, W) float32, when the reference has one: the
    store's image, or the raw dataset's image read by its domain's reader."""
    if ref.kind == "store":
        from udaseg.data.store import Store

        store = Store(ref.path)
        try:
            image = store.image(case)
        finally:
            store.close()
    elif ref.kind == "raw":
        import SimpleITK as sitk

        from udaseg.data.readers import load_case

        image = sitk.GetArrayFromImage(load_case(manifest, ref.domain, ref.files[case]).image)
    else:
        return None
    return image.astype(np.float32) if image.shape == tuple(shape) else None


def _canonical(arrays: list[np.ndarray], geometry: dict, view: str, domain):
    """Reorient (S, H, W) arrays sharing ``geometry`` (SimpleITK x, y, z order) to the dataset's
    canonical view, as preprocessing does (a domain's ``assume_orientation`` replaces a wrong
    header). Returns the arrays and the row/column spacing ratio."""
    import SimpleITK as sitk

    from udaseg.data.geometry import array_to_image, to_canonical

    direction = geometry["direction"]
    if domain is not None and domain.assume_orientation:
        orient = sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation
        direction = orient(domain.assume_orientation)
    out, spacing = [], (1.0, 1.0, 1.0)
    for array in arrays:
        image = to_canonical(
            array_to_image(array, geometry["spacing"], geometry["origin"], direction), view
        )
        out.append(sitk.GetArrayFromImage(image))
        spacing = image.GetSpacing()
    return out, float(spacing[1]) / float(spacing[0])


def boxplot_section(evaluations: list[Evaluation]) -> Section:
    """Per-class Dice of every case, one box per run, grouped by class."""
    section = Section("dice", "Dice per class")
    if not evaluations:
        section.notes.append(NO_EVALUATION)
        return section
    scored = [e for e in evaluations if e.dice]
    for evaluation in evaluations:
        if not evaluation.dice:
            section.notes.append(f"{evaluation.artifact.key} did not compute Dice")
    if not scored:
        return section
    section.text.append(
        "Dice of every evaluated case, per class: one box per run (the box spans the middle "
        "half of the cases, the line is the median, dots are the cases)."
    )
    caption = ", ".join(f"{e.artifact.key} ({len(e.dice)} cases)" for e in scored)
    section.pictures.append(Picture("dice_per_class.png", dice_boxplot_png(scored), caption))
    return section


def dice_boxplot_png(evaluations: list[Evaluation]) -> bytes:
    """Grouped box plots: x = class, one coloured box per run within each class."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    classes = list(dict.fromkeys(c for e in evaluations for d in e.dice.values() for c in d))
    n_runs = len(evaluations)
    width = 0.8 / n_runs
    figure = Figure(figsize=(max(6.0, 0.3 * len(classes) * n_runs + 2.5), 3.8), dpi=100)
    ax = figure.add_subplot()
    rng = np.random.default_rng(0)  # jitter of the case dots, the same every time
    for r, evaluation in enumerate(evaluations):
        colour = f"C{r % 10}"
        for c, name in enumerate(classes):
            values = [
                d[name] for d in evaluation.dice.values() if math.isfinite(d.get(name, math.nan))
            ]
            if not values:
                continue
            x = c - 0.4 + width * (r + 0.5)
            box = ax.boxplot(
                [values], positions=[x], widths=width * 0.8, patch_artist=True, showfliers=False
            )
            for patch in box["boxes"]:
                patch.set(facecolor=colour, alpha=0.45, edgecolor=colour)
            for line in box["medians"]:
                line.set(color="black")
            jitter = rng.uniform(-0.25, 0.25, len(values)) * width
            ax.scatter(
                x + jitter, values, s=8, color=colour, edgecolors="black", linewidths=0.3, zorder=3
            )
    ax.set_xticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("Dice")
    ax.grid(axis="y", alpha=0.3)
    handles = [
        Patch(color=f"C{r % 10}", alpha=0.6, label=e.name) for r, e in enumerate(evaluations)
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return _png(figure)


def comparison_section(evaluations: list[Evaluation]) -> Section:
    """One row per evaluate run: cases, mean Dice per class, mean Dice, mean ASSD."""
    from udaseg.stages.recipe import comparison

    section = Section("comparison", "Comparison")
    if not evaluations:
        section.notes.append(NO_EVALUATION)
        return section
    results = [{"summary": e.summary, "label": e.name, "stage": e.name} for e in evaluations]
    rows = comparison(results)
    classes = list(dict.fromkeys(c for row in rows for c in row["dice"]))
    units = [e.summary.get("options", {}).get("unit", "mm") for e in evaluations]
    same_unit = len(set(units)) == 1
    assd_head = f"mean ASSD ({units[0]})" if same_unit else "mean ASSD"
    head = ["run", "dataset / domain", "cases", *classes, "mean Dice", assd_head]
    cells = []
    for row, evaluation, unit in zip(rows, evaluations, units, strict=True):
        s = evaluation.summary
        assd = _fmt(row["mean_assd"], 2) + ("" if same_unit else f" {unit}")
        cells.append(
            [
                row["label"],
                f"{s.get('dataset', '—')} / {s.get('domain') or '—'}",
                str(row["cases"]),
                *(_fmt(row["dice"].get(c)) for c in classes),
                _fmt(row["mean_dice"]),
                assd,
            ]
        )
    section.text.append(
        "Every evaluate run in the workspace (`W/evaluate/*/summary.json`): Dice per class and "
        "its mean over classes, averaged over the run's cases; mean ASSD over classes (average "
        "symmetric surface distance; — where no value could be computed, e.g. an empty mask)."
    )
    section.tables.append(Table(head, cells))
    return section


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return f"{value:.{digits}f}"


# --- overview -----------------------------------------------------------------------------------


def overview_section(workspace: Workspace) -> Section:
    """What the workspace holds: runs per stage, unfinished and unreadable folders."""
    section = Section("workspace", "Workspace")
    if workspace.by_stage:
        rows = [
            [stage, str(len(runs)), ", ".join(a.key for a in runs)]
            for stage, runs in sorted(workspace.by_stage.items())
        ]
        section.tables.append(Table(["stage", "runs", "artifacts"], rows))
    else:
        section.notes.append(
            f"no artifact in {workspace.root}: run the stages with --work {workspace.root}, e.g. "
            f"`udaseg run phantom-demo --work {workspace.root}`"
        )
    for path in workspace.unfinished:
        section.notes.append(
            f"unfinished (still running, or killed): {path.relative_to(workspace.root)}"
        )
    section.notes.extend(f"unreadable: {text}" for text in workspace.unreadable)
    return section


# --- rendering ----------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "figure"


def _unique_names(sections: list[Section]) -> None:
    """Make every picture's file name a plain, unique file name."""
    seen: set[str] = set()
    for section in sections:
        for picture in section.pictures:
            stem = _slug(picture.name.removesuffix(".png"))
            name, n = f"{stem}.png", 1
            while name in seen:
                n += 1
                name = f"{stem}_{n}.png"
            seen.add(name)
            picture.name = name


def render_markdown(title: str, meta: str, sections: list[Section]) -> str:
    """report.md: headings, text, images linked as figures/<name>.png, tables, notes."""
    lines = [f"# {title}", "", meta, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.text:
            lines += [paragraph, ""]
        for picture in section.pictures:
            lines += [
                f"![{picture.name.removesuffix('.png')}](figures/{picture.name})",
                "",
                f"*{picture.caption}*",
                "",
            ]
        for table in section.tables:
            lines.append("| " + " | ".join(_md_cell(h) for h in table.head) + " |")
            rule = (" ---: |" if numeric else " --- |" for numeric in _numeric_columns(table))
            lines.append("|" + "".join(rule))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
            lines.append("")
        for note in section.notes:
            lines.append(f"- {note}")
        if section.notes:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _numeric_columns(table: Table) -> list[bool]:
    """Which columns hold only numbers (or — for a missing one): those are right-aligned."""

    def numeric(cell: str) -> bool:
        return bool(re.fullmatch(r"[-+]?\d+(\.\d+)?( \w+)?|—", cell.strip()))

    return [all(numeric(row[i]) for row in table.rows) for i in range(len(table.head))]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
.meta { color: #555; font-size: .9em; }
nav a { margin-right: 1em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #444; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
.note { color: #8a5a00; }
#render-check { color: #888; font-size: .8em; }
"""

# Counts the images that decoded (complete, with a width) once the page has loaded, so a headless
# browser's DOM dump tells whether every picture rendered.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, rendered = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { rendered++; }
  }
  var check = document.getElementById("render-check");
  check.setAttribute("data-rendered", String(rendered));
  check.textContent = rendered + " of " + images.length + " images rendered";
});
"""


def render_html(title: str, meta: str, sections: list[Section]) -> str:
    """report.html: self-contained (images as base64 data URIs, inline CSS and script)."""
    e = html.escape
    n_images = sum(len(s.pictures) for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">{e(meta)}</p>',
        f'<p id="render-check" data-images="{n_images}" data-rendered="">'
        f"{n_images} images (not yet checked)</p>",
        "<nav>" + "".join(f'<a href="#{s.key}">{e(s.title)}</a>' for s in sections) + "</nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.key}"><h2>{e(section.title)}</h2>')
        parts += [f"<p>{_inline_code(e(p))}</p>" for p in section.text]
        for picture in section.pictures:
            data = base64.b64encode(picture.png).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(picture.caption)}">'
                f"<figcaption>{e(picture.caption)}</figcaption></figure>"
            )
        for table in section.tables:
            parts.append(_html_table(table))
        parts += [f'<p class="note">{_inline_code(e(n))}</p>' for n in section.notes]
        parts.append("</section>")
    parts += [f"<script>{_SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _inline_code(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _html_table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in table.head)
    numeric = _numeric_columns(table)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if numeric[i] else ''}>{e(cell)}</td>" for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- the stage ----------------------------------------------------------------------------------


def output_dir(work: Path) -> Path:
    return Path(work) / "report"


def build_sections(workspace: Workspace) -> list[Section]:
    """Every section of the report, in reading order."""
    evaluations, notes = load_evaluations(workspace)
    sections = [
        overview_section(workspace),
        data_section(workspace),
        translator_section(workspace),
        curves_section(workspace),
        predictions_section(evaluations),
        boxplot_section(evaluations),
        comparison_section(evaluations),
    ]
    sections[-1].notes.extend(notes)
    _unique_names(sections)
    return sections


def run(work: Path) -> artifacts.Manifest:
    """Write ``W/report/`` (report.html, report.md, figures/); returns its manifest, whose
    summary names the files and counts the sections, images and evaluated runs.

    A workspace with nothing in it still gets a report that says what is missing.

    Raises:
        UdasegError: ``work`` does not exist (exit code 2).
    """
    started = time.perf_counter()
    workspace = discover(work)
    sections = build_sections(workspace)
    out = output_dir(work)
    title = f"udaseg report: {Path(work).resolve().name}"
    meta = (
        f"Workspace {Path(work).resolve()}, udaseg {__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}."
    )
    images = sum(len(s.pictures) for s in sections)
    inputs = {
        a.key: artifacts.input_record(a.path, a.manifest)
        for runs in workspace.by_stage.values()
        for a in runs
    }
    summary = {
        "output": str(out.resolve()),
        "html": str((out / "report.html").resolve()),
        "markdown": str((out / "report.md").resolve()),
        "images": images,
        "sections": {
            s.key: {"title": s.title, "images": len(s.pictures), "notes": s.notes} for s in sections
        },
        "sections_with_content": sum(bool(s.pictures or s.tables) for s in sections),
        "artifacts": sum(len(runs) for runs in workspace.by_stage.values()),
        "evaluate_runs": len(workspace.runs("evaluate")),
    }
    with artifacts.building(out) as tmp:
        (tmp / "figures").mkdir()
        for section in sections:
            for picture in section.pictures:
                (tmp / "figures" / picture.name).write_bytes(picture.png)
        (tmp / "report.md").write_text(render_markdown(title, meta, sections), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(title, meta, sections), encoding="utf-8")
        summary["seconds"] = round(time.perf_counter() - started, 2)
        return artifacts.publish(
            tmp,
            out,
            stage=STAGE,
            config={"work": str(Path(work).resolve()), "report_version": REPORT_VERSION},
            inputs=inputs,
            summary=summary,
        )
