"""Read CHAOS-style DICOM series and their per-slice PNG label stacks (SimpleITK only).

CHAOS 2019 ships each case as a folder of DICOM slices (``CT/1/DICOM_anon/*.dcm``,
``MR/1/T2SPIR/DICOM_anon/*.dcm``) and its ground truth as one PNG per slice
(``CT/1/Ground/liver_GT_000.png`` ..., ``MR/1/T2SPIR/Ground/IMG-0002-00001.png`` ...).

Slice order. :func:`read_dicom_series` orders slices by their position along the slice normal,
``dot(ImagePositionPatient, row_cosine x column_cosine)``, never by file name or directory listing
(both are arbitrary and, for CHAOS CT, run opposite to the anatomy for some cases). The returned
volume therefore always runs along +normal: ``direction = [row, column, normal]`` (as columns),
origin = position of the first (lowest) slice.

Label order. The PNGs carry the slice number in their names and follow the DICOM *instance
numbers* (0020,0013), not positions. :func:`order_labels_like_series` makes the mapping explicit:
sort the PNGs by the integers in their names (:func:`natural_key`) and give the k-th PNG to the
slice with the k-th smallest instance number, wherever that slice sits in position order.

Array layout. ``sitk.GetArrayFromImage`` of both the image and the label volume is (slice, row,
column) = (z, y, x); a PNG's (row, column) equals the DICOM slice's (row, column).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from udaseg.errors import UdasegError, look_up_option

__all__ = [
    "natural_key",
    "read_dicom_series",
    "read_instance_numbers",
    "order_labels_like_series",
    "read_png_label_stack",
    "CHAOS_MR_CODE_RANGES",
    "CHAOS_CT_CODE_RANGES",
]

# CHAOS grey levels (inclusive ranges) -> class codes. MR: liver, right kidney, left kidney, spleen.
CHAOS_MR_CODE_RANGES: dict[int, tuple[int, int]] = {
    1: (55, 70),
    2: (110, 135),
    3: (175, 200),
    4: (240, 255),
}
CHAOS_CT_CODE_RANGES: dict[int, tuple[int, int]] = {1: (1, 255)}  # liver only

# files that may hold DICOM slices; other suffixes (.txt, .png, .json ...) are not candidates
_DICOM_SUFFIXES = {".dcm", ".ima", ""}
_NOT_SLICES = {"DICOMDIR"}  # a directory index, no pixel data
_TAG_POSITION = "0020|0032"
_TAG_ORIENTATION = "0020|0037"
_TAG_INSTANCE = "0020|0013"
_TAG_SERIES_UID = "0020|000e"
_TAG_THICKNESS = "0018|0050"
_ORDERS = ("natural", "given")


def natural_key(path: str | Path) -> tuple:
    """Sort key for file names with numbers: ``liver_GT_2.png`` before ``liver_GT_10.png``.

    The name is split into text and digit runs; digit runs compare as integers, text runs
    case-insensitively. ``re.split`` with a capture group always alternates text/digits starting
    with text, so keys of different names stay comparable.
    """
    parts = re.split(r"(\d+)", Path(path).name)
    return tuple(int(part) if i % 2 else part.lower() for i, part in enumerate(parts))


# --- DICOM headers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SliceHeader:
    path: Path
    series_uid: str
    position: np.ndarray  # ImagePositionPatient, mm (LPS)
    orientation: tuple[float, ...]  # row cosine (3) then column cosine (3)
    instance_number: int | None
    size: tuple[int, int]  # (columns, rows)
    thickness: float | None


def _list_candidates(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UdasegError(
            f"DICOM folder not found: {folder}",
            hint="point at the folder that holds one series' slices (e.g. CT/1/DICOM_anon)",
            path=folder,
        )
    files = [
        path
        for path in folder.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix.lower() in _DICOM_SUFFIXES
        and path.name.upper() not in _NOT_SLICES
    ]
    if not files:
        raise UdasegError(
            f"no DICOM files in {folder}",
            hint="point at the folder that directly holds the .dcm slices (e.g. CT/1/DICOM_anon)",
            path=folder,
        )
    return files


def _numbers(text: str, count: int, tag: str, path: Path) -> list[float]:
    try:
        values = [float(value) for value in text.strip().split("\\")]
    except ValueError:
        values = []
    if len(values) != count:
        raise UdasegError(
            f"DICOM file {path} has a malformed tag {tag}: {text.strip()!r}",
            hint="the file is damaged or not an image slice; remove it from the series folder",
            path=path,
        )
    return values


def _tag(reader: sitk.ImageFileReader, tag: str) -> str | None:
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else None


def _read_header(path: Path) -> _SliceHeader:
    """Read one slice's header (no pixel data); a truncated or non-DICOM file fails here."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")  # never fall back to another format for a .dcm
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UdasegError(
            f"cannot read DICOM file {path} (truncated, damaged or not DICOM)",
            hint="re-extract or re-download the case, or remove the file from the series folder",
            path=path,
        ) from exc
    for tag, name in (
        (_TAG_POSITION, "ImagePositionPatient"),
        (_TAG_ORIENTATION, "ImageOrientationPatient"),
    ):
        if _tag(reader, tag) is None:
            raise UdasegError(
                f"DICOM file {path} has no {name} ({tag}), so it cannot be placed in a volume",
                hint="remove non-image files (reports, scouts) from the series folder",
                path=path,
            )
    instance = _tag(reader, _TAG_INSTANCE)
    if instance:  # an integer string ("12"); some writers emit "12.0"
        instance = _numbers(instance, 1, _TAG_INSTANCE, path)[0]
    thickness = _tag(reader, _TAG_THICKNESS)
    return _SliceHeader(
        path=path,
        series_uid=_tag(reader, _TAG_SERIES_UID) or "",
        position=np.array(_numbers(reader.GetMetaData(_TAG_POSITION), 3, _TAG_POSITION, path)),
        orientation=tuple(
            _numbers(reader.GetMetaData(_TAG_ORIENTATION), 6, _TAG_ORIENTATION, path)
        ),
        instance_number=int(instance) if instance is not None else None,
        size=tuple(reader.GetSize()[:2]),
        thickness=_numbers(thickness, 1, _TAG_THICKNESS, path)[0] if thickness else None,
    )


