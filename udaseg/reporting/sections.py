"""The report's sections in reading order: what the workspace holds, its data, its translators,
the training curves, then the evaluation results (:mod:`udaseg.reporting.results`), how each was
made (:mod:`udaseg.reporting.provenance`) and the predictions of every evaluated case
(:mod:`udaseg.reporting.predictions`).

Each section is present whatever the workspace holds; without its artifacts it says what is
missing and which command makes them.
"""

from __future__ import annotations

import re
from pathlib import Path

from udaseg import layout
from udaseg.reporting.curves import curve_panels, curves_png
from udaseg.reporting.discovery import (
    SKIPPABLE,
    Artifact,
    Workspace,
    load_evaluations,
    read_metrics,
)
from udaseg.reporting.document import Picture, Section, Table, unique_names
from udaseg.reporting.figures import Panel, busiest_slice, panels_png
from udaseg.reporting.predictions import predictions_section
from udaseg.reporting.provenance import provenance_section
from udaseg.reporting.results import boxplot_section, comparison_section, per_case_section

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAINING_STAGES = ("translate-train", "segment-train", "adapt")


def build_sections(workspace: Workspace) -> list[Section]:
    """Every section of the report, in reading order."""
    evaluations, notes = load_evaluations(workspace)
    comparison = comparison_section(evaluations)
    comparison.notes.extend(notes)
    sections = [
        overview_section(workspace),
        data_section(workspace),
        translator_section(workspace),
        curves_section(workspace),
        comparison,
        provenance_section(workspace, evaluations),
        per_case_section(evaluations),
        boxplot_section(evaluations),
        predictions_section(evaluations),
    ]
    unique_names(sections)
    return sections


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


def data_section(workspace: Workspace) -> Section:
    """The first case of every preprocessed store, at its busiest labelled slice."""
    section = Section("data", "Data")
    stores = workspace.runs("preprocess")
    if not stores:
        section.notes.append(
            f"no preprocess run in W (W/{layout.PREPROCESSED}/): run `udaseg preprocess` first"
        )
        return section
    pseudo = workspace.runs("pseudo-label")
    shown = [(a, None) for a in stores] + [(a, f"pseudo-labels {a.name}") for a in pseudo]
    panels, classes = [], []
    for artifact, what in shown:
        try:
            panel, store_classes = _store_panel(artifact, what)
        except SKIPPABLE as exc:
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

    store = Store(artifact.path / layout.STORE)
    try:
        case = store.case_ids[0]
        image, label = store.image(case), store.label(case)
        spacing = store.meta(case)["processed"]["spacing"]  # (x, y, z) mm
        title = f"{store.dataset} {store.domain} ({what or store.modality})"
        classes = list(store.classes)
    finally:
        store.close()
    k = busiest_slice(label, len(image))
    panel = Panel(
        f"{title}\ncase {case}, slice {k + 1}/{len(image)}",
        image[k],
        None if label is None else label[k],
        float(spacing[1]) / float(spacing[0]),
    )
    return panel, classes


def translator_section(workspace: Workspace) -> Section:
    """The newest sample grid of every translate run and the picture of every style run."""
    section = Section("translator", "Translator")
    translators, styles = workspace.runs("translate-train"), workspace.runs("cluster-styles")
    if not translators:
        section.notes.append(
            f"no translate run in W (W/{layout.TRANSLATE}/): run `udaseg translate train` to see "
            "source / translated / reconstructed grids"
        )
    for artifact in translators:
        samples = sorted((artifact.path / layout.SAMPLES).glob("step_*.png"), key=_step_of)
        if not samples:
            section.notes.append(f"{artifact.key} has no {layout.SAMPLES}/step_*.png")
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
            f"no cluster-styles run in W (W/{layout.STYLES}/): only translators with style codes "
            "have one"
        )
    for artifact in styles:
        summary = artifact.manifest.summary
        caption = (
            f"{artifact.key}: {summary.get('styles', '?')} styles clustered from "
            f"{summary.get('codes', '?')} target style codes; left the embedding coloured by "
            "cluster (triangles: the kept styles, star: the mean code), right a source slice in "
            "each style"
        )
        picture = artifact.path / layout.STYLES_PICTURE
        _add_file(section, artifact, picture, f"styles__{artifact.name}.png", caption)
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


def curves_section(workspace: Workspace) -> Section:
    """One picture per training run (translate, segment, adapt) of every step it logged."""
    section = Section("curves", "Training curves")
    runs = workspace.runs(*TRAINING_STAGES)
    if not runs:
        section.notes.append(
            f"no training run in W (W/{layout.TRANSLATE}/, W/{layout.SEGMENT}/, "
            f"W/{layout.ADAPT}/): run `udaseg translate train`, `udaseg segment-train` or "
            "`udaseg adapt`"
        )
        return section
    section.text.append(
        f"Every line of each training run's {layout.METRICS}, against the step, from the first "
        "logged step to the last (nothing cut or subsampled; a resumed run is one continuous "
        "curve): one panel per kind of loss term (objective, segmentation, adversarial, "
        "discriminators, cycle / reconstruction / identity / consistency, others), where the run "
        "validated the validation score (mean Dice) and Dice per class, and the learning rate "
        "where it changes. Runs of many logged steps are drawn faint with a centred moving "
        "average on top."
    )
    for artifact in runs:
        path = artifact.path / layout.METRICS
        try:
            train, val = read_metrics(path)
        except SKIPPABLE as exc:
            section.notes.append(f"{artifact.key}: cannot read {path.name}: {exc}")
            continue
        if not train and not val:
            section.notes.append(f"{artifact.key}: {path.name} holds no logged step")
            continue
        curves = curve_panels(train, val)
        png = curves_png(artifact.key, curves)
        caption = (
            f"{artifact.key} ({artifact.manifest.stage}): {len(train)} logged training steps, "
            f"steps {curves.first_step} to {curves.last_step}"
        )
        caption += f", {len(val)} validations" if val else ", no validation logged"
        if curves.zero:
            caption += f"; zero throughout, not drawn: {', '.join(curves.zero)}"
        if curves.non_finite:
            bad = ", ".join(f"{t} ({n} steps)" for t, n in curves.non_finite.items())
            caption += f"; not finite (NaN or infinite) at some steps: {bad}"
        name = f"curves__{artifact.path.parent.name}__{artifact.name}.png"
        section.pictures.append(Picture(name, png, caption))
    return section
