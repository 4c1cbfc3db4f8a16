"""Readers: find a domain's cases under the raw folder and load each as SimpleITK images.

Readers are registered by the name a manifest's ``reader:`` key uses. Each returns images with their
full geometry (spacing, origin, direction), so preprocessing can reorient them and ``predict`` can
write results back onto the original grid. Labels come back with the dataset's raw codes; mapping
to class ids happens in preprocessing, where unknown codes are caught.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from udaseg import layout
from udaseg.data import nifti
from udaseg.data.dicom import natural_key
from udaseg.data.geometry import canonical_direction
from udaseg.data.manifest import DatasetManifest, Domain
from udaseg.errors import UdasegError


@dataclass(frozen=True)
class CaseFiles:
    """Where one case lives: ``image`` and ``label`` are files or (DICOM/PNG) folders."""

    case_id: str
    image: Path
    label: Path | None


@dataclass
class LoadedCase:
    """One case read from disk: SimpleITK images and the files they came from."""

    case_id: str
    image: sitk.Image
    label: sitk.Image | None
    files: list[Path] = field(default_factory=list)
    # label codes are already class ids 1..C (readers that map ranges themselves, e.g. PNG masks)
    label_is_class_ids: bool = False


def pattern_regex(pattern: str) -> re.Pattern:
    """Regex for a manifest file pattern: ``{case}`` captures the id (repeats must match it),
    ``*`` matches within one path component."""
    parts = pattern.split("{case}")
    regex = ""
    for i, part in enumerate(parts):
        regex += re.escape(part).replace(r"\*", "[^/]*")
        if i < len(parts) - 1:
            regex += "(?P<case>[^/]+?)" if i == 0 else "(?P=case)"
    return re.compile(regex + "$")


def find_cases(domain: Domain, raw: Path) -> list[CaseFiles]:
    """All cases of ``domain`` under ``raw``, sorted naturally by case id.

    Raises:
        UdasegError: the raw folder is missing, no image matches the pattern, or a case's label
            file/folder is missing.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise UdasegError(
            f"raw data folder {raw} does not exist",
            hint="pass --raw pointing at the downloaded dataset",
            path=raw,
        )
    regex = pattern_regex(domain.images)
    found: dict[str, Path] = {}
    for path in raw.glob(domain.images.replace("{case}", "*")):
        match = regex.search(path.relative_to(raw).as_posix())
        if match:
            # a case id names the files written for it (W/predict/<run>/<case>.nii.gz)
            found[layout.check_name(match.group("case"), f"case id of {path}")] = path
    if not found:
        raise UdasegError(
            f"no {domain.name} images matching '{domain.images}' under {raw}",
            hint="check --raw and the manifest's 'images' pattern (its 'obtain' text and "
            "docs/reference/dataset-manifest.md say where files must be)",
            path=raw,
        )
    cases = []
    for case_id in sorted(found, key=natural_key):
        label = None
        if domain.labels is not None:
            matches = sorted(raw.glob(domain.labels.replace("{case}", case_id)))
            if not matches:
                expected = domain.labels.replace("{case}", case_id)
                raise UdasegError(
                    f"case {case_id} ({domain.name}): label '{expected}' not found under {raw}",
                    hint="restore the missing label file, or remove the case's image",
                    path=found[case_id],
                )
            label = matches[0]
        cases.append(CaseFiles(case_id, found[case_id], label))
    return cases


def _read_image(path: Path, what: str, case_id: str) -> sitk.Image:
    if not path.is_file():
        raise UdasegError(f"case {case_id}: {what} file {path} is missing", path=path)
    try:
        return nifti.read_image(path)
    except UdasegError as exc:
        raise UdasegError(
            f"case {case_id}: {what}: {exc.message}", hint=exc.hint, path=path
        ) from exc


def read_nifti(manifest: DatasetManifest, domain: Domain, case: CaseFiles) -> LoadedCase:
    """NIfTI/MHA/NRRD (anything SimpleITK reads): one file per image and per label."""
    image = _read_image(case.image, "image", case.case_id)
    label = _read_image(case.label, "label", case.case_id) if case.label else None
    files = [case.image] + ([case.label] if case.label else [])
    return LoadedCase(case.case_id, image, label, files)


def read_dicom_png(manifest: DatasetManifest, domain: Domain, case: CaseFiles) -> LoadedCase:
    """CHAOS-style: a DICOM series folder and a folder of per-slice PNG masks."""
    from udaseg.data import dicom

    image, dicom_files = dicom.read_dicom_series(case.image)
    label = None
    files = list(dicom_files)
    if case.label is not None:
        pngs = sorted(case.label.glob("*.png"), key=natural_key)
        ids = manifest.class_ids()
        ranges = {ids[name]: bounds for name, bounds in domain.label_ranges.items()}
        # CHAOS numbers its PNGs like the DICOM instances, not like the slice positions
        instances = dicom.read_instance_numbers(dicom_files)
        label = dicom.read_png_label_stack(pngs, image, ranges, instance_numbers=instances)
        files += pngs
    return LoadedCase(case.case_id, image, label, files, label_is_class_ids=True)


def read_sifa_tfrecords(manifest: DatasetManifest, domain: Domain, case: CaseFiles) -> LoadedCase:
    """SIFA's TFRecords: 256x256x3 slices already cut along the view; one record -> its three
    channels become three slices, several records -> the middle channel of each, in file order.
    Spacing is unknown (1 mm assumed) and the grid is already canonical for ``view``."""
    from udaseg.data.tfrecord import read_sifa_record

    records = read_sifa_record(case.image)
    if not records:
        raise UdasegError(f"case {case.case_id}: {case.image} holds no records", path=case.image)
    if len(records) == 1:
        image = np.moveaxis(records[0][0], -1, 0)
        label = np.moveaxis(records[0][1], -1, 0)
    else:
        image = np.stack([rec[0][..., 1] for rec in records])
        label = np.stack([rec[1][..., 1] for rec in records])
    direction = canonical_direction(manifest.view)
    images = []
    for array in (image.astype(np.float32), np.rint(label).astype(np.int16)):
        volume = sitk.GetImageFromArray(np.ascontiguousarray(array))
        volume.SetDirection(direction)
        images.append(volume)
    return LoadedCase(case.case_id, images[0], images[1], [case.image])


READERS: dict[str, Callable[[DatasetManifest, Domain, CaseFiles], LoadedCase]] = {
    "nifti": read_nifti,
    "dicom-png": read_dicom_png,
    "sifa-tfrecords": read_sifa_tfrecords,
}


def load_case(manifest: DatasetManifest, domain: Domain, case: CaseFiles) -> LoadedCase:
    """Read one case with the domain's registered reader."""
    return READERS[domain.reader](manifest, domain, case)