def _one_series(headers: list[_SliceHeader], folder: Path) -> None:
    uids: dict[str, int] = {}
    for header in headers:
        uids[header.series_uid] = uids.get(header.series_uid, 0) + 1
    if len(uids) > 1:
        listing = ", ".join(f"{uid or '<none>'} ({n} files)" for uid, n in sorted(uids.items()))
        raise UdasegError(
            f"{folder} holds {len(uids)} DICOM series: {listing}",
            hint="point at a folder that holds exactly one series (move the others elsewhere)",
            path=folder,
        )


def _same_grid(headers: list[_SliceHeader], folder: Path) -> None:
    """All slices must share orientation and size, or they cannot form one volume."""
    first = headers[0]
    for header in headers[1:]:
        if header.size != first.size or not np.allclose(
            header.orientation, first.orientation, atol=1e-4
        ):
            raise UdasegError(
                f"DICOM file {header.path} does not match {first.path.name} (size "
                f"{header.size} vs {first.size}, orientation {header.orientation} vs "
                f"{first.orientation}) in {folder}",
                hint="the folder mixes acquisitions; keep only the slices of one series in it",
                path=header.path,
            )


def _axes(orientation: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row, column and normal (row x column) vectors from ImageOrientationPatient."""
    row = np.asarray(orientation[:3], dtype=float)
    column = np.asarray(orientation[3:], dtype=float)
    row /= np.linalg.norm(row)
    column /= np.linalg.norm(column)
    return row, column, np.cross(row, column)


# --- slice positions ---------------------------------------------------------------------------


def _sort_by_position(headers: list[_SliceHeader]) -> tuple[list[_SliceHeader], np.ndarray]:
    """Sort slices by distance along the normal (ascending); return them and the distances (mm)."""
    _, _, normal = _axes(headers[0].orientation)
    distances = np.array([float(np.dot(h.position, normal)) for h in headers])
    order = np.argsort(distances, kind="stable")
    return [headers[i] for i in order], distances[order]


def _check_positions(
    headers: list[_SliceHeader], distances: np.ndarray, folder: Path, gap_tolerance: float
) -> None:
    """Reject duplicate slices, uneven gaps and slices not stacked along the normal."""
    gaps = np.diff(distances)
    if len(gaps) == 0:
        return
    median = float(np.median(gaps))
    duplicate = np.flatnonzero(gaps <= max(1e-4, 1e-3 * median))
    if len(duplicate):
        a, b = headers[duplicate[0]].path, headers[duplicate[0] + 1].path
        raise UdasegError(
            f"duplicate slice position {distances[duplicate[0]]:.3f} mm in {folder}: "
            f"{a.name} and {b.name}",
            hint="the folder holds a slice twice (or two series with one UID); remove the extra",
            path=folder,
        )
    tolerance = max(gap_tolerance * median, 1e-3)
    uneven = np.flatnonzero(np.abs(gaps - median) > tolerance)
    if len(uneven):
        i = uneven[0]
        raise UdasegError(
            f"uneven slice spacing in {folder}: {gaps[i]:.3f} mm between {headers[i].path.name} "
            f"and {headers[i + 1].path.name}, {median:.3f} mm elsewhere",
            hint="slices are missing or the folder mixes acquisitions; restore the missing "
            "slices or raise gap_tolerance if the variation is acceptable",
            path=folder,
        )
    row, column, _ = _axes(headers[0].orientation)
    offsets = np.array([h.position - headers[0].position for h in headers])
    drift = np.abs(offsets @ np.stack([row, column], axis=1)).max()
    if drift > max(tolerance, 0.01):  # 0.01 mm: rounding of the decimal position strings
        raise UdasegError(
            f"slices in {folder} are not stacked along their normal (in-plane drift "
            f"{drift:.3f} mm; tilted gantry?)",
            hint="resample the series to an orthogonal grid before using it",
            path=folder,
        )


def _geometry(headers: list[_SliceHeader], distances: np.ndarray) -> tuple:
    """(origin, z spacing, direction) of the position-sorted stack, in SimpleITK's conventions."""
    row, column, normal = _axes(headers[0].orientation)
    if len(headers) > 1:
        z_spacing = float(distances[-1] - distances[0]) / (len(headers) - 1)
    else:
        z_spacing = headers[0].thickness or 1.0  # a lone slice has no gap to measure
    direction = np.stack([row, column, normal], axis=1)  # columns = x, y, z axes
    return tuple(headers[0].position.tolist()), z_spacing, tuple(direction.ravel().tolist())


def _read_pixels(files: list[Path], folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(path) for path in files])
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise UdasegError(
            f"cannot read the pixel data of the DICOM series in {folder}: {exc}".splitlines()[0],
            hint="a slice is damaged; re-extract or re-download the case",
            path=folder,
        ) from exc


