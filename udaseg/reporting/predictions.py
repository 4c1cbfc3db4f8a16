"""The report's pictures of predictions: every evaluated case of every evaluate run, its
prediction over the reference it was scored against, at a few representative slices.

Cases are read through :mod:`udaseg.evaluation`, the readers ``udaseg evaluate`` used, so the
grids drawn are the ones that were scored: predictions in the dataset's own label codes (or class
ids, as their predict run records) become class ids, raw references are read and mapped through
the dataset manifest the evaluate run recorded. Runs scored against the same reference share its
reading: each reference case (and its scan) is loaded once, whatever the number of runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from udaseg import layout
from udaseg.config.values import CLASS_IDS
from udaseg.data.manifest import DatasetManifest, Domain, load_manifest
from udaseg.errors import UdasegError
from udaseg.evaluation.comparison import fmt
from udaseg.evaluation.labels import Labels, case_item, check_pair, load_labels
from udaseg.evaluation.sources import Source, resolve_pred, resolve_ref
from udaseg.reporting.discovery import SKIPPABLE, Artifact, Evaluation
from udaseg.reporting.document import Group, Picture, Section, slug
from udaseg.reporting.figures import (
    Overlay,
    Panel,
    busiest_slice,
    overlay_png,
    panels_png,
    representative_slices,
)

NO_EVALUATION = (
    f"no evaluate run in W (W/{layout.EVALUATE}/): run `udaseg predict` then `udaseg evaluate`"
)
SLICES_PER_CASE = 3


def predictions_section(evaluations: list[Evaluation]) -> Section:
    """Per reference, the first case with every run's prediction side by side; then per run
    (a group) one picture per evaluated case."""
    section = Section("predictions", "Predictions")
    if not evaluations:
        section.notes.append(NO_EVALUATION)
        return section
    section.text.append(
        "Every evaluated case of every evaluate run, read exactly as `udaseg evaluate` read it "
        "and shown in the dataset's canonical orientation. First, per set of reference labels, "
        "its first case at the slice with the most reference foreground: the scan, the ground "
        "truth and each run's prediction. Then, per run, one picture per case: "
        f"{SLICES_PER_CASE} slices spread over the reference foreground (the busiest slice of "
        "each third of the labelled slices, the same slices for every run), the prediction "
        "filled and the reference outlined in the class colours of the label tables "
        "`udaseg predict` writes (as ITK-SNAP and 3D Slicer show them)."
    )
    groups = {
        e.artifact.key: Group(e.artifact.key, e.name, open=len(evaluations) == 1)
        for e in evaluations
    }
    by_reference: dict[tuple, list[Evaluation]] = {}
    for evaluation in evaluations:
        s = evaluation.summary
        if not s.get("cases") or not isinstance(s.get("ref"), dict):
            groups[evaluation.artifact.key].notes.append(
                f"its {layout.SUMMARY} names no evaluated case or no reference"
            )
            continue
        key = (s["ref"]["path"], s["ref"]["kind"], s.get("domain"))
        by_reference.setdefault(key, []).append(evaluation)
    for n, runs in enumerate(by_reference.values()):
        try:
            _draw_reference(runs, section, groups, n)
        except SKIPPABLE as exc:
            names = ", ".join(e.artifact.key for e in runs)
            section.notes.append(f"cannot draw the predictions of {names}: {exc}")
    for evaluation in evaluations:
        group = groups[evaluation.artifact.key]
        shown, evaluated = len(group.pictures), len(evaluation.summary.get("cases") or [])
        counted = f"{shown} case{'' if shown == 1 else 's'}"
        group.title = f"{evaluation.name}: " + (
            counted if shown == evaluated else f"{shown} of {evaluated} cases"
        )
    section.groups = list(groups.values())
    return section


@dataclass
class _Reference:
    """The labels a set of runs was scored against: the dataset manifest the first run
    recorded, the domain evaluate was told (None: none), the reference source."""

    manifest: DatasetManifest
    domain: Domain | None
    source: Source

    @property
    def orientation_domain(self) -> Domain | None:
        return self.domain if self.domain is not None else self.source.domain


@dataclass
class _Case:
    """One reference case: ``labels`` as read (original grid, what predictions are checked
    against), and on the canonical grid ``truth`` (S, H, W) class ids, ``scan`` (S, H, W)
    float32 or None and the row/column spacing ``aspect``."""

    case: str
    labels: Labels
    truth: np.ndarray
    scan: np.ndarray | None
    aspect: float

    @property
    def geometry(self) -> dict:
        return self.labels.geometry


def _draw_reference(
    runs: list[Evaluation], section: Section, groups: dict[str, Group], n: int
) -> None:
    """Every case of the runs scored against one reference: the overview of the first case,
    then one overlay per (run, case)."""
    summary = runs[0].summary
    manifest = _dataset_manifest(runs[0].artifact)
    domain = manifest.domain(summary["domain"]) if summary.get("domain") else None
    source = resolve_ref(Path(summary["ref"]["path"]), manifest, domain)
    reference = _Reference(manifest, domain, source)
    sources: dict[str, Source] = {}
    for evaluation in runs:
        try:
            sources[evaluation.artifact.key] = _prediction_source(evaluation, reference)
        except SKIPPABLE as exc:
            note = f"predictions not shown: {exc}"
            groups[evaluation.artifact.key].notes.append(note)
            section.notes.append(f"{evaluation.artifact.key}: {note}")
    cases = list(dict.fromkeys(c for e in runs for c in e.summary["cases"]))
    for i, case in enumerate(cases):
        scored = [e for e in runs if e.artifact.key in sources and case in e.summary["cases"]]
        if not scored:
            continue
        try:
            loaded = _load_reference_case(reference, case)
        except SKIPPABLE as exc:
            for evaluation in scored:
                groups[evaluation.artifact.key].notes.append(f"case {case} not shown: {exc}")
            continue
        shown = []
        for evaluation in scored:
            key = evaluation.artifact.key
            try:
                labels = _load_prediction(sources[key], reference, loaded, case)
            except SKIPPABLE as exc:
                groups[key].notes.append(f"prediction of case {case} not shown: {exc}")
                continue
            groups[key].pictures.append(_overlay_picture(evaluation, reference, loaded, labels))
            shown.append((evaluation, labels))
        if i == 0 and shown:
            section.pictures.append(_overview_picture(shown, reference, loaded, summary, n))


def _dataset_manifest(artifact: Artifact) -> DatasetManifest:
    """The dataset manifest an evaluate run used, rebuilt from the copy in its manifest."""
    import yaml

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
                f"the dataset manifest recorded in {artifact.path / layout.MANIFEST} "
                f"does not validate any more: {exc.message}",
                hint="rerun `udaseg evaluate` with this udaseg",
                path=artifact.path,
            ) from exc


def _prediction_source(evaluation: Evaluation, reference: _Reference) -> Source:
    """The run's predictions as evaluate read them: a predict run's folder says whether it
    holds label codes or class ids; a bare folder takes what evaluate was told (none: ids)."""
    recorded = evaluation.summary["pred"]
    values = recorded.get("label_values", CLASS_IDS)
    return resolve_pred(Path(recorded["path"]), reference.manifest, values, reference.domain)


def _load_reference_case(reference: _Reference, case: str) -> _Case:
    labels = load_labels(
        case_item(reference.source, "reference", case), reference.manifest, reference.source.domain
    )
    scan = _reference_image(reference.source, case, reference.manifest, labels.array.shape)
    arrays = [labels.array] + ([scan] if scan is not None else [])
    canonical, aspect = _canonical(
        arrays, labels.geometry, reference.manifest.view, reference.orientation_domain
    )
    return _Case(case, labels, canonical[0], canonical[1] if scan is not None else None, aspect)


def _load_prediction(source: Source, reference: _Reference, loaded: _Case, case: str):
    """One case's prediction as class ids on the reference's canonical grid."""
    labels = load_labels(
        case_item(source, "prediction", case), reference.manifest, reference.source.domain
    )
    check_pair(case, labels, loaded.labels)
    canonical, _ = _canonical(
        [labels.array], loaded.geometry, reference.manifest.view, reference.orientation_domain
    )
    return canonical[0]


def _case_scores(evaluation: Evaluation, case: str) -> str:
    """``Dice liver 0.912, spleen 0.850 (mean 0.881)`` for one case, or empty."""
    dice = {c: v["dice"] for c, v in evaluation.per_case.get(case, {}).items() if "dice" in v}
    if not dice:
        return ""
    mean = np.nanmean(list(dice.values())) if any(v == v for v in dice.values()) else None
    parts = ", ".join(f"{c} {fmt(v)}" for c, v in dice.items())
    return f"Dice {parts} (mean {fmt(mean)})"


def _overlay_picture(
    evaluation: Evaluation, reference: _Reference, loaded: _Case, prediction: np.ndarray
) -> Picture:
    truth, scan = loaded.truth, loaded.scan
    picks = representative_slices(truth, SLICES_PER_CASE)
    slices = [
        Overlay(
            f"slice {k + 1}/{len(truth)}",
            None if scan is None else scan[k],
            truth[k],
            prediction[k],
            loaded.aspect,
        )
        for k in picks
    ]
    title = f"{evaluation.name}: case {loaded.case}"
    png = overlay_png(title, slices, list(reference.manifest.classes))
    scores = _case_scores(evaluation, loaded.case)
    caption = f"{evaluation.artifact.key}, case {loaded.case}" + (f": {scores}" if scores else "")
    if scan is None:
        caption += " (no scan image for a reference of label maps only: black background)"
    return Picture(f"case__{evaluation.name}__{loaded.case}.png", png, caption)


def _overview_picture(
    shown: list[tuple[Evaluation, np.ndarray]],
    reference: _Reference,
    loaded: _Case,
    summary: dict,
    n: int,
) -> Picture:
    """Scan | ground truth | each run's prediction, at the slice with the most reference
    foreground."""
    truth, scan, aspect = loaded.truth, loaded.scan, loaded.aspect
    k = busiest_slice(truth, len(truth))
    manifest, domain_name = reference.manifest, summary.get("domain")
    where = " ".join(p for p in (manifest.name, domain_name, f"case {loaded.case}") if p)
    heading = f"{where}\nslice {k + 1}/{len(truth)}"
    image = None if scan is None else scan[k]
    panels = [Panel(heading, image, None, aspect)] if image is not None else []
    panels.append(
        Panel("ground truth" if panels else f"ground truth: {heading}", image, truth[k], aspect)
    )
    for evaluation, labels in shown:
        scores = list(evaluation.dice.get(loaded.case, {}).values())
        dice = f"\nDice {np.nanmean(scores):.3f}" if scores else ""
        panels.append(Panel(f"{evaluation.name}{dice}", image, labels[k], aspect))
    ref = summary["ref"]
    runs = ", ".join(e.artifact.key for e, _ in shown)
    caption = f"{where}, reference {ref['kind']} {ref['path']}: {runs}"
    if image is None:
        caption += " (no scan image for a reference of label maps only: black background)"
    png = panels_png(panels, list(manifest.classes))
    return Picture(f"predictions__{slug(where)}__{n}.png", png, caption)


def _reference_image(ref: Source, case: str, manifest, shape: tuple) -> np.ndarray | None:
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
