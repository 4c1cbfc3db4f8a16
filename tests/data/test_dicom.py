"""CHAOS-style DICOM series and PNG label stacks, on tiny synthetic series written with SimpleITK.

Every slice holds a distinct constant value so the slice order of a volume is checkable, and file
names are deliberately scrambled relative to position so sorting by name would fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from udaseg.data.dicom import (
    CHAOS_MR_CODE_RANGES,
    natural_key,
    order_labels_like_series,
    read_dicom_series,
    read_instance_numbers,
    read_png_label_stack,
)
from udaseg.errors import UdasegError

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # normal = row x column = (0, 1, 0)
SIZE = 16


def write_slice(
    path: Path,
    value: int,
    position: tuple[float, float, float],
    *,
    instance: int,
    orientation: tuple[float, ...] = AXIAL,
    uid: str = "1.2.826.0.1.3680043.2.1125.1",
    spacing: tuple[float, float] = (0.7, 0.8),
) -> None:
    """One 16x16 int16 slice; pixel (row 0, column 1) is marked to check in-plane layout."""
    pixels = np.full((SIZE, SIZE), value, dtype=np.int16)
    pixels[0, 1] = value + 1
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing(spacing)  # GDCM writes PixelSpacing from the image spacing
    tags = {
        "0020|0032": "\\".join(f"{c:g}" for c in position),
        "0020|0037": "\\".join(f"{c:g}" for c in orientation),
        "0020|0013": str(instance),
        "0020|000e": uid,
        "0008|0060": "MR",
    }
    for tag, text in tags.items():
        image.SetMetaData(tag, text)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keep our SeriesInstanceUID instead of a fresh one
    writer.SetFileName(str(path))
    writer.Execute(image)


def write_series(
    folder: Path,
    distances: list[float],
    *,
    names: list[str] | None = None,
    instances: list[int] | None = None,
    orientation: tuple[float, ...] = AXIAL,
    uid: str = "1.2.826.0.1.3680043.2.1125.1",
) -> list[Path]:
    """Slice k lies at ``base + distances[k] * normal`` and holds value 100 * k."""
    folder.mkdir(parents=True, exist_ok=True)
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    base = np.array([-12.5, 30.0, 7.0])
    n = len(distances)
    names = names or [f"slice{k}.dcm" for k in range(n)]
    instances = instances or list(range(1, n + 1))
    paths = []
    for k, distance in enumerate(distances):
        path = folder / names[k]
        position = tuple(base + distance * normal)
        write_slice(
            path, 100 * k, position, instance=instances[k], orientation=orientation, uid=uid
        )
        paths.append(path)
    return paths


def slice_values(image: sitk.Image) -> list[int]:
    return sitk.GetArrayFromImage(image)[:, 5, 5].tolist()


# --- DICOM series --------------------------------------------------------------------------------


def test_slices_come_back_in_position_order_not_name_order(tmp_path: Path):
    # names sort (as text) in an order unrelated to position: IMG-3, IMG-0, IMG-5, IMG-1 ...
    names = [f"IMG-{i}.dcm" for i in (3, 0, 5, 1, 4, 2)]
    paths = write_series(tmp_path / "s", [0, 2.5, 5, 7.5, 10, 12.5], names=names)
    image, files = read_dicom_series(tmp_path / "s")
    assert image.GetSize() == (SIZE, SIZE, 6)
    assert slice_values(image) == [0, 100, 200, 300, 400, 500]
    assert files == paths
    assert image.GetSpacing() == pytest.approx((0.7, 0.8, 2.5))
    assert image.GetOrigin() == pytest.approx((-12.5, 30.0, 7.0))
    assert image.GetDirection() == pytest.approx(np.eye(3).ravel())
    # array layout (z, row, column): the marker is at row 0, column 1 of every slice
    array = sitk.GetArrayFromImage(image)
    assert (array[:, 0, 1] == array[:, 5, 5] + 1).all()


def test_random_positions_are_sorted(tmp_path: Path):
    distances = [7.5, -5.0, 2.5, 0.0, -2.5, 5.0]  # shuffled along the normal
    write_series(tmp_path / "s", distances)
    image, files = read_dicom_series(tmp_path / "s")
    order = np.argsort(distances)
    assert slice_values(image) == [100 * int(k) for k in order]
    assert [f.name for f in files] == [f"slice{k}.dcm" for k in order]
    assert image.GetOrigin()[2] == pytest.approx(7.0 - 5.0)
    assert image.GetSpacing()[2] == pytest.approx(2.5)


def test_descending_positions_feet_first(tmp_path: Path):
    # instance 1 is the top slice, positions fall with instance number (as exported feet-first)
    distances = [10.0, 8.0, 6.0, 4.0, 2.0, 0.0]
    write_series(tmp_path / "s", distances)
    image, files = read_dicom_series(tmp_path / "s")
    assert slice_values(image) == [500, 400, 300, 200, 100, 0]
    assert image.GetSpacing()[2] == pytest.approx(2.0)  # positive, along +normal
    assert image.GetOrigin()[2] == pytest.approx(7.0)
    assert image.GetDirection()[8] == pytest.approx(1.0)
    assert read_instance_numbers(files) == [6, 5, 4, 3, 2, 1]


def test_coronal_orientation_sorts_along_normal(tmp_path: Path):
    write_series(tmp_path / "s", [3.0, 0.0, 6.0, 1.5, 4.5], orientation=CORONAL)
    image, _ = read_dicom_series(tmp_path / "s")
    assert slice_values(image) == [100, 300, 0, 400, 200]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 2], [0, 1, 0], atol=1e-6)  # normal = row x column
    np.testing.assert_allclose(direction[:, 1], [0, 0, -1], atol=1e-6)
    assert image.GetSpacing()[2] == pytest.approx(1.5)
    # physical point of voxel z is the position of the slice stored there
    assert image.TransformIndexToPhysicalPoint((0, 0, 4)) == pytest.approx((-12.5, 36.0, 7.0))


def test_two_series_in_one_folder(tmp_path: Path):
    write_series(tmp_path / "s", [0, 1, 2], uid="1.2.3.111")
    write_series(tmp_path / "s", [0, 1, 2], names=["b0.dcm", "b1.dcm", "b2.dcm"], uid="1.2.3.222")
    with pytest.raises(UdasegError, match=r"2 DICOM series.*1\.2\.3\.111.*1\.2\.3\.222") as info:
        read_dicom_series(tmp_path / "s")
    assert "one series" in info.value.hint


def test_empty_and_missing_folder(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a slice")
    with pytest.raises(UdasegError, match="no DICOM files in .*empty"):
        read_dicom_series(tmp_path / "empty")
    with pytest.raises(UdasegError, match="not found"):
        read_dicom_series(tmp_path / "absent")


def test_truncated_file_is_named(tmp_path: Path):
    paths = write_series(tmp_path / "s", [0, 1, 2, 3])
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 100])
    with pytest.raises(UdasegError, match=r"slice2\.dcm") as info:
        read_dicom_series(tmp_path / "s")
    assert info.value.hint


def test_duplicate_positions(tmp_path: Path):
    write_series(tmp_path / "s", [0, 1, 1, 2])
    with pytest.raises(UdasegError, match="duplicate slice position"):
        read_dicom_series(tmp_path / "s")


def test_uneven_gaps_rejected_unless_tolerated(tmp_path: Path):
    write_series(tmp_path / "s", [0, 1, 2, 4, 5])  # the slice at 3 is missing
    with pytest.raises(UdasegError, match="uneven slice spacing") as info:
        read_dicom_series(tmp_path / "s")
    assert "gap_tolerance" in info.value.hint
    image, _ = read_dicom_series(tmp_path / "s", gap_tolerance=2.0)
    assert image.GetSpacing()[2] == pytest.approx(1.25)  # mean gap


def test_single_slice(tmp_path: Path):
    write_series(tmp_path / "s", [0])
    image, files = read_dicom_series(tmp_path / "s")
    assert image.GetSize() == (SIZE, SIZE, 1) and len(files) == 1


# --- natural order and instance matching ---------------------------------------------------------


def test_natural_key():
    names = ["liver_GT_10.png", "liver_GT_2.png", "liver_GT_1.png", "IMG-0002-00011.png"]
    assert sorted(names, key=natural_key) == [
        "IMG-0002-00011.png",
        "liver_GT_1.png",
        "liver_GT_2.png",
        "liver_GT_10.png",
    ]
    assert natural_key(Path("a/b/x_009.png")) < natural_key("x_10.png")


def test_order_labels_like_series():
    pngs = [Path(f"liver_GT_{k}.png") for k in (10, 2, 1)]
    # slices in position order carry instances 30, 10, 20: position 0 is the 3rd by instance
    ordered = order_labels_like_series(pngs, [30, 10, 20])
    assert [p.name for p in ordered] == ["liver_GT_10.png", "liver_GT_1.png", "liver_GT_2.png"]
    with pytest.raises(UdasegError, match="3 label PNGs for 2 image slices"):
        order_labels_like_series(pngs, [1, 2])
    with pytest.raises(UdasegError, match="repeat instance numbers"):
        order_labels_like_series(pngs, [1, 1, 2])


# --- PNG label stacks ----------------------------------------------------------------------------


def write_png(path: Path, grey: np.ndarray, mode: str = "L") -> Path:
    image = Image.fromarray(grey.astype(np.uint8), "L")
    if mode != "L":
        image = image.convert(mode)
    image.save(path)
    return path


@pytest.fixture
def reference() -> sitk.Image:
    image = sitk.Image(SIZE, SIZE, 3, sitk.sitkInt16)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((1.0, 2.0, 3.0))
    return image


def test_png_ranges_map_to_codes(tmp_path: Path, reference: sitk.Image):
    greys = [0, 60, 120, 190, 250]  # background, liver, right kidney, left kidney, spleen
    files = []
    for k, mode in enumerate(("L", "RGB", "RGBA")):
        grey = np.zeros((SIZE, SIZE), dtype=np.uint8)
        grey[k, :5] = greys
        files.append(write_png(tmp_path / f"IMG-0002-{k + 1:05d}.png", grey, mode))
    labels = read_png_label_stack(files, reference, CHAOS_MR_CODE_RANGES)
    array = sitk.GetArrayFromImage(labels)
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert array.shape == (3, SIZE, SIZE)
    for k in range(3):
        assert array[k, k, :5].tolist() == [0, 1, 2, 3, 4]
    assert array.sum() == 3 * 10
    assert labels.GetSpacing() == reference.GetSpacing()
    assert labels.GetOrigin() == reference.GetOrigin()


def test_png_out_of_range_value_names_file(tmp_path: Path, reference: sitk.Image):
    files = [write_png(tmp_path / f"p{k}.png", np.zeros((SIZE, SIZE))) for k in range(3)]
    grey = np.zeros((SIZE, SIZE))
    grey[3, 3] = 90
    write_png(files[1], grey)
    with pytest.raises(UdasegError, match=r"p1\.png.*90.*55-70 -> 1") as info:
        read_png_label_stack(files, reference, CHAOS_MR_CODE_RANGES)
    assert info.value.hint


def test_png_count_and_size_mismatch(tmp_path: Path, reference: sitk.Image):
    files = [write_png(tmp_path / f"p{k}.png", np.zeros((SIZE, SIZE))) for k in range(2)]
    with pytest.raises(UdasegError, match="2 label PNGs for 3 image slices"):
        read_png_label_stack(files, reference, CHAOS_MR_CODE_RANGES)
    files.append(write_png(tmp_path / "p2.png", np.zeros((SIZE, SIZE + 1))))
    with pytest.raises(
        UdasegError, match=r"p2\.png is 17x16 pixels but the image slices are 16x16"
    ):
        read_png_label_stack(files, reference, CHAOS_MR_CODE_RANGES)


def test_bad_code_ranges(tmp_path: Path, reference: sitk.Image):
    files = [write_png(tmp_path / f"p{k}.png", np.zeros((SIZE, SIZE))) for k in range(3)]
    with pytest.raises(UdasegError, match="overlap"):
        read_png_label_stack(files, reference, {1: (10, 20), 2: (20, 30)})
    with pytest.raises(UdasegError, match="label order"):
        read_png_label_stack(files, reference, {1: (1, 255)}, order="by-name")


def test_labels_follow_instance_numbers_not_positions(tmp_path: Path):
    """End to end: instance numbers run against position order; PNG k labels instance k."""
    distances = [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    instances = [4, 1, 6, 2, 5, 3]  # slice at distance 0 is the 4th instance, ...
    # names scrambled too, so neither name nor listing order reveals anything
    names = [f"IMG-0004-{n:05d}.dcm" for n in (2, 6, 1, 5, 3, 4)]
    write_series(tmp_path / "DICOM_anon", distances, names=names, instances=instances)
    image, files = read_dicom_series(tmp_path / "DICOM_anon")
    numbers = read_instance_numbers(files)
    assert numbers == instances  # position order was already ascending distance
    # PNG for instance i has grey 10 * i; names liver_GT_0, _4, _8, _12 ... sort wrongly as text
    ground = tmp_path / "Ground"
    ground.mkdir()
    pngs = [
        write_png(ground / f"liver_GT_{4 * (i - 1)}.png", np.full((SIZE, SIZE), 10 * i))
        for i in instances
    ]
    ranges = {i: (10 * i, 10 * i) for i in range(1, 7)}
    labels = read_png_label_stack(pngs[::-1], image, ranges, instance_numbers=numbers)
    assert sitk.GetArrayFromImage(labels)[:, 0, 0].tolist() == instances
    # without instance numbers PNG k goes to slice k (natural order)
    labels = read_png_label_stack(pngs, image, ranges)
    assert sitk.GetArrayFromImage(labels)[:, 0, 0].tolist() == [1, 2, 3, 4, 5, 6]
    # order="given" keeps the list as it is
    labels = read_png_label_stack(pngs, image, ranges, order="given")
    assert sitk.GetArrayFromImage(labels)[:, 0, 0].tolist() == instances