def read_dicom_series(
    folder: str | Path, *, gap_tolerance: float = 0.05
) -> tuple[sitk.Image, list[Path]]:
    """Read the one DICOM series in ``folder`` as a 3D image, slices in position order.

    Args:
        folder: directory that directly holds the slices (``*.dcm``, ``*.ima`` or no suffix).
        gap_tolerance: largest accepted deviation of a slice gap from the median gap, as a
            fraction of the median gap (0.05 = 5 %).

    Returns:
        ``(image, files)``: ``image`` has x = columns, y = rows, z = slices sorted by ascending
        ``dot(ImagePositionPatient, normal)`` with ``normal = row_cosine x column_cosine``;
        spacing (mm) = (column spacing, row spacing, mean distance between consecutive slice
        positions); origin = ImagePositionPatient of the first slice; direction columns =
        (row cosine, column cosine, normal). Pixel values are as SimpleITK/GDCM decode them
        (rescale slope/intercept applied). ``files`` lists the slice files in the same z order.

    Raises:
        UdasegError: missing or empty folder, more than one series (naming the UIDs), an
            unreadable or truncated file (naming it), slices of different size or orientation,
            duplicate positions, or gaps deviating from the median by more than the tolerance.
    """
    folder = Path(folder)
    headers = [_read_header(path) for path in _list_candidates(folder)]
    _one_series(headers, folder)
    _same_grid(headers, folder)
    headers, distances = _sort_by_position(headers)
    _check_positions(headers, distances, folder, gap_tolerance)
    files = [header.path for header in headers]
    image = _read_pixels(files, folder)
    origin, z_spacing, direction = _geometry(headers, distances)
    # ITK derives z geometry from the file order and first/last slice; set ours explicitly
    image.SetOrigin(origin)
    image.SetSpacing((*image.GetSpacing()[:2], z_spacing))
    image.SetDirection(direction)
    return image, files


