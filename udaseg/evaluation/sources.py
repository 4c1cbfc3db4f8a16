"""Where one side's label maps come from: predictions and references as stores, raw dataset
folders or folders of ``<case_id>.nii.gz`` label maps, and the case ids both sides share.

A folder of predictions holds class ids or a dataset's label codes
(:mod:`udaseg.data.label_values`): a ``udaseg predict`` run records which in its manifest, a bare
folder needs to be told. See :mod:`udaseg.stages.evaluate` for the order in which a reference is
recognised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udaseg import artifacts, layout
from udaseg.config.values import CLASS_IDS, DATASET_CODES, LABEL_VALUES
from udaseg.data.dicom import natural_key
from udaseg.data.label_values import LabelValues, class_ids, dataset_codes, from_record
from udaseg.data.manifest import DatasetManifest, Domain
from udaseg.data.readers import find_cases, pattern_regex
from udaseg.errors import UdasegError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Source:
    """Where one side's label maps come from.

    kind: ``nifti`` (``files`` maps case id -> file), ``raw`` (``files`` maps case id ->
    :class:`~udaseg.data.readers.CaseFiles`, ``domain`` says how to map codes) or ``store``
    (``path`` is the .h5 file).
    artifact: the artifact folder (with ``manifest.json``) holding it, if any.
    values: what a ``nifti`` folder's maps hold; None: the manifest's class ids.
    """

    kind: str
    path: Path
    ids: tuple[str, ...]
    files: dict[str, Any] = field(default_factory=dict)
    artifact: Path | None = None
    domain: Domain | None = None
    values: LabelValues | None = None

    def record(self) -> dict[str, Any]:
        record = {"path": str(self.path.resolve()), "kind": self.kind}
        if self.values is not None:
            record.update(self.values.record())
        return record


def _artifact_of(folder: Path) -> Path | None:
    return folder if (folder / layout.MANIFEST).is_file() else None


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
    if path.is_dir() and (path / layout.STORE).is_file():
        return path / layout.STORE
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


def resolve_pred(
    path: Path,
    manifest: DatasetManifest,
    values: str | None = None,
    domain: Domain | None = None,
) -> Source:
    """The prediction source: a store (class ids), or a folder of ``<case_id>.nii.gz`` whose
    values are what the ``udaseg predict`` run that wrote it records, else ``values``
    (``dataset-codes``: the label codes of ``domain``, or those the dataset's labelled domains
    share when it is None; ``class-ids``).

    Raises:
        UdasegError: no predictions; a bare folder without ``values`` or a store with codes
            (exit code 2); ``values`` that contradict the predict run's record (exit code 2);
            codes the manifest does not define; a record of other classes.
    """
    path = Path(path)
    store = _find_store(path)
    if store is not None:
        if values not in (None, CLASS_IDS):
            raise UdasegError(
                f"--pred-values {values}: the prediction store {store} holds class ids",
                hint=f"leave out --pred-values, or pass --pred-values {CLASS_IDS}",
                exit_code=2,
            )
        return _store_source(store, manifest, "prediction")
    if not path.exists():
        raise UdasegError(f"predictions {path} do not exist", path=path, exit_code=2)
    files = _nifti_files(path) if path.is_dir() else {}
    if not files:
        raise UdasegError(
            f"no predictions in {path}: expected <case_id>.nii.gz files or a {layout.STORE}",
            hint="pass the folder `udaseg predict` wrote",
            path=path,
        )
    artifact = _artifact_of(path)
    found = _pred_values(path, artifact, manifest, values, domain)
    return Source("nifti", path, _sorted(files), files, artifact=artifact, values=found)


def _pred_values(
    path: Path,
    artifact: Path | None,
    manifest: DatasetManifest,
    values: str | None,
    domain: Domain | None,
) -> LabelValues:
    """What the predictions in ``path`` hold (see :func:`resolve_pred`)."""
    recorded = artifacts.load_manifest(artifact) if artifact is not None else None
    if recorded is not None and recorded.stage == "predict":
        where = f"predict run {artifact}"
        found = from_record(recorded.summary, manifest.classes, where)
        if found is None:  # udaseg predict wrote class ids before it recorded its values
            found = class_ids(manifest.classes, manifest.name)
        if values is not None and values != found.kind:
            raise UdasegError(
                f"--pred-values {values}, but {where} wrote {found.kind} ({found.describe()})",
                hint="leave out --pred-values: a predict run's folder says what it holds",
                exit_code=2,
            )
        return found
    if values is None:
        raise UdasegError(
            f"--pred {path} is no `udaseg predict` run (no predict manifest.json), so nothing "
            "says whether its label maps hold class ids or the dataset's label codes",
            hint=f"pass --pred-values {CLASS_IDS} (0..{len(manifest.classes)} in the order "
            f"{', '.join(manifest.classes)}) or --pred-values {DATASET_CODES} (the label codes "
            "of --domain, as the dataset's own label files)",
            path=path,
            exit_code=2,
        )
    if values == CLASS_IDS:
        return class_ids(manifest.classes, manifest.name)
    if values != DATASET_CODES:
        raise UdasegError(
            f"--pred-values {values}: not one of {', '.join(LABEL_VALUES)}", exit_code=2
        )
    try:
        return dataset_codes(manifest, domain.name if domain else None)
    except UdasegError as exc:
        raise UdasegError(
            f"--pred-values {DATASET_CODES}: {exc.message}",
            hint=exc.hint or f"pass --domain, or --pred-values {CLASS_IDS} if the maps hold ids",
            path=path,
            exit_code=2,
        ) from exc


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
            f"no reference labels in {path}: no {layout.STORE}, no <case_id>.nii.gz files, and no "
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
