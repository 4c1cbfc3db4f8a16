"""One case of an evaluation: one side's label map as a worker process is told where to find it
(:class:`Item`), loaded as class ids with its grid (:class:`Labels`; a prediction's dataset codes
mapped back, :mod:`udaseg.data.label_values`), and the check that a prediction and its reference
share that grid.

Arrays are (S, H, W) = (z, y, x) as ``sitk.GetArrayFromImage`` gives them; geometry records hold
size, spacing (mm), origin (mm) and direction in SimpleITK (x, y, z) order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from udaseg.config.values import CLASS_IDS, DATASET_CODES
from udaseg.data.label_values import LabelValues, class_ids
from udaseg.data.manifest import DatasetManifest, Domain
from udaseg.data.readers import CaseFiles
from udaseg.errors import UdasegError
from udaseg.evaluation.sources import Source

GEOMETRY_TOL = 1e-3
GRID_HINT = (
    "`udaseg predict` writes onto the original scan grid: pass the original labels (the raw "
    "dataset folder or its label files) as --ref, or a preprocessed store with store predictions"
)


@dataclass(frozen=True)
class Item:
    """One side of one case, as a worker process needs it (small and picklable)."""

    kind: str
    role: str  # "prediction" or "reference"
    case_id: str
    location: Path | CaseFiles  # NIfTI file, store file, or the raw case's files
    values: LabelValues | None = None  # what a NIfTI file holds; None: class ids


@dataclass
class Labels:
    """A loaded label map: ``array`` (S, H, W) = (z, y, x) class ids; ``geometry`` size, spacing
    (mm), origin (mm) and direction in SimpleITK (x, y, z) order; ``where`` names the file."""

    array: np.ndarray
    geometry: dict[str, list[float]]
    where: str


def case_item(source: Source, role: str, case_id: str) -> Item:
    """Case ``case_id`` of ``source`` (``role``: ``prediction`` or ``reference``)."""
    location = source.path if source.kind == "store" else source.files[case_id]
    return Item(source.kind, role, case_id, location, source.values)


def _geometry(image) -> dict[str, list[float]]:
    keys = ("size", "spacing", "origin", "direction")
    values = (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return {k: [float(x) for x in v] for k, v in zip(keys, values, strict=True)}


def _read_image(path: Path, item: Item):
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


def _load_nifti(item: Item) -> Labels:
    import SimpleITK as sitk

    image = _read_image(item.location, item)  # type: ignore[arg-type]
    return Labels(sitk.GetArrayFromImage(image), _geometry(image), str(item.location))


def _load_raw(item: Item, manifest: DatasetManifest, domain: Domain) -> Labels:
    """A raw label volume with its codes mapped to class ids as preprocessing maps them."""
    import SimpleITK as sitk

    # the same mapping (and unknown-code errors) as preprocessing, so ids cannot drift apart
    from udaseg.data.pipeline import map_codes
    from udaseg.data.readers import load_case

    case: CaseFiles = item.location  # type: ignore[assignment]
    if domain.reader == "nifti":
        label, is_class_ids = _read_image(case.label, item), False  # type: ignore[arg-type]
    else:  # DICOM + PNG masks and TFRecords need the image to assemble the label volume
        loaded = load_case(manifest, domain, case)
        label, is_class_ids = loaded.label, loaded.label_is_class_ids
    codes = sitk.GetArrayFromImage(label)
    array = codes if is_class_ids else map_codes(codes, manifest, domain, case)
    return Labels(array, _geometry(label), str(case.label))


def _load_store(item: Item) -> Labels:
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
    return Labels(array, geometry, where)


def load_labels(item: Item, manifest: DatasetManifest, domain: Domain | None) -> Labels:
    """One side of one case as class ids 0..C of ``manifest`` (uint8, or int16 past 255 classes);
    ``domain`` maps a raw reference's codes (only needed for ``raw`` items), ``item.values`` a
    NIfTI file's values (default: class ids).

    Raises:
        UdasegError: a missing or unreadable file, a store case without a label or geometry, or
            values that are not what the file should hold; naming the case, its role, the file
            and the values.
    """
    if item.kind == "store":
        labels = _load_store(item)
    elif item.kind == "raw":
        labels = _load_raw(item, manifest, domain)  # type: ignore[arg-type]
    else:
        labels = _load_nifti(item)
    values = item.values or class_ids(manifest.classes, manifest.name)
    labels.array = _class_ids(labels, item, values)
    return labels


def _class_ids(labels: Labels, item: Item, values: LabelValues) -> np.ndarray:
    """The label map as uint8/int16 class ids; values that are none of ``values`` are an error
    naming the case, the file and the values."""
    array = labels.array
    if array.dtype.kind == "f" and not np.array_equal(array, np.rint(array)):
        raise UdasegError(
            f"case {item.case_id}: {item.role} {labels.where} has non-integer or NaN values",
            hint="label maps must hold integer class ids (argmax, not probabilities)",
            path=labels.where,
        )
    if array.dtype.kind not in "biuf":
        raise UdasegError(f"case {item.case_id}: {item.role} {labels.where} is not numeric")
    if item.role == "reference":
        hint = "a raw dataset's codes are mapped only when --ref is the raw dataset folder"
    elif values.kind == CLASS_IDS:
        hint = (
            "predictions must be class ids in the manifest's class order; maps in the dataset's "
            f"own label codes are read with --pred-values {DATASET_CODES} (and --domain)"
        )
    else:
        hint = f"maps of class ids are read with --pred-values {CLASS_IDS}"
    return values.to_class_ids(
        array, f"case {item.case_id}: {item.role} {labels.where}", path=labels.where, hint=hint
    )


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


def check_pair(case_id: str, pred: Labels, ref: Labels) -> None:
    """Raises UdasegError (hint :data:`GRID_HINT`) unless both lie on the same grid."""
    if pred.array.shape == ref.array.shape and _same_geometry(pred.geometry, ref.geometry):
        return
    raise UdasegError(
        f"case {case_id}: prediction and reference grids differ: prediction {pred.where} "
        f"({_describe_grid(pred.geometry)}) vs reference {ref.where} "
        f"({_describe_grid(ref.geometry)})",
        hint=GRID_HINT,
        path=pred.where,
    )
