"""The report's sections on evaluate runs: each run's predictions beside the reference they
were scored against, box plots of the per-case Dice, and the comparison table.

Cases are read through :mod:`udaseg.evaluation`, the readers ``udaseg evaluate`` used, so the
grids drawn are the ones that were scored.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from udaseg import layout
from udaseg.config.values import CLASS_IDS
from udaseg.data.manifest import DatasetManifest, load_manifest
from udaseg.errors import UdasegError
from udaseg.evaluation.comparison import comparison, fmt
from udaseg.evaluation.labels import Labels, case_item, check_pair, load_labels
from udaseg.evaluation.sources import Source, resolve_pred, resolve_ref
from udaseg.reporting.discovery import SKIPPABLE, Artifact, Evaluation
from udaseg.reporting.document import Picture, Section, Table, slug
from udaseg.reporting.figures import Panel, busiest_slice, dice_boxplot_png, panels_png

NO_EVALUATION = (
    f"no evaluate run in W (W/{layout.EVALUATE}/): run `udaseg predict` then `udaseg evaluate`"
)


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
        except SKIPPABLE as exc:
            names = ", ".join(e.artifact.key for e in group)
            section.notes.append(f"cannot draw the predictions of {names}: {exc}")
            continue
        if picture is not None:
            section.pictures.append(picture)
    return section


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


@dataclass
class _Scored:
    """One case as `udaseg evaluate` read it: the reference (its ``array`` (S, H, W) class ids
    and ``geometry``) and each run's prediction (S, H, W) on the same grid."""

    manifest: DatasetManifest
    ref: Source
    case: str
    reference: Labels
    predictions: list[tuple[Evaluation, np.ndarray]]


def _load_case(group: list[Evaluation], notes: list[str]) -> _Scored | None:
    """Load the group's first case: the reference once, then every run's prediction (a run whose
    prediction cannot be read or does not share the reference's grid gets a note)."""
    summary = group[0].summary
    manifest = _dataset_manifest(group[0].artifact)
    domain = manifest.domain(summary["domain"]) if summary.get("domain") else None
    ref = resolve_ref(Path(summary["ref"]["path"]), manifest, domain)
    case = summary["cases"][0]
    ref_item = case_item(ref, "reference", case)
    reference, predictions = None, []
    for evaluation in group:
        try:
            recorded = evaluation.summary["pred"]
            # read as evaluate read it: a bare folder with the values it was told (none: ids)
            values = recorded.get("label_values", CLASS_IDS)
            pred = resolve_pred(Path(recorded["path"]), manifest, values, domain)
            pred_item = case_item(pred, "prediction", case)
            if reference is None:
                reference = load_labels(ref_item, manifest, ref.domain)
            labels = load_labels(pred_item, manifest, ref.domain)
            check_pair(case, labels, reference)
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
    k = busiest_slice(truth, len(truth))
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
    return Picture(f"predictions__{slug(where)}__{n}.png", png, caption)


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


def comparison_section(evaluations: list[Evaluation]) -> Section:
    """One row per evaluate run: cases, mean Dice per class, mean Dice, mean ASSD."""
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
        assd = fmt(row["mean_assd"], 2) + ("" if same_unit else f" {unit}")
        cells.append(
            [
                row["label"],
                f"{s.get('dataset', '—')} / {s.get('domain') or '—'}",
                str(row["cases"]),
                *(fmt(row["dice"].get(c)) for c in classes),
                fmt(row["mean_dice"]),
                assd,
            ]
        )
    section.text.append(
        f"Every evaluate run in the workspace (`W/{layout.EVALUATE}/*/{layout.SUMMARY}`): Dice "
        "per class and its mean over classes, averaged over the run's cases; mean ASSD over "
        "classes (average symmetric surface distance; — where no value could be computed, e.g. an "
        "empty mask)."
    )
    section.tables.append(Table(head, cells))
    return section
