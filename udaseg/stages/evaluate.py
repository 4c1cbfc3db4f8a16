"""``udaseg evaluate``: score predicted label maps against reference labels, per case and class.

Inputs, matched by case id:

* predictions (``pred``): a folder of ``<case_id>.nii.gz`` (or ``.nii``) class-id maps 0..C, what
  ``udaseg predict`` writes on the original scan grid; or an HDF5 store (``store.h5``, or an
  artifact folder holding one) whose cases have labels;
* reference (``ref``), recognised in this order:
  1. a store (``*.h5`` file, or a folder holding ``store.h5``): class ids already, geometry from
     each case's ``meta["processed"]``;
  2. the raw dataset folder, when the ``labels`` pattern of the dataset manifest's domain finds
     files in it: cases come from :func:`udaseg.data.readers.find_cases`, raw label codes are
     mapped to class ids with the domain's ``label_map`` (unknown codes are an error);
  3. a folder of ``<case_id>.nii.gz`` class-id maps.

Every pair must share its grid (size, spacing, origin, direction within tolerance), and every
label map must hold class ids 0..C of the manifest's classes. Classes are evaluated as the
manifest's :meth:`~udaseg.data.manifest.DatasetManifest.evaluation_classes` (BraTS: regions WT, TC,
ET). Arrays are (S, H, W) = (z, y, x) as ``sitk.GetArrayFromImage`` gives them, so the spacing
handed to the metrics is the SimpleITK (x, y, z) spacing reversed.

Output: ``W/evaluate/<run>/`` with ``per_case.csv`` (one row per case and class), ``summary.json``
(statistics per class and over classes, options and definitions; see
:mod:`udaseg.metrics.tables`), ``table.md`` (the paper-style table) and ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from udaseg import artifacts
from udaseg.data.dicom import natural_key
from udaseg.data.manifest import DatasetManifest, Domain, load_manifest
from udaseg.data.readers import CaseFiles, find_cases, pattern_regex
from udaseg.errors import UdasegError, look_up_option
from udaseg.metrics import tables
from udaseg.metrics.case import EMPTY_DISTANCE_POLICIES, METRICS, UNITS, evaluate_case
from udaseg.metrics.surface import ASSD_MODES, HD95_MODES
from udaseg.progress import NullProgress, Progress

STAGE = "evaluate"
# bump when the same inputs and options would give different numbers
EVALUATE_VERSION = 1
STORE_NAME = "store.h5"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
GEOMETRY_TOL = 1e-3
GRID_HINT = (
    "`udaseg predict` writes onto the original scan grid: pass the original labels (the raw "
    "dataset folder or its label files) as --ref, or a preprocessed store with store predictions"
)


@dataclass
class EvaluateConfig:
    """Options of one evaluate run.

    pred/ref: see the module docstring. dataset: built-in manifest name or manifest YAML path.
    domain: the reference's domain (needed for a raw ``ref`` when several domains have labels).
    metrics: any of dice, assd, asd, hd95, hd (reordered to that order). unit: ``mm`` or
    ``voxel``. hd95/assd: the definition variants (see :mod:`udaseg.metrics.surface`).
    connectivity: surface neighbourhood 1..3. empty_distance: ``nan`` or ``diagonal``.
    cases: evaluate only these ids (None = all, which must then match on both sides);
    predicted_only: evaluate exactly the predicted cases (e.g. a ``predict --split val`` run),
    each of which must have a reference.
    name: run name (default: the prediction folder's name). workers: parallel processes (runtime).
    """

    pred: Path
    ref: Path
    dataset: str
    domain: str | None = None
    metrics: Sequence[str] = ("dice", "assd", "hd95")
    unit: str = "mm"
    hd95: str = "pooled"
    assd: str = "pooled"
    connectivity: int = 1
    empty_distance: str = "nan"
    cases: Sequence[str] | None = None
    predicted_only: bool = False
    name: str | None = None
    workers: int = 1


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """``"hd95, dice"`` or ``["hd95", "dice"]`` -> ``["dice", "hd95"]`` (table order).

    Raises:
        UdasegError: an unknown metric (with a "did you mean") or none at all; exit code 2.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [item.strip().lower() for item in items if item.strip()]
    if not names:
        raise UdasegError("no metric given", hint=f"e.g. --metric {','.join(METRICS)}", exit_code=2)
    for name in names:
        look_up_option(name, METRICS, what="metric")
    return tables.ordered_metrics(names)


def _check_options(config: EvaluateConfig) -> list[str]:
    metrics = parse_metrics(config.metrics)
    look_up_option(config.unit, UNITS, what="--unit")
    look_up_option(config.hd95, HD95_MODES, what="--hd95 definition")
    look_up_option(config.assd, ASSD_MODES, what="--assd definition")
    look_up_option(config.empty_distance, EMPTY_DISTANCE_POLICIES, what="--empty-distance policy")
    if config.connectivity not in (1, 2, 3):
        raise UdasegError(
            f"--connectivity {config.connectivity} is not 1, 2 or 3",
            hint="1: face neighbours (medpy's default), 2: + edges, 3: + corners",
            exit_code=2,
        )
    if config.workers < 1:
        raise UdasegError(f"--workers {config.workers} must be at least 1", exit_code=2)
    return metrics


# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where one side's label maps come from.

    kind: ``nifti`` (``files`` maps case id -> file), ``raw`` (``files`` maps case id ->
    :class:`CaseFiles`, ``domain`` says how to map codes) or ``store`` (``path`` is the .h5 file).
    artifact: the artifact folder (with ``manifest.json``) holding it, if any.
    """

    kind: str
    path: Path
    ids: tuple[str, ...]
    files: dict[str, Any] = field(default_factory=dict)
    artifact: Path | None = None
    domain: Domain | None = None

    def record(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "kind": self.kind}


def _artifact_of(folder: Path) -> Path | None:
    return folder if (folder / artifacts.MANIFEST_NAME).is_file() else None


def _store_source(path: Path, manifest: DatasetManifest, role: str) -> Source:
    from udaseg.data.store import Store

    store = Store(path)
    try:
        if list(store.classes) != list(manifest.classes):
            raise UdasegError(
                f"{role} store {path} has classes {store.classes}, but dataset "
                f"'{manifest.name}' has {list(manifest.classes)}",
                hint="pass the --dataset the store was preprocessed with",
                path=path,
            )
        if not store.labelled:
            raise UdasegError(
                f"{role} store {path} holds no labels (domain {store.domain} is unlabelled)",
                hint="evaluate against a labelled domain's store or its raw labels",
                path=path,
            )
        ids = tuple(store.case_ids)
    finally:
        store.close()
    return Source("store", path, ids, artifact=_artifact_of(path.parent))


def _find_store(path: Path) -> Path | None:
    if path.is_file() and path.suffix in (".h5", ".hdf5"):
        return path
    if path.is_dir() and (path / STORE_NAME).is_file():
        return path / STORE_NAME
    return None


def _nifti_files(folder: Path) -> dict[str, Path]:
    """``<case_id>.nii.gz`` / ``.nii`` files directly in ``folder`` (hidden files ignored)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None or path.name.startswith(".") or not path.is_file():
            continue
        case_id = path.name[: -len(suffix)]
        if case_id in files:
            raise UdasegError(
                f"case {case_id} has two files in {folder}: {files[case_id].name} and {path.name}",
                hint="keep one of them",
                path=folder,
            )
        files[case_id] = path
    return files


def resolve_pred(path: Path, manifest: DatasetManifest) -> Source:
    """The prediction source: a store, or a folder of ``<case_id>.nii.gz``."""
    path = Path(path)
    store = _find_store(path)
    if store is not None:
        return _store_source(store, manifest, "prediction")
    if not path.exists():
        raise UdasegError(f"predictions {path} do not exist", path=path, exit_code=2)
    files = _nifti_files(path) if path.is_dir() else {}
    if not files:
        raise UdasegError(
            f"no predictions in {path}: expected <case_id>.nii.gz files or a {STORE_NAME}",
            hint="pass the folder `udaseg predict` wrote",
            path=path,
        )
    return Source("nifti", path, _sorted(files), files, artifact=_artifact_of(path))


def _label_pattern_finds(domain: Domain, raw: Path) -> bool:
    regex = pattern_regex(domain.labels or "")
    for path in raw.glob(domain.labels.replace("{case}", "*")):  # type: ignore[union-attr]
        if regex.search(path.relative_to(raw).as_posix()):
            return True
    return False


def _raw_domain(ref: Path, manifest: DatasetManifest, domain: Domain | None) -> Domain | None:
    """The domain whose ``labels`` pattern finds files under ``ref``, or None when none does."""
    candidates = [domain] if domain else [d for d in manifest.domains.values() if d.labelled]
    hits = [d for d in candidates if d.labels and _label_pattern_finds(d, ref)]
    if len(hits) > 1:
        names = ", ".join(d.name for d in hits)
        raise UdasegError(
            f"--ref {ref} holds labels of several domains of dataset '{manifest.name}' ({names})",
            hint=f"pass --domain (one of {names})",
            exit_code=2,
        )
    return hits[0] if hits else None


def resolve_ref(path: Path, manifest: DatasetManifest, domain: Domain | None) -> Source:
    """The reference source: a store, the raw dataset folder, or a folder of class-id maps."""
    path = Path(path)
    store = _find_store(path)
    if store is not None:
        return _store_source(store, manifest, "reference")
    if not path.is_dir():
        raise UdasegError(f"reference {path} does not exist", path=path, exit_code=2)
    raw_domain = _raw_domain(path, manifest, domain)
    if raw_domain is not None:
        cases = {c.case_id: c for c in find_cases(raw_domain, path)}
        return Source("raw", path, tuple(cases), cases, _artifact_of(path), raw_domain)
    files = _nifti_files(path)
    if not files:
        patterns = [f"'{d.labels}' ({d.name})" for d in manifest.domains.values() if d.labels]
        raise UdasegError(
            f"no reference labels in {path}: no {STORE_NAME}, no <case_id>.nii.gz files, and no "
            f"files matching the labels pattern of dataset '{manifest.name}' "
            f"({', '.join(patterns) or 'none'})",
            hint="pass the raw dataset folder, a folder of class-id label maps, or a store",
            path=path,
        )
    return Source("nifti", path, _sorted(files), files, _artifact_of(path))


def _sorted(ids) -> tuple[str, ...]:
    return tuple(sorted(ids, key=natural_key))


def match_cases(pred: Source, ref: Source, wanted: Sequence[str] | None) -> list[str]:
    """The case ids to evaluate, in natural order.

    Raises:
        UdasegError: without ``wanted``, ids present on one side only; with it, wanted ids
            missing on either side. The message lists the ids.
    """
    if wanted:
        wanted = list(dict.fromkeys(wanted))
        sides = (("predictions", pred), ("reference", ref))
        bad = [
            f"not in the {what} {source.path}: {_list(set(wanted) - set(source.ids))}"
            for what, source in sides
            if set(wanted) - set(source.ids)
        ]
        if bad:
            raise UdasegError(
                f"--cases names cases {'; '.join(bad)}",
                hint="check the ids (file names without .nii.gz)",
                exit_code=2,
            )
        return list(_sorted(wanted))
    pred_ids, ref_ids = set(pred.ids), set(ref.ids)
    only_pred, only_ref = pred_ids - ref_ids, ref_ids - pred_ids
    if only_pred or only_ref:
        parts = []
        if only_pred:
            parts.append(f"predictions without a reference: {_list(only_pred)}")
        if only_ref:
            parts.append(f"references without a prediction: {_list(only_ref)}")
        # the common case: predictions for a test split, references for every case
        subset = not only_pred and len(pred_ids) <= 50
        raise UdasegError(
            f"cases do not match between --pred {pred.path} and --ref {ref.path}: "
            + "; ".join(parts),
            hint="to evaluate just the predicted cases, pass --predicted-only (or --cases "
            f"{','.join(_sorted(pred_ids))})"
            if subset
            else "pass --cases ID,ID,... to evaluate a subset on purpose",
        )
    return list(_sorted(pred_ids))


def _list(ids, limit: int = 20) -> str:
    ids = list(_sorted(ids))
    more = f" ... and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


# --- one case -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One side of one case, as a worker process needs it (small and picklable)."""

    kind: str
    role: str  # "prediction" or "reference"
    case_id: str
    location: Path | CaseFiles  # NIfTI file, store file, or the raw case's files


@dataclass(frozen=True)
class _Job:
    case_id: str
    pred: _Item
    ref: _Item
    manifest: DatasetManifest
    domain: Domain | None
    options: dict[str, Any]


@dataclass
class _Labels:
    """A loaded label map: ``array`` (S, H, W) = (z, y, x) class ids; ``geometry`` size, spacing
    (mm), origin (mm) and direction in SimpleITK (x, y, z) order; ``where`` names the file."""

    array: np.ndarray
    geometry: dict[str, list[float]]
    where: str


@dataclass(frozen=True)
class _Failure:
    """A UdasegError carried back from a worker (its hint and exit code survive pickling)."""

    message: str
    hint: str | None
    path: str | None
    exit_code: int

    def error(self) -> UdasegError:
        return UdasegError(self.message, hint=self.hint, path=self.path, exit_code=self.exit_code)


def _geometry(image) -> dict[str, list[float]]:
    keys = ("size", "spacing", "origin", "direction")
    values = (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return {k: [float(x) for x in v] for k, v in zip(keys, values, strict=True)}


def _read_image(path: Path, item: _Item):
    # udaseg's reader refuses truncated .nii.gz files that SimpleITK would read as garbage
    from udaseg.data import nifti

    if not Path(path).is_file():
        raise UdasegError(f"case {item.case_id}: {item.role} file {path} is missing", path=path)
    try:
        return nifti.read_image(Path(path))
    except UdasegError as exc:
        raise UdasegError(
            f"case {item.case_id}: {item.role}: {exc.message}", hint=exc.hint, path=path
        ) from exc


def _load_nifti(item: _Item) -> _Labels:
    import SimpleITK as sitk

    image = _read_image(item.location, item)  # type: ignore[arg-type]
    return _Labels(sitk.GetArrayFromImage(image), _geometry(image), str(item.location))


def _load_raw(item: _Item, manifest: DatasetManifest, domain: Domain) -> _Labels:
    """A raw label volume with its codes mapped to class ids as preprocessing maps them."""
    import SimpleITK as sitk

    # the same mapping (and unknown-code errors) as preprocessing, so ids cannot drift apart
    from udaseg.data.pipeline import _map_codes
    from udaseg.data.readers import load_case

    case: CaseFiles = item.location  # type: ignore[assignment]
    if domain.reader == "nifti":
        label, is_class_ids = _read_image(case.label, item), False  # type: ignore[arg-type]
    else:  # DICOM + PNG masks and TFRecords need the image to assemble the label volume
        loaded = load_case(manifest, domain, case)
        label, is_class_ids = loaded.label, loaded.label_is_class_ids
    codes = sitk.GetArrayFromImage(label)
    array = codes if is_class_ids else _map_codes(codes, manifest, domain, case)
    return _Labels(array, _geometry(label), str(case.label))


def _load_store(item: _Item) -> _Labels:
    from udaseg.data.store import Store

    store = Store(item.location)  # type: ignore[arg-type]
    try:
        array = store.label(item.case_id)
        processed = store.meta(item.case_id).get("processed")
    finally:
        store.close()
    where = f"{item.location}:/cases/{item.case_id}"
    if array is None or processed is None:
        raise UdasegError(
            f"case {item.case_id}: {item.role} store has no label or no processed geometry "
            f"({where})",
            hint="rebuild the store with `udaseg preprocess`",
            path=item.location,  # type: ignore[arg-type]
        )
    geometry = {k: [float(x) for x in processed[k]] for k in ("spacing", "origin", "direction")}
    geometry["size"] = [float(s) for s in array.shape[::-1]]
    return _Labels(array, geometry, where)


def _load(item: _Item, job: _Job) -> _Labels:
    if item.kind == "store":
        labels = _load_store(item)
    elif item.kind == "raw":
        labels = _load_raw(item, job.manifest, job.domain)  # type: ignore[arg-type]
    else:
        labels = _load_nifti(item)
    labels.array = _class_ids(labels, item, len(job.manifest.classes), job.manifest.name)
    return labels


def _class_ids(labels: _Labels, item: _Item, n_classes: int, dataset: str) -> np.ndarray:
    """The label map as uint8/int16 class ids; values outside 0..C are an error naming the case."""
    array = labels.array
    if array.dtype.kind == "f" and not np.array_equal(array, np.rint(array)):
        raise UdasegError(
            f"case {item.case_id}: {item.role} {labels.where} has non-integer or NaN values",
            hint="label maps must hold integer class ids (argmax, not probabilities)",
            path=labels.where,
        )
    if array.dtype.kind not in "biuf":
        raise UdasegError(f"case {item.case_id}: {item.role} {labels.where} is not numeric")
    if array.size and (array.min() < 0 or array.max() > n_classes):
        bad = np.unique(array[(array < 0) | (array > n_classes)])
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        hint = (
            "a raw dataset's codes are mapped only when --ref is the raw dataset folder"
            if item.role == "reference"
            else "predictions must be class ids in the manifest's class order"
        )
        raise UdasegError(
            f"case {item.case_id}: {item.role} {labels.where} has values {shown} outside the "
            f"class ids 0..{n_classes} of dataset '{dataset}'",
            hint=hint,
            path=labels.where,
        )
    return array.astype(np.uint8 if n_classes < 256 else np.int16, copy=False)


def _same_geometry(a: dict, b: dict, tol: float = GEOMETRY_TOL) -> bool:
    """Same size, spacing (relative ``tol``), origin and direction (absolute) - as
    :func:`udaseg.data.geometry.same_grid`, on geometry records."""
    return (
        a["size"] == b["size"]
        and np.allclose(a["spacing"], b["spacing"], rtol=tol, atol=1e-6)
        and np.allclose(a["origin"], b["origin"], atol=tol * max(1.0, *a["spacing"]))
        and np.allclose(a["direction"], b["direction"], atol=tol)
    )


def _describe_grid(g: dict) -> str:
    def r(values):
        return [round(v, 4) for v in values]

    return (
        f"size {[int(s) for s in g['size']]}, spacing {r(g['spacing'])}, origin "
        f"{r(g['origin'])}, direction {r(g['direction'])}"
    )


def _check_pair(case_id: str, pred: _Labels, ref: _Labels) -> None:
    if pred.array.shape == ref.array.shape and _same_geometry(pred.geometry, ref.geometry):
        return
    raise UdasegError(
        f"case {case_id}: prediction and reference grids differ: prediction {pred.where} "
        f"({_describe_grid(pred.geometry)}) vs reference {ref.where} "
        f"({_describe_grid(ref.geometry)})",
        hint=GRID_HINT,
        path=pred.where,
    )


def evaluate_job(job: _Job) -> dict[str, dict[str, float]] | _Failure:
    """Load, check and score one case (runs in worker processes; errors come back as values)."""
    try:
        pred, ref = _load(job.pred, job), _load(job.ref, job)
        _check_pair(job.case_id, pred, ref)
        spacing_zyx = ref.geometry["spacing"][::-1]
        return evaluate_case(
            pred.array,
            ref.array,
            job.manifest.evaluation_classes(),
            spacing_mm=spacing_zyx,
            **job.options,
        )
    except UdasegError as exc:
        path = str(exc.path) if exc.path is not None else None
        return _Failure(exc.message, exc.hint, path, exc.exit_code)


def _outcomes(jobs: list[_Job], workers: int) -> Iterator[dict | _Failure]:
    """Results in job order, computed in ``workers`` processes (identical to serial)."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(evaluate_job, jobs)
        return
    # spawn, not fork: SimpleITK's and h5py's threads and handles do not survive a fork safely
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(evaluate_job, job) for job in jobs]
        try:
            for future in futures:
                yield future.result()
        finally:  # an error in one case stops the queued ones instead of computing them
            for future in futures:
                future.cancel()


def evaluate_all(jobs: list[_Job], workers: int, progress: Progress) -> dict[str, dict]:
    """``{case_id: {class: {metric: value}}}``; the first failing case (in case order) raises."""
    task = progress.task("evaluate", len(jobs))
    results = {}
    # closing() shuts the pool down at the first failure, not when the traceback is collected
    with contextlib.closing(_outcomes(jobs, workers)) as outcomes:
        for job, outcome in zip(jobs, outcomes, strict=False):
            if isinstance(outcome, _Failure):
                raise outcome.error()
            results[job.case_id] = outcome
            progress.advance(task, case=job.case_id)
    return results


# --- the stage ----------------------------------------------------------------------------------


def output_dir(work: Path, name: str) -> Path:
    return Path(work) / "evaluate" / name


def run_name(config: EvaluateConfig) -> str:
    """``config.name``, or the prediction folder's name (the store's folder for a store file)."""
    if config.name is not None:
        return artifacts.check_run_name(config.name)
    pred = Path(config.pred).resolve()
    base = pred.parent.name if pred.is_file() else pred.name
    return re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip("._-") or "run"


def _fingerprint(source: Source, ids: list[str]) -> str | None:
    """Hash of (file, size, mtime) of what is read, for inputs that are not artifacts (those are
    tracked through their manifest hash instead)."""
    if source.artifact is not None:
        return None
    if source.kind == "store":
        paths = [source.path]
    elif source.kind == "raw":
        paths = [source.files[i].label for i in ids]
    else:
        paths = [source.files[i] for i in ids]
    rows = []
    for path in paths:
        files = sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)]
        rows += [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]
    return artifacts.config_hash({"files": rows})


def _options(config: EvaluateConfig, metrics: list[str]) -> dict[str, Any]:
    """Keyword arguments of :func:`evaluate_case` for every case."""
    return {
        "metrics": metrics,
        "unit": config.unit,
        "hd95_mode": config.hd95,
        "assd_mode": config.assd,
        "connectivity": config.connectivity,
        "empty_distance": config.empty_distance,
    }


def _stage_config(config, manifest, pred, ref, ids, options) -> dict[str, Any]:
    return {
        "dataset": manifest.name,
        "manifest": manifest.raw,
        "domain": ref.domain.name if ref.domain else config.domain,
        "pred": {**pred.record(), "fingerprint": _fingerprint(pred, ids)},
        "ref": {**ref.record(), "fingerprint": _fingerprint(ref, ids)},
        "cases": ids,
        **options,
        "evaluate_version": EVALUATE_VERSION,
        "workers": config.workers,
    }


def _inputs(pred: Source, ref: Source, force: bool) -> dict[str, dict[str, str]]:
    """Manifest records of the inputs that are artifacts; stale ones are refused here."""
    inputs = {}
    for key, source in (("pred", pred), ("ref", ref)):
        if source.artifact is None:
            continue
        found = artifacts.load_manifest(source.artifact)
        rerun = f"udaseg {found.stage}" + (
            f" {found.config['dataset']}" if "dataset" in found.config else ""
        )
        checked = artifacts.require_input(
            source.artifact, stage=found.stage, rerun=rerun, force=force
        )
        inputs[key] = artifacts.input_record(source.artifact, checked)
    return inputs


def run(
    config: EvaluateConfig,
    work: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> artifacts.Manifest:
    """Evaluate ``config.pred`` against ``config.ref``; returns the artifact's manifest.

    The summary holds summary.json's content plus ``skipped`` and ``seconds``. An artifact
    built from the same inputs and options is left as it is (``skipped: true``) unless ``force``.

    Raises:
        UdasegError: bad options, unmatched cases, grid mismatches, values outside the class ids,
            unreadable files, or stale input artifacts; each naming the case and files.
    """
    progress = progress or NullProgress()
    metrics = _check_options(config)
    manifest = load_manifest(config.dataset)
    domain = manifest.domain(config.domain) if config.domain else None
    pred = resolve_pred(config.pred, manifest)
    ref = resolve_ref(config.ref, manifest, domain)
    inputs = _inputs(pred, ref, force)
    wanted = config.cases
    if config.predicted_only:
        if config.cases:
            raise UdasegError("give --cases or --predicted-only, not both", exit_code=2)
        wanted = list(pred.ids)
    ids = match_cases(pred, ref, wanted)
    options = _options(config, metrics)
    out = output_dir(work, run_name(config))
    stage_config = _stage_config(config, manifest, pred, ref, ids, options)
    done = artifacts.reuse_if_current(out, stage_config, inputs, progress.log, force=force)
    if done:
        return done
    started = time.perf_counter()
    jobs = [
        _Job(
            i,
            _item(pred, "prediction", i),
            _item(ref, "reference", i),
            manifest,
            ref.domain,
            options,
        )
        for i in ids
    ]
    per_case = evaluate_all(jobs, config.workers, progress)
    summary = build_summary(per_case, manifest, config, pred, ref, options, out)
    with artifacts.building(out) as tmp:
        write_per_case(tmp / "per_case.csv", per_case, metrics)
        # explicit UTF-8: the table holds "±" and "—", and the locale may be ASCII (LANG=C)
        text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
        (tmp / "summary.json").write_text(text, encoding="utf-8")
        (tmp / "table.md").write_text(tables.markdown_table(summary), encoding="utf-8")
        seconds = round(time.perf_counter() - started, 2)
        return artifacts.publish(
            tmp,
            out,
            stage=STAGE,
            config=stage_config,
            inputs=inputs,
            summary={**summary, "skipped": False, "seconds": seconds},
        )


def _item(source: Source, role: str, case_id: str) -> _Item:
    location = source.path if source.kind == "store" else source.files[case_id]
    return _Item(source.kind, role, case_id, location)


def build_summary(per_case, manifest, config, pred, ref, options, out) -> dict[str, Any]:
    """The content of summary.json (see :mod:`udaseg.metrics.tables` for the statistics)."""
    classes = manifest.evaluation_classes()
    metrics = options["metrics"]
    shown = {
        "metrics": metrics,
        "unit": options["unit"],
        "hd95": options["hd95_mode"],
        "assd": options["assd_mode"],
        "connectivity": options["connectivity"],
        "empty_distance": options["empty_distance"],
    }
    return {
        "run": out.name,
        "output": str(Path(out).resolve()),
        "dataset": manifest.name,
        "domain": ref.domain.name if ref.domain else config.domain,
        "pred": pred.record(),
        "ref": ref.record(),
        "n_cases": len(per_case),
        "cases": list(per_case),
        "class_labels": {name: list(ids) for name, ids in classes.items()},
        "metrics": metrics,
        "options": shown,
        "definitions": tables.metric_definitions(shown),
        "caption": tables.definitions_line(shown),
        **tables.aggregate(per_case, list(classes), metrics),
    }


def write_per_case(path: Path, per_case: dict, metrics: list[str]) -> None:
    """One row per case and class: ``case, class, <metric>...``; values with full precision
    (``repr``), a missing value as ``nan``."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "class", *metrics])
        for case, scores in per_case.items():
            for name, values in scores.items():
                writer.writerow([case, name, *(repr(float(values[m])) for m in metrics)])
