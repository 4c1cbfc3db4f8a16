"""What label map values stand for: a dataset's codes (the inverse of a domain's label_map) and
udaseg's class ids, written and read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from udaseg.data.label_values import class_ids, dataset_codes, from_record
from udaseg.data.manifest import load_manifest
from udaseg.errors import UdasegError

HEART = """
name: heart
view: axial
classes: [myocardium, left_atrium, aorta]
domains:
  ct:
    modality: CT
    reader: nifti
    images: ct/{case}_image.nii.gz
    labels: ct/{case}_label.nii.gz
    label_map: {205: myocardium, 421: left_atrium, 420: left_atrium, 820: aorta, 550: background}
  mr:
    modality: MR
    reader: nifti
    images: mr/{case}_image.nii.gz
    labels: mr/{case}_label.nii.gz
    label_map: {205: myocardium, 420: left_atrium, 820: aorta}
  new:
    modality: MR2
    reader: nifti
    images: new/{case}_image.nii.gz
    labels: null
"""


def manifest(tmp_path: Path, text: str = HEART, **replace: str):
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return load_manifest(path)


def test_codes_are_the_inverse_of_the_label_map_with_the_smallest_code_per_class(tmp_path):
    codes = dataset_codes(manifest(tmp_path), "ct")
    assert codes.kind == "dataset-codes"
    table = {"background": 0, "myocardium": 205, "left_atrium": 420, "aorta": 820}
    assert codes.table() == table  # 420 and 421 are both left atrium: 420 is written
    assert codes.dtype == np.uint16 and not codes.is_class_ids  # 820 needs 16 bits
    ids = np.array([[0, 1], [2, 3]], np.uint8)
    np.testing.assert_array_equal(codes.encode(ids), [[0, 205], [420, 820]])
    # read back: every code the label_map knows, background-mapped ones as background
    read = codes.to_class_ids(np.array([0, 205, 420, 421, 820, 550]), "here")
    np.testing.assert_array_equal(read, [0, 1, 2, 2, 3, 0])
    assert read.dtype == np.uint8


def test_a_domain_without_a_label_map_takes_the_codes_its_dataset_shares(tmp_path):
    assert (
        dataset_codes(manifest(tmp_path), "new").table()
        == dataset_codes(manifest(tmp_path), "mr").table()
    )
    # the labelled domains disagree: which codes the unlabelled one means is unknown
    other = manifest(
        tmp_path, **{"{205: myocardium, 420: left_atrium, 820": "{1: myocardium, 2: left_atrium, 3"}
    )
    with pytest.raises(UdasegError, match="labelled domains' codes differ") as caught:
        dataset_codes(other, "new")
    assert "ct: 0 background, 205 myocardium" in caught.value.message
    assert dataset_codes(other, "mr").table()["aorta"] == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"820: aorta, 550": "550"}, "has no label code .* for aorta"),
        ({"205: myocardium, 421": "0: myocardium, 421"}, "maps code 0 to myocardium"),
    ],
)
def test_unavailable_codes_say_why(tmp_path, change, message):
    with pytest.raises(UdasegError, match=message):
        dataset_codes(manifest(tmp_path, **change), "ct")


def test_grey_level_ranges_are_no_codes():
    with pytest.raises(UdasegError, match="grey-level ranges"):
        dataset_codes(load_manifest("chaos"), "mr")


def test_the_builtin_abdominal_codes():
    abdomen = load_manifest("abdominal-normalized")
    ct, mr = dataset_codes(abdomen, "ct"), dataset_codes(abdomen, "mr")
    assert ct.table() == {
        "background": 0,
        "liver": 6,
        "right_kidney": 2,
        "left_kidney": 3,
        "spleen": 1,
    }
    assert list(mr.table().values()) == [0, 1, 2, 3, 4] and mr.is_class_ids
    assert ct.dtype == mr.dtype == np.uint8


def test_values_that_are_none_of_them_are_named(tmp_path):
    codes = dataset_codes(manifest(tmp_path), "mr")
    with pytest.raises(
        UdasegError,
        match=r"case c1: prediction p\.nii\.gz has values 7, 999 outside the label codes of "
        r"heart/mr \(0 background, 205 myocardium",
    ) as caught:
        codes.to_class_ids(
            np.array([0, 7, 205, 999]), "case c1: prediction p.nii.gz", path="p.nii.gz", hint="h"
        )
    assert caught.value.hint == "h" and str(caught.value.path) == "p.nii.gz"
    ids = class_ids(["a", "b"], "toy")
    with pytest.raises(
        UdasegError, match=r"values -1, 3 outside the class ids 0\.\.2 of dataset 'toy'"
    ):
        ids.to_class_ids(np.array([-1, 0, 3]), "x")
    np.testing.assert_array_equal(ids.to_class_ids(np.array([0.0, 2.0]), "x"), [0, 2])


def test_a_recorded_table_reads_by_class_name(tmp_path):
    """A predict run's record read with the classes of the manifest evaluating it."""
    written = dataset_codes(manifest(tmp_path), "ct").record()
    back = from_record(written, ["myocardium", "left_atrium", "aorta"], "run")
    assert back.table() == written["label_table"] and back.kind == "dataset-codes"
    np.testing.assert_array_equal(back.to_class_ids(np.array([820, 205]), "x"), [3, 1])
    # class ids recorded in another class order still read by name
    ids = class_ids(["aorta", "myocardium", "left_atrium"], "heart").record()
    reordered = from_record(ids, ["myocardium", "left_atrium", "aorta"], "run")
    np.testing.assert_array_equal(reordered.to_class_ids(np.array([1, 2, 3]), "x"), [3, 1, 2])
    assert from_record({}, ["a"], "old run") is None  # older runs recorded nothing: class ids
    with pytest.raises(UdasegError, match=r"run holds label maps of the classes \['myocardium'"):
        from_record(written, ["x", "y", "z"], "run")
