"""Preprocess one case: read, check, map labels, reorient, resample, crop, normalise.

Pure with respect to the workspace: :func:`preprocess_case` takes a manifest and a case's files and
returns arrays and a metadata record (it runs in worker processes); :func:`write_store` writes
many cases into a store file at a given path. The preprocess stage decides where stores go.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from udaseg.artifacts import file_sha256, files_fingerprint
from udaseg.data import geometry as geo
from udaseg.data.manifest import DatasetManifest, Domain
from udaseg.data.normalize import body_mask, normalise, robust_box_mask
from udaseg.data.readers import CaseFiles, LoadedCase, load_case
from udaseg.data.store import StoreWriter
from udaseg.errors import UdasegError
from udaseg.progress import NullProgress

# bump when the preprocessing of the same inputs would give different arrays
PIPELINE_VERSION = 1


@dataclass
class ProcessedCase:
    """A preprocessed case: ``image`` (S, H, W) float32, ``label`` (S, H, W) uint8 or None."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    meta: dict


def preprocess_case(manifest: DatasetManifest, domain: Domain, case: CaseFiles) -> ProcessedCase:
    """Run the whole per-case pipeline (see the module docstring).

    Raises:
        UdasegError: unreadable files, empty or non-finite images, image/label geometry mismatch,
            label codes the manifest does not know; always naming the case and file.
    """
    started = time.perf_counter()
    loaded = load_case(manifest, domain, case)
    raw = sitk.GetArrayViewFromImage(loaded.image)
    _check_image(raw, case)
    original = geo.geometry_of(loaded.image)
    if domain.assume_orientation:
        _assume_orientation(loaded, domain.assume_orientation)
    if domain.assume_spacing_scale:
        original["assumed_spacing"] = _assume_spacing(loaded, domain.assume_spacing_scale)
    image = geo.to_canonical(sitk.Cast(loaded.image, sitk.sitkFloat32), manifest.view)
    label = None
    if loaded.label is not None:
        label = geo.to_canonical(_class_label(manifest, domain, case, loaded), manifest.view)

    g = manifest.geometry
    image = geo.resample(
        image, inplane_mm=g.inplane_mm, through_plane_mm=g.through_plane_mm, is_label=False
    )
    array = sitk.GetArrayFromImage(image)
    label_array = None
    if label is not None:
        label = geo.resample(
            label, inplane_mm=g.inplane_mm, through_plane_mm=g.through_plane_mm, is_label=True
        )
        label_array = sitk.GetArrayFromImage(label)

    body = body_mask(array, g.crop.threshold)
    box = geo.fit_inplane(
        _crop_box(manifest, domain, case, array, body, label_array, image), g.inplane_size
    )
    cropped = geo.extract(array, box, fill=float(array.min()))
    body = geo.extract(body, box, fill=False)
    normalised, intensity = normalise(cropped, domain.intensity, body)
    if label_array is not None:
        label_array = geo.extract(label_array, box, fill=0)

    meta = {
        "case_id": case.case_id,
        "source_files": [str(p) for p in loaded.files],
        "source_sha256": {p.name: file_sha256(p) for p in loaded.files if p.is_file()},
        "original": original,
        # the direction used in place of the header's (see the manifest's assume_orientation)
        "assumed_direction": list(loaded.image.GetDirection())
        if domain.assume_orientation
        else None,
        "processed": {
            "size": [int(s) for s in normalised.shape[::-1]],
            "spacing": list(image.GetSpacing()),
            "origin": list(geo.box_origin(image, box)),
            "direction": list(image.GetDirection()),
            "orientation": geo.orientation_code(image),
        },
        "crop_box_shw": {"start": list(box.start), "stop": list(box.stop)},
        "intensity": intensity,
        "body_fraction": float(body.mean()),
        "class_voxels": _class_voxels(label_array, len(manifest.classes)),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return ProcessedCase(case.case_id, normalised, label_array, meta)


def _assume_orientation(loaded: LoadedCase, code: str) -> None:
    """Replace a known-wrong header direction; voxels, spacing and origin stay as they are."""
    direction = sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code)
    loaded.image.SetDirection(direction)
    if loaded.label is not None and loaded.label.GetSize() == loaded.image.GetSize():
        loaded.label.SetDirection(direction)


def _assume_spacing(loaded: LoadedCase, scale: tuple[float, float, float]) -> list[float]:
    """Multiply a known-wrong header spacing by ``scale`` (file axes x, y, z); voxels, origin and
    direction stay as they are. Returns the spacing used."""
    spacing = [float(s * f) for s, f in zip(loaded.image.GetSpacing(), scale, strict=True)]
    for image in (loaded.image, loaded.label):
        if image is not None and image.GetSize() == loaded.image.GetSize():
            image.SetSpacing(spacing)
    return spacing


def _check_image(raw: np.ndarray, case: CaseFiles) -> None:
    if raw.size == 0 or min(raw.shape) == 0:
        raise UdasegError(
            f"case {case.case_id}: image {case.image} is empty (shape {raw.shape})",
            hint="replace the file with a complete download",
            path=case.image,
        )
    if raw.dtype.kind == "f":
        bad = int(np.size(raw) - np.count_nonzero(np.isfinite(raw)))
        if bad:
            raise UdasegError(
                f"case {case.case_id}: image {case.image} has {bad} NaN/Inf voxels",
                hint="fix or exclude the file (e.g. replace NaN with the background value)",
                path=case.image,
            )
    if raw.max() == raw.min():
        raise UdasegError(
            f"case {case.case_id}: image {case.image} is constant ({raw.flat[0]!r} everywhere)",
            hint="the volume holds no image; replace or exclude it",
            path=case.image,
        )