def read_instance_numbers(files: Sequence[str | Path]) -> list[int]:
    """InstanceNumber (0020,0013) of each DICOM file, in the given order (e.g. the ``files`` of
    :func:`read_dicom_series`, giving the instance numbers in position order)."""
    numbers = []
    for path in map(Path, files):
        number = _read_header(path).instance_number
        if number is None:
            raise UdasegError(
                f"DICOM file {path} has no InstanceNumber (0020,0013)",
                hint="the labels cannot be matched to this slice by instance; pass the PNGs "
                'already in slice order with order="given"',
                path=path,
            )
        numbers.append(number)
    return numbers


# --- PNG label stacks --------------------------------------------------------------------------


def order_labels_like_series(
    png_files: Sequence[str | Path], instance_numbers: Sequence[int]
) -> list[Path]:
    """Reorder label PNGs to the slice order of a position-sorted series.

    Args:
        png_files: one PNG per slice, in any order; they are sorted with :func:`natural_key`
            and the k-th of them is taken to label the slice with the k-th smallest instance
            number (CHAOS numbers its PNGs in instance order).
        instance_numbers: InstanceNumber of each slice in position order (the volume's z order),
            e.g. ``read_instance_numbers(files)`` for the files of :func:`read_dicom_series`.

    Returns:
        the PNG paths in z order: element z labels slice z of the volume.
    """
    pngs = sorted(map(Path, png_files), key=natural_key)
    if len(pngs) != len(instance_numbers):
        raise _count_error(pngs, len(instance_numbers))
    if len(set(instance_numbers)) != len(instance_numbers):
        raise UdasegError(
            "the DICOM slices repeat instance numbers, so label PNGs cannot be matched by instance",
            hint='pass the PNGs already in slice order with order="given"',
        )
    rank = {number: k for k, number in enumerate(sorted(instance_numbers))}
    return [pngs[rank[number]] for number in instance_numbers]


def _count_error(pngs: Sequence[Path], n_slices: int) -> UdasegError:
    where = pngs[0].parent if pngs else None
    return UdasegError(
        f"{len(pngs)} label PNGs for {n_slices} image slices" + (f" in {where}" if where else ""),
        hint="give exactly one PNG per DICOM slice (check the Ground folder belongs to this case)",
        path=where,
    )


def _read_png_grey(path: Path) -> np.ndarray:
    """PNG as a 2D (row, column) integer array; colour images contribute their first channel."""
    from PIL import Image  # imported here: only label reading needs pillow

    try:
        with Image.open(path) as png:
            if png.mode == "P":
                png = png.convert("RGB")  # palette indices are not grey levels
            elif png.mode == "1":
                png = png.convert("L")  # bilevel -> 0/255
            grey = np.asarray(png)
    except (OSError, ValueError) as exc:
        raise UdasegError(
            f"cannot read label PNG {path}",
            hint="the file is missing, truncated or not a PNG; re-extract the case",
            path=path,
        ) from exc
    return grey[..., 0] if grey.ndim == 3 else grey


def _check_code_ranges(code_ranges: Mapping[int, tuple[int, int]]) -> None:
    spans = sorted((lo, hi, code) for code, (lo, hi) in code_ranges.items())
    for lo, hi, code in spans:
        if not (1 <= code <= 255 and 0 < lo <= hi):
            raise UdasegError(
                f"bad label code range {code}: ({lo}, {hi})",
                hint="codes must be 1..255 and ranges (low, high) with 0 < low <= high",
            )
    for (_, hi, code), (lo, _, other) in zip(spans[:-1], spans[1:], strict=True):
        if lo <= hi:
            raise UdasegError(
                f"label code ranges {code} and {other} overlap",
                hint="make the grey-level ranges of different codes disjoint",
            )


