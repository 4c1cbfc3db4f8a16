"""`udaseg preprocess` on tiny synthetic datasets: outputs, geometry, reruns, shards, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import tiny_volume, write_nifti
from udaseg.data.geometry import restore_label
from udaseg.data.store import Store
from udaseg.errors import UdasegError
from udaseg.stages import preprocess


def run(raw, manifest, work, **kwargs):
    force = kwargs.pop("force", False)
    config = preprocess.PreprocessConfig(dataset=str(manifest), raw=raw, **kwargs)
    return preprocess.run(config, work, force=force)


def test_store_layout_index_splits_and_fingerprint(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    results = run(raw, manifest, tmp_path / "w")
    assert [m.summary["domain"] for m in results] == ["src", "tgt"]
    out = tmp_path / "w" / "preprocessed" / "tiny__src"
    assert {p.name for p in out.iterdir()} == {
        "store.h5",
        "splits.json",
        "fingerprint.json",
        "manifest.json",
    }
    store = Store(out / "store.h5")
    assert store.case_ids == ["c0", "c1", "c2", "c3"] and store.labelled
    assert store.classes == ["organ_a", "organ_b"] and store.view == "axial"
    image, label = store.image("c0"), store.label("c0")
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape[1:] == (24, 24)
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert set(np.unique(label)) == {0, 1, 2}  # 5 -> 1, 7 -> 2, distractor 9 -> background
    index = store.index()
    assert len(index["case"]) == sum(store.image(c).shape[0] for c in store.case_ids)
    k = int(np.argmax(index["foreground"]))
    case_id = store.case_ids[index["case"][k]]
    assert index["foreground"][k] == (store.label(case_id)[index["slice"][k]] > 0).sum()
    splits = json.loads((out / "splits.json").read_text())
    assert splits["test"] == ["c3"] and len(splits["val"]) == 1 and len(splits["train"]) == 2
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["cases"] == 4 and fingerprint["class_voxels_total"][1] > 0
    target = Store(tmp_path / "w" / "preprocessed" / "tiny__tgt" / "store.h5")
    assert not target.labelled and target.label("m0") is None
    assert (target.index()["foreground"] == -1).all()
    # plain h5py reads it
    with h5py.File(out / "store.h5") as f:
        assert f["cases/c1/image"].chunks[0] == 1
        assert json.loads(f["cases/c1"].attrs["meta"])["original"]["size"] == [32, 28, 10]


def test_domains_face_the_same_way_whatever_their_direction_matrix(tmp_path):
    """The same anatomy stored LPS and stored with a flipped y axis (LAS) comes out identical."""
    image, label = tiny_volume(0)
    raw = tmp_path / "raw"
    write_nifti(image, raw / "src" / "a_image.nii.gz")
    write_nifti(label, raw / "src" / "a_label.nii.gz")
    flipped = dict(origin=(0.0, 27 * 1.5, 0.0), direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))
    write_nifti(image[:, ::-1].copy(), raw / "src" / "b_image.nii.gz", **flipped)
    write_nifti(label[:, ::-1].copy(), raw / "src" / "b_label.nii.gz", **flipped)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "extends: custom\nname: flip\nclasses: [organ_a, organ_b]\ndomains:\n  source:\n"
        "    images: src/{case}_image.nii.gz\n    labels: src/{case}_label.nii.gz\n"
        "    label_map: {5: organ_a, 7: organ_b, 9: background}\n"
        "  target: {images: 'src/{case}_image.nii.gz'}\ngeometry: {crop: {method: none}}\n"
    )
    run(raw, manifest, tmp_path / "w", domain=["source"])
    store = Store(tmp_path / "w" / "preprocessed" / "flip__source" / "store.h5")
    np.testing.assert_array_equal(store.label("a"), store.label("b"))
    np.testing.assert_allclose(store.image("a"), store.image("b"), atol=1e-6)


def test_labels_go_back_onto_the_original_grid(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    run(raw, manifest, tmp_path / "w", domain=["src"])
    store = Store(tmp_path / "w" / "preprocessed" / "tiny__src" / "store.h5")
    meta = store.meta("c1")
    restored = restore_label(store.label("c1"), meta["processed"], meta["original"])
    original = sitk.ReadImage(str(raw / "src" / "c1_label.nii.gz"))
    assert restored.GetSize() == original.GetSize()
    assert np.allclose(restored.GetDirection(), original.GetDirection())
    want = np.isin(sitk.GetArrayFromImage(original), [5])
    got = sitk.GetArrayFromImage(restored) == 1
    dice = 2 * (want & got).sum() / (want.sum() + got.sum())
    assert dice > 0.9  # resampled 1.5 mm -> 2 mm -> 1.5 mm, so not voxel-exact


def test_rerun_skips_unless_forced_or_changed(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    work = tmp_path / "w"
    first = run(raw, manifest, work, domain=["src"])[0]
    again = run(raw, manifest, work, domain=["src"], workers=3)[0]
    assert again.summary["skipped"] and again.config_hash == first.config_hash
    forced = run(raw, manifest, work, domain=["src"], force=True)[0]
    assert not forced.summary["skipped"]
    changed = run(raw, manifest, work, domain=["src"], overrides=["geometry.inplane_mm=3.0"])[0]
    assert not changed.summary["skipped"] and changed.config_hash != first.config_hash
    # the overrides as --set gives them (a dict of YAML values) are the same overrides
    same = run(raw, manifest, work, domain="src", overrides={"geometry.inplane_mm": 3.0})[0]
    assert same.summary["skipped"] and same.config_hash == changed.config_hash
    write_nifti(tiny_volume(7)[0], raw / "src" / "c0_image.nii.gz")  # raw data changed
    assert not run(raw, manifest, work, domain=["src"], overrides=["geometry.inplane_mm=3.0"])[
        0
    ].summary["skipped"]


def test_parallel_workers_and_shards_give_the_same_store(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    run(raw, manifest, tmp_path / "serial", domain=["src"])
    run(raw, manifest, tmp_path / "parallel", domain=["src"], workers=2)
    for i in range(2):
        run(raw, manifest, tmp_path / "sharded", domain=["src"], shard=(i, 2))
    merged = run(raw, manifest, tmp_path / "sharded", domain=["src"], merge_shards=True)[0]
    assert merged.summary["cases"] == 4
    # an unsharded run finds the merged store current, so the stages after it stay current too
    assert run(raw, manifest, tmp_path / "sharded", domain=["src"])[0].summary["skipped"]
    stores = [
        Store(tmp_path / w / "preprocessed" / "tiny__src" / "store.h5")
        for w in ("serial", "parallel", "sharded")
    ]
    for store in stores[1:]:
        assert store.case_ids == stores[0].case_ids
        for case in store.case_ids:
            np.testing.assert_array_equal(store.image(case), stores[0].image(case))
            np.testing.assert_array_equal(store.label(case), stores[0].label(case))
        np.testing.assert_array_equal(store.index()["slice"], stores[0].index()["slice"])


def test_shard_text_is_checked_like_the_command_line(tiny_dataset):
    raw, manifest = tiny_dataset
    config = preprocess.PreprocessConfig(dataset=str(manifest), raw=raw, shard="1/3")
    assert config.shard == (1, 3) and config.domain == []
    for text, match in (("1-3", "must look like i/n"), ("3/3", "need 0 <= i < n")):
        with pytest.raises(UdasegError, match=match) as caught:
            preprocess.PreprocessConfig(dataset=str(manifest), raw=raw, shard=text)
        assert caught.value.exit_code == 2


def test_merge_refuses_missing_shards(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    run(raw, manifest, tmp_path / "w", domain=["src"], shard=(0, 3))
    with pytest.raises(UdasegError, match="shards missing: .*shard-1-of-3"):
        run(raw, manifest, tmp_path / "w", domain=["src"], merge_shards=True)


def _expect_failure(raw, manifest, work, match, domains=("src",)):
    with pytest.raises(UdasegError, match=match):
        run(raw, manifest, work, domain=list(domains))
    out = work / "preprocessed" / f"tiny__{domains[0]}"
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_missing_label_file(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    (raw / "src" / "c2_label.nii.gz").unlink()
    _expect_failure(raw, manifest, tmp_path / "w", r"case c2 \(src\): label 'src/c2_label")


def test_missing_images_and_raw_folder(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    _expect_failure(tmp_path / "nowhere", manifest, tmp_path / "w", "raw data folder .* not exist")
    _expect_failure(raw / "src", manifest, tmp_path / "w", "no src images matching")


def test_geometry_mismatch(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    write_nifti(tiny_volume(1)[1], raw / "src" / "c1_label.nii.gz", spacing=(1.0, 1.5, 3.0))
    _expect_failure(raw, manifest, tmp_path / "w", "case c1: image and label grids differ")


def test_unknown_label_codes(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    label = tiny_volume(2)[1]
    label[0, 0, 0] = 42
    write_nifti(label, raw / "src" / "c2_label.nii.gz")
    _expect_failure(raw, manifest, tmp_path / "w", r"case c2: label .*c2_label.* codes \[42\]")


def test_nan_intensities(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    image = tiny_volume(0)[0]
    image[3, 4, 5] = np.nan
    write_nifti(image, raw / "src" / "c0_image.nii.gz")
    _expect_failure(raw, manifest, tmp_path / "w", "case c0: image .*c0_image.* 1 NaN/Inf")


def test_truncated_file(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    path = raw / "src" / "c1_image.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    _expect_failure(
        raw, manifest, tmp_path / "w", "case c1: image: cannot read .*c1_image.*truncated"
    )


def test_empty_volume(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    write_nifti(np.zeros((10, 28, 32), np.float32), raw / "src" / "c3_image.nii.gz")
    _expect_failure(raw, manifest, tmp_path / "w", "case c3: image .*c3_image.* is constant")


def test_cli_reports_errors_with_nonzero_exit_and_json(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    cli = [sys.executable, "-m", "udaseg"]
    bad = subprocess.run(
        [*cli, "preprocess", "no-such-set", "--raw", str(raw), "--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert bad.returncode == 2 and 'unknown dataset "no-such-set"' in bad.stderr
    good = subprocess.run(
        [
            *cli,
            "preprocess",
            str(manifest),
            "--raw",
            str(raw),
            "--work",
            str(tmp_path / "w"),
            "--json",
            "--domain",
            "tgt",
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert good.returncode == 0, good.stderr
    summary = json.loads(good.stdout)
    assert summary["domain"] == "tgt" and summary["cases"] == 3
