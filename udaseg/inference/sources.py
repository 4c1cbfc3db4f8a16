"""The data a model segments, case by case: a preprocessed store or a raw dataset folder.

``data`` is either

1. a preprocessed store: a ``preprocess`` artifact folder holding ``store.h5``, or a ``store.h5``
   file (an artifact when its folder has a manifest). Every case is read on the stored, processed
   grid; the geometry records in each case's meta take a result back to the original grid; or
2. a raw dataset folder, with a dataset manifest and domain: the domain's ``images`` pattern finds
   the cases and each image is preprocessed in memory exactly as ``udaseg preprocess`` did for
   the model's training data (:func:`~udaseg.data.pipeline.preprocess_case`, labels not read;
   the settings are the model's record, see :func:`preprocess_like`).

Images are (S, H, W) float32 on the processed grid (intensities normalised as for training).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from udaseg import artifacts, layout
from udaseg.errors import UdasegError
from udaseg.inference.models import ModelSource, file_fingerprint

if TYPE_CHECKING:
    from udaseg.data.manifest import DatasetManifest


@dataclass
class CaseInput:
    """One case to segment: ``image`` (S, H, W) float32 on the processed grid, and its store meta
    record (``original``, ``processed`` geometry and ``assumed_direction``)."""

    case_id: str
    image: np.ndarray
    meta: dict[str, Any]


@dataclass
class DataSource:
    """What ``data`` is: a store (``path`` = the .h5 file) or raw folder (``files`` per case)."""

    kind: str  # "store" or "raw"
    path: Path
    artifact: Path | None  # the preprocess artifact folder, when it is one
    name: str
    dataset: str
    domain: str
    classes: list[str]
    view: str
    case_ids: list[str]
    manifest: Any = None  # DatasetManifest of raw data
    domain_spec: Any = None  # its Domain, with labels switched off
    files: dict[str, Any] = field(default_factory=dict)  # raw: case id -> CaseFiles
    # raw: the preprocessing used and where its settings came from (see preprocess_like)
    preprocessing: dict[str, Any] | None = None

    def record(self, ids: list[str]) -> dict[str, Any]:
        """What identifies the data in the run's config (artifacts are tracked by their manifest
        hash in ``inputs`` instead of a file fingerprint)."""
        record: dict[str, Any] = {
            "kind": self.kind,
            "path": str(self.path.resolve()),
            "dataset": self.dataset,
            "domain": self.domain,
        }
        if self.kind == "raw":
            from udaseg.data.pipeline import PIPELINE_VERSION, source_fingerprint

            rows = source_fingerprint([self.files[i] for i in ids], self.path)
            record.update(
                manifest=self.manifest.raw,
                preprocessing=self.preprocessing,
                pipeline_version=PIPELINE_VERSION,
                fingerprint=artifacts.config_hash({"files": rows}),
            )
        elif self.artifact is None:
            record["fingerprint"] = file_fingerprint([self.path])
        return record

    def cases(self, ids: list[str]) -> Iterator[CaseInput]:
        if self.kind == "store":
            return store_cases(self.path, ids)
        return raw_cases(self.manifest, self.domain_spec, [self.files[i] for i in ids])


# --- reading cases -------------------------------------------------------------------------------


def store_cases(path: Path, ids: Iterable[str]) -> Iterator[CaseInput]:
    """The cases ``ids`` of the store at ``path``, read one at a time."""
    from udaseg.data.store import Store

    store = Store(path)
    try:
        for case_id in ids:
            yield CaseInput(case_id, store.image(case_id), store.meta(case_id))
    finally:
        store.close()


def raw_cases(manifest, domain, files: Iterable) -> Iterator[CaseInput]:
    """Raw images preprocessed in memory exactly as ``udaseg preprocess`` does (labels unread)."""
    from udaseg.data.pipeline import preprocess_case
    from udaseg.data.readers import CaseFiles

    for case in files:
        processed = preprocess_case(manifest, domain, CaseFiles(case.case_id, case.image, None))
        yield CaseInput(case.case_id, processed.image, processed.meta)


# --- recognising the data ------------------------------------------------------------------------


def resolve_data(
    data: Path, force: bool, dataset: str | None = None, domain: str | None = None
) -> DataSource:
    """Recognise ``data`` as a store (artifact folder or .h5 file) or a raw folder (which needs
    the ``dataset`` manifest and the ``domain``).

    An artifact is checked (complete, unmodified, current) before it is opened.

    Raises:
        UdasegError: ``data`` is or lies in an unfinished (``.partial``) or replaced (``.old``)
            folder (exit code 2), does not exist, or is a raw folder without dataset and domain.
    """
    data = artifacts.check_finished(Path(data), "--data")
    if data.is_file() or (data / layout.STORE).is_file():
        return store_source(data, force)
    if not data.is_dir():
        raise UdasegError(
            f"--data {data} does not exist",
            hint="pass a `udaseg preprocess` output folder, its store.h5, or a raw dataset folder",
            path=data,
        )
    return raw_source(data, dataset, domain)


def store_source(data: Path, force: bool) -> DataSource:
    """A store artifact folder or store file; an artifact must be a complete, current
    ``preprocess`` output (unless ``force``)."""
    from udaseg.data.store import Store

    if data.is_dir():
        path, artifact = data / layout.STORE, data
    else:
        path = data
        artifact = data.parent if (data.parent / layout.MANIFEST).is_file() else None
    if artifact is not None:
        artifacts.require_input(
            artifact, stage="preprocess", rerun="udaseg preprocess", force=force
        )
    store = Store(path)
    try:
        name = path.parent.name if path.name == layout.STORE else path.stem
        return DataSource(
            "store",
            path,
            artifact,
            safe_name(name),
            store.dataset,
            store.domain,
            list(store.classes),
            store.view,
            list(store.case_ids),
        )
    finally:
        store.close()


def raw_source(data: Path, dataset: str | None, domain: str | None) -> DataSource:
    """The cases of a raw dataset folder, found by the ``domain``'s images pattern of the
    ``dataset`` manifest (name or YAML)."""
    from udaseg.data.manifest import load_manifest
    from udaseg.data.readers import find_cases

    if dataset is None or domain is None:
        raise UdasegError(
            f"--data {data} is not a preprocessed store (no {layout.STORE}), so it is read as a "
            "raw dataset folder, which needs --dataset and --domain",
            hint="pass e.g. --dataset mmwhs --domain ct, or a `udaseg preprocess` output folder",
            exit_code=2,
        )
    manifest = load_manifest(dataset)
    # images only: prediction neither needs nor reads labels, so their absence is no error
    spec = dataclasses.replace(manifest.domain(domain), labels=None)
    found = find_cases(spec, data)
    return DataSource(
        "raw",
        data,
        None,
        safe_name(layout.joined(manifest.name, spec.name)),
        manifest.name,
        spec.name,
        list(manifest.classes),
        manifest.view,
        [c.case_id for c in found],
        manifest,
        spec,
        {c.case_id: c for c in found},
    )


def preprocess_like(
    models: list[ModelSource], data: DataSource, log: Callable[[str], None]
) -> DataSource:
    """Raw ``data`` set to be preprocessed as the first model's training data was (its
    model.json's record, :func:`~udaseg.inference.preprocessing.raw_preprocessing`; ``log`` gets
    one line saying so, an unchecked one is a warning); a store is returned as it is.

    Raises:
        UdasegError: the data's manifest contradicts the record, or an ensemble member was
            trained on data preprocessed otherwise than the first model.
    """
    from udaseg.inference.preprocessing import agree, raw_preprocessing

    if data.kind != "raw":
        return data
    chosen = raw_preprocessing(models[0].info, models[0].directory, data.manifest, data.domain)
    for member in models[1:]:
        other = raw_preprocessing(member.info, member.directory, data.manifest, data.domain)
        agree(chosen, other, member.directory)
    if chosen.note:
        log(chosen.note)
    if chosen.warning:
        warnings.warn(chosen.warning, UserWarning, stacklevel=3)
    manifest = chosen.manifest
    return dataclasses.replace(
        data,
        view=manifest.view,
        manifest=manifest,
        domain_spec=dataclasses.replace(manifest.domain(data.domain), labels=None),
        preprocessing=chosen.record,
    )


def dataset_manifest(data: DataSource, models: list[ModelSource]) -> DatasetManifest | None:
    """The dataset manifest whose label codes the data's domain has, or None when nothing
    records it.

    Raw data: the ``--dataset`` manifest. A store artifact: the resolved manifest its
    ``preprocess`` manifest records. Any other store: the manifest a model's ``model.json``
    records for a store of the same dataset (its own domain's first). A recorded manifest that
    no longer validates counts as none.
    """
    from udaseg.inference.preprocessing import RECORD_KEY, recorded_manifest

    if data.kind == "raw":
        return data.manifest
    candidates: list[tuple[dict[str, Any], Path, str | None]] = []
    if data.artifact is not None:
        config = artifacts.load_manifest(data.artifact).config
        where = f"{data.artifact / layout.MANIFEST}"
        candidates.append(
            ({**config, "dataset": data.dataset, "domain": data.domain}, data.artifact, where)
        )
    for model in models:
        entries = (model.info.get(RECORD_KEY) or {}).get("stores", [])
        same = [e for e in entries if e.get("dataset") == data.dataset and e.get("manifest")]
        same.sort(key=lambda e: e.get("domain") != data.domain)
        candidates += [(e, model.directory, None) for e in same]
    for entry, folder, where in candidates:
        if not isinstance(entry.get("manifest"), dict):
            continue
        try:
            manifest = recorded_manifest(entry, folder, where)
        except UdasegError:
            continue
        if manifest.name == data.dataset and data.domain in manifest.domains:
            return manifest
    return None


def check_compatible(model: ModelSource, data: DataSource) -> None:
    """The model must have been trained for the data's classes (same names, same order) and view.

    Raises:
        UdasegError: naming both sides.
    """
    where = f"{data.path} ({data.dataset}/{data.domain})"
    classes = list(model.info.get("classes") or [])
    if classes != data.classes:
        raise UdasegError(
            f"model {model.directory} predicts classes {classes} but data {where} has classes "
            f"{data.classes}",
            hint="use a model trained on this dataset's classes, or preprocess the data with the "
            "manifest the model was trained with",
        )
    view = model.info.get("view")
    if view is not None and view != data.view:
        raise UdasegError(
            f"model {model.directory} was trained on {view} slices but data {where} is stored "
            f"{data.view}",
            hint=f"preprocess the data with view: {view} (the manifest's view key)",
        )


def input_records(model: ModelSource, data: DataSource) -> dict[str, dict[str, str]]:
    """Manifest records of the inputs that are artifacts (already checked by the caller)."""
    inputs = {}
    if model.artifact:
        inputs["model"] = artifacts.input_record(
            model.directory, artifacts.load_manifest(model.directory)
        )
    if data.artifact is not None:
        inputs["data"] = artifacts.input_record(
            data.artifact, artifacts.load_manifest(data.artifact)
        )
    return inputs


def safe_name(name: str) -> str:
    """``name`` as a plain folder name: characters other than letters, digits and ``._+-``
    become ``_``, leading ``._-`` are dropped (``run`` when nothing is left)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip("._-") or "run"