def _describe(code_ranges: Mapping[int, tuple[int, int]]) -> str:
    return ", ".join(f"{lo}-{hi} -> {code}" for code, (lo, hi) in sorted(code_ranges.items()))


def _map_codes(
    grey: np.ndarray, code_ranges: Mapping[int, tuple[int, int]], path: Path
) -> np.ndarray:
    """Grey levels -> uint8 class codes (inclusive ranges); 0 stays background."""
    labels = np.zeros(grey.shape, dtype=np.uint8)
    mapped = grey == 0
    for code, (lo, hi) in code_ranges.items():
        inside = (grey >= lo) & (grey <= hi)
        labels[inside] = code
        mapped |= inside
    if not mapped.all():
        stray = np.unique(grey[~mapped])
        raise UdasegError(
            f"label PNG {path} has {int((~mapped).sum())} pixels with grey values outside the "
            f"accepted ranges (e.g. {int(stray[0])}; values {stray[:8].tolist()}); accepted: "
            f"{_describe(code_ranges)}",
            hint="check the code ranges match this dataset's label grey levels",
            path=path,
        )
    return labels


def read_png_label_stack(
    files: Sequence[str | Path],
    reference: sitk.Image,
    code_ranges: Mapping[int, tuple[int, int]],
    *,
    order: str = "natural",
    instance_numbers: Sequence[int] | None = None,
) -> sitk.Image:
    """Stack one label PNG per slice into a uint8 label volume on ``reference``'s grid.

    Args:
        files: the PNGs, one per slice of ``reference``. Grey 8-bit; RGB/RGBA use channel 0.
        reference: the image volume (e.g. from :func:`read_dicom_series`); its size, spacing,
            origin and direction are copied.
        code_ranges: class code -> inclusive (low, high) grey range, e.g.
            :data:`CHAOS_MR_CODE_RANGES` or :data:`CHAOS_CT_CODE_RANGES`. Grey 0 is background;
            any other grey level outside every range is an error.
        order: ``"natural"``: sort ``files`` with :func:`natural_key`; with ``instance_numbers``
            the k-th PNG goes to the slice with the k-th smallest instance number (see
            :func:`order_labels_like_series`), without them PNG k goes to slice z = k.
            ``"given"``: ``files`` are already in the volume's z order.
        instance_numbers: InstanceNumber of each slice of ``reference`` in z order
            (``read_instance_numbers(files)`` of :func:`read_dicom_series`); only with
            ``order="natural"``.

    Returns:
        uint8 image, array (z, row, column), codes 0..255.

    Raises:
        UdasegError: PNG count != slice count (both counts named), a PNG whose size differs from
            the slices, an unreadable PNG, or a grey level outside the ranges (naming the PNG,
            the value and the accepted ranges).
    """
    look_up_option(order, _ORDERS, what="label order")
    _check_code_ranges(code_ranges)
    pngs = [Path(path) for path in files]
    n_slices = reference.GetSize()[2]
    if len(pngs) != n_slices:
        raise _count_error(sorted(pngs, key=natural_key), n_slices)
    if order == "natural":
        if instance_numbers is None:
            pngs = sorted(pngs, key=natural_key)
        else:
            pngs = order_labels_like_series(pngs, instance_numbers)
    shape = (reference.GetSize()[1], reference.GetSize()[0])  # (rows, columns)
    slices = []
    for path in pngs:
        grey = _read_png_grey(path)
        if grey.shape != shape:
            raise UdasegError(
                f"label PNG {path} is {grey.shape[1]}x{grey.shape[0]} pixels but the image "
                f"slices are {shape[1]}x{shape[0]}",
                hint="the PNGs must belong to this series (check case and modality folders)",
                path=path,
            )
        slices.append(_map_codes(grey, code_ranges, path))
    labels = sitk.GetImageFromArray(np.stack(slices))
    labels.CopyInformation(reference)
    return labels