def _class_label(
    manifest: DatasetManifest, domain: Domain, case: CaseFiles, loaded: LoadedCase
) -> sitk.Image:
    """The label volume as uint8 class ids 0..C on the image's grid (codes mapped, checked)."""
    label = loaded.label
    if not geo.same_grid(loaded.image, label):
        raise UdasegError(
            f"case {case.case_id}: image and label grids differ "
            f"(image size {loaded.image.GetSize()} spacing {_r(loaded.image.GetSpacing())} "
            f"origin {_r(loaded.image.GetOrigin())}; label size {label.GetSize()} spacing "
            f"{_r(label.GetSpacing())} origin {_r(label.GetOrigin())})",
            hint="the label must be annotated on the image's own grid; check the pairing",
            path=case.label,
        )
    codes = sitk.GetArrayFromImage(label)
    if loaded.label_is_class_ids:
        mapped = codes.astype(np.uint8)
    else:
        mapped = map_codes(codes, manifest, domain, case)
    out = sitk.GetImageFromArray(mapped)
    out.CopyInformation(loaded.image)
    return out


def map_codes(
    codes: np.ndarray, manifest: DatasetManifest, domain: Domain, case: CaseFiles
) -> np.ndarray:
    ints = codes.astype(np.int64) if codes.dtype.kind in "iu" else codes.astype(np.int32)
    # float label files (common: BTCV, CHAOS NIfTI) must still hold whole codes; a NaN or 2.5
    # does not survive the round trip through int
    if codes.dtype.kind == "f" and not np.array_equal(ints, codes):
        raise UdasegError(
            f"case {case.case_id}: label {case.label} has non-integer values",
            hint="labels must hold integer codes",
            path=case.label,
        )
    low, high = int(ints.min()), int(ints.max())
    if low < 0 or high > 1 << 20:
        present = np.unique(ints)
    else:  # label codes are small non-negative ints: counting beats sorting 10^7 voxels
        present = np.flatnonzero(np.bincount(ints.ravel(), minlength=1))
    known = {0, *domain.label_map}
    unknown = [int(c) for c in present if int(c) not in known]
    if unknown and domain.other_codes == "error":
        raise UdasegError(
            f"case {case.case_id}: label {case.label} has codes {unknown} that the manifest "
            f"'{manifest.name}' does not map (domain {domain.name} knows {sorted(known)})",
            hint="add them to the domain's label_map (as a class or 'background'), or set "
            "other_codes: background",
            path=case.label,
        )
    ids = manifest.class_ids()
    mapping = {int(c): ids.get(domain.label_map.get(int(c), "background"), 0) for c in present}
    if low >= 0 and high <= 1 << 20:
        lut = np.zeros(high + 1, dtype=np.uint8)
        for code, class_id in mapping.items():
            lut[code] = class_id
        return np.take(lut, ints)
    lut_codes = np.array(sorted(mapping))
    lut_values = np.array([mapping[c] for c in lut_codes], dtype=np.uint8)
    return lut_values[np.searchsorted(lut_codes, ints)]


def _crop_box(manifest, domain, case, array, body, label_array, image) -> geo.Box:
    crop = manifest.geometry.crop
    full = geo.Box((0, 0, 0), array.shape)
    if crop.method == "none":
        return full
    spacing = geo.shw_spacing(image)
    margin = tuple(int(np.ceil(crop.margin_mm / s)) for s in spacing)
    if crop.method == "label":
        if label_array is None:
            raise UdasegError(
                f"case {case.case_id}: crop method 'label' needs labels, but domain "
                f"{domain.name} has none",
                hint="use geometry.crop.method: body for unlabelled domains",
            )
        mask = label_array > 0
    else:
        mask = robust_box_mask(body)
    return geo.bounding_box(mask, margin) or full  # type: ignore[arg-type]


def _class_voxels(label: np.ndarray | None, n_classes: int) -> list[int] | None:
    if label is None:
        return None
    return np.bincount(label.ravel(), minlength=n_classes + 1).tolist()


def _r(values) -> list[float]:
    return [round(float(v), 3) for v in values]


def source_fingerprint(cases: list[CaseFiles], root: Path | None = None) -> list[list]:
    """(name, size, SHA-256) of every raw file of ``cases``, names relative to ``root`` (the raw
    folder) when given: see :func:`udaseg.artifacts.files_fingerprint`."""
    paths = [p for case in cases for p in (case.image, case.label) if p is not None]
    return files_fingerprint(paths, root)


def write_store(manifest, domain, cases, path, workers=1, progress=None) -> list[dict]:
    """Preprocess ``cases`` into a new store at ``path``; returns each case's meta record."""
    progress = progress or NullProgress()
    task = progress.task(f"preprocess {manifest.name}/{domain.name}", len(cases))
    metas = []
    with StoreWriter(
        path,
        dataset=manifest.name,
        domain=domain.name,
        modality=domain.modality,
        view=manifest.view,
        classes=manifest.classes,
        labelled=domain.labelled,
    ) as store:
        for result in _process_all(manifest, domain, cases, workers):
            store.add_case(result.case_id, result.image, result.label, result.meta)
            metas.append(result.meta)
            progress.advance(task, case=result.case_id)
    return metas


def _process_all(manifest, domain, cases, workers):
    """Yield processed cases in case order, computed in ``workers`` processes."""
    if workers <= 1 or len(cases) <= 1:
        for case in cases:
            yield preprocess_case(manifest, domain, case)
        return
    # spawn, not fork: SimpleITK's thread pool does not survive a fork safely
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(preprocess_case, manifest, domain, case) for case in cases]
        for future in futures:
            result: ProcessedCase = future.result()
            yield result
