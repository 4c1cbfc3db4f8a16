"""Preprocessing on real files from ../shared/data (skipped where that folder is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import require_shared
from udaseg.data.store import Store
from udaseg.stages import preprocess

pytestmark = pytest.mark.realdata


def _link(raw, pairs):
    for name, target in pairs.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).symlink_to(target)


def _anatomy(store: Store, case: str) -> tuple[bool, bool, bool]:
    """(kidneys posterior to liver, liver on the image's left of the spleen, liver superior to
    kidneys) on the (S, H, W) canonical axial grid."""
    label = store.label(case)
    centre = {k: np.argwhere(label == k).mean(0) for k in (1, 2, 3, 4)}
    kidneys = (centre[2] + centre[3]) / 2
    return (kidneys[1] > centre[1][1], centre[1][2] < centre[4][2], centre[1][0] > kidneys[0])


def test_real_abdominal_ct_and_mr_face_the_same_way(tmp_path):
    """The SSL-ALPNet CT headers say LPS, the MR headers LAS; after preprocessing both show the
    kidneys behind the liver, the liver on the image's left and above the kidneys."""
    source = require_shared("abdominal")
    raw = tmp_path / "raw"
    pairs = {}
    for folder, ids in (("sabs_CT_normalized", (1, 5)), ("chaos_MR_T2_normalized", (2, 5))):
        for case in ids:
            for kind in ("image", "label"):
                name = f"{folder}/{kind}_{case}.nii.gz"
                pairs[name] = source / name
    _link(raw, pairs)
    config = preprocess.PreprocessConfig(
        dataset="abdominal-normalized",
        raw=raw,
        overrides=["geometry.inplane_mm=2.5", "geometry.inplane_size=[128, 128]"],
    )
    results = preprocess.run(config, tmp_path / "w")
    assert [m.summary["cases"] for m in results] == [2, 2]
    for domain, cases in (("ct", ["1", "5"]), ("mr", ["2", "5"])):
        path = tmp_path / "w" / "preprocessed" / f"abdominal-normalized__{domain}" / "store.h5"
        store = Store(path)
        assert store.case_ids == cases
        for case in cases:
            assert _anatomy(store, case) == (True, True, True), (domain, case)
            image = store.image(case)
            assert image.shape[1:] == (128, 128) and -1 <= image.min() < image.max() <= 1
            assert set(np.unique(store.label(case))) == {0, 1, 2, 3, 4}


def test_sifa_tfrecords_preprocess(tmp_path):
    source = require_shared("sifa_mmwhs_examples")
    config = preprocess.PreprocessConfig(dataset="sifa-tfrecords", raw=source)
    results = preprocess.run(config, tmp_path / "w")
    assert [m.summary["cases"] for m in results] == [2, 2]
    store = Store(tmp_path / "w" / "preprocessed" / "sifa-tfrecords__mr" / "store.h5")
    assert store.case_ids == ["training", "validation"]
    image, label = store.image("training"), store.label("training")
    assert image.shape == (3, 256, 256) and label.shape == (3, 256, 256)
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4} and label.max() == 4
    expected = np.load(source / "example.npz")["arr_0"]  # the same record in SIFA's npz form
    np.testing.assert_allclose(image[1], expected[..., 1], atol=1e-6)


def test_totalseg_examples_through_a_custom_manifest(tmp_path):
    """A user's own NIfTI pairs (CT stored RAS, MR stored LPS) through a short custom manifest."""
    source = require_shared("totalseg_examples")
    raw = tmp_path / "raw"
    _link(
        raw,
        {
            "ct_image.nii.gz": source / "example_ct_sm.nii.gz",
            "ct_label.nii.gz": source / "example_seg.nii.gz",
            "mr_image.nii.gz": source / "example_mr_sm.nii.gz",
            "mr_label.nii.gz": source / "example_seg_mr.nii.gz",
        },
    )
    manifest = tmp_path / "mine.yaml"
    manifest.write_text(
        "extends: custom\nname: totalseg\nclasses: [liver, right_kidney, left_kidney, spleen]\n"
        "domains:\n  source:\n    images: '{case}_image.nii.gz'\n"
        "    labels: '{case}_label.nii.gz'\n"
        "    label_map: {1: spleen, 2: right_kidney, 3: left_kidney, 5: liver}\n"
        "    other_codes: background\n"
        "  target:\n    images: '{case}_image.nii.gz'\n"
    )
    config = preprocess.PreprocessConfig(dataset=str(manifest), raw=raw, domain=["source"])
    assert preprocess.run(config, tmp_path / "w")[0].summary["cases"] == 2
    store = Store(tmp_path / "w" / "preprocessed" / "totalseg__source" / "store.h5")
    assert store.meta("ct")["original"]["orientation"] == "RAS"
    assert store.meta("mr")["original"]["orientation"] == "LPS"
    for case in ("ct", "mr"):
        assert store.meta(case)["processed"]["orientation"] == "LPS"
        assert _anatomy(store, case) == (True, True, True), case
