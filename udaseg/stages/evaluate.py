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
    cases: evaluate only these ids (None = all, which must then match on both sides).
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
        raise UdasegError(
            f"cases do not match between --pred {pred.path} and --ref {ref.path}: "
            + "; ".join(parts),
            hint="pass --cases ID,ID,... to evaluate a subset on purpose",
            exit_code=2,
        )
    return list(_sorted(pred_ids))


def _list(ids, limit: int = 20) -> str:
    ids = list(_sorted(ids))
    more = f" ... and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more
