"""The MS-CMRSeg-layout phantom: files, headers, contrast, and the built-in manifest reading it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from udaseg.data.anatomy import disagreements, short_axis_layout
from udaseg.data.geometry import restore_label
from udaseg.data.phantom import MSCMR_LABELS, write_phantom
from udaseg.data.store import Store
from udaseg.stages import phantom as phantom_stage
from udaseg.stages import preprocess

CODES = {200, 500, 600}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("mscmr")
    return root, write_phantom("mscmrseg", root, seed=0, size="tiny")


def _files(root, summary):
    for folder, dom in (("C0", "c0"), ("LGE", "lge")):
        for cid in summary["case_ids"][dom]:
            image = sitk.ReadImage(str(root / folder / f"patient{cid}_{folder}.nii.gz"))
            label = sitk.ReadImage(str(root / folder / f"patient{cid}_{folder}_manual.nii.gz"))
            yield dom, cid, image, label


def test_layout_ids_dtypes_and_codes(phantom):
    root, summary = phantom
    assert summary["layout"] == "mscmrseg"
    assert summary["case_ids"] == {"c0": [1, 2, 3], "lge": [1, 6, 7]}
    on_disk = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert on_disk == sorted(summary["files"])
    assert "C0/patient2_C0_manual.nii.gz" in on_disk and "LGE/patient6_LGE.nii.gz" in on_disk
    assert "200 myo" in (root / "PHANTOM.md").read_text()
    for dom, cid, image, label in _files(root, summary):
        assert image.GetPixelID() == sitk.sitkFloat32 and label.GetPixelID() == sitk.sitkInt16
        assert image.GetSize() == label.GetSize() and image.GetSize()[:2] == (48, 48)
        np.testing.assert_allclose(image.GetDirection(), label.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(label)).tolist()) == {0, *CODES}, (dom, cid)


def test_headers_are_oblique_and_mixed_like_the_release(phantom):
    """Nearest body axes PSR and LSP (as the real files) and one transposed storage per domain;
    the C0 headers overstate the in-plane spacing 1/0.6 times, as the release's do."""
    root, summary = phantom
    codes = {"c0": [], "lge": []}
    for dom, _, image, _ in _files(root, summary):
        direction = np.reshape(image.GetDirection(), (3, 3))
        assert np.abs(direction).max() < 0.95  # oblique: no axis along a body axis
        codes[dom].append(sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
            image.GetDirection()))  # fmt: skip
        fov = image.GetSpacing()[0] * image.GetSize()[0]
        assert fov == pytest.approx(144.0 / 0.6 if dom == "c0" else 144.0, rel=1e-6)
    for dom, found in codes.items():
        assert found[:2] == ["PSR", "LSP"] and found[2] not in ("PSR", "LSP"), (dom, found)


def test_contrast_of_the_two_sequences(phantom):
    """bSSFP: bright blood, dark myocardium; LGE: myocardium nulled below the blood pool, with
    scar patches brighter than the blood."""
    root, summary = phantom
    for dom, cid, image, label in _files(root, summary):
        img, lab = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
        core = ndimage.binary_erosion(lab == MSCMR_LABELS["lv"], np.ones((1, 3, 3), bool))
        lv, myo = img[core].mean(), np.median(img[lab == MSCMR_LABELS["myo"]])
        if dom == "c0":
            assert img.min() >= 0.0 and img.max() <= 1.0
            assert lv > 2 * myo, (cid, lv, myo)
        else:
            assert img.max() < 0.6 and myo < 0.5 * lv, (cid, lv, myo)
            assert np.percentile(img[lab == MSCMR_LABELS["myo"]], 99) > lv, cid


def test_the_mscmrseg_manifest_reads_the_phantom_the_same_way_round(phantom, tmp_path):
    """Preprocessed with the built-in manifest unchanged, every case -- PSR, LSP and transposed,
    C0 and LGE -- has its RV on the image left of the LV and basal to it; read in the files' own
    axis order instead, the transposed cases disagree (the check can fail)."""
    root, summary = phantom
    preprocess.run(preprocess.PreprocessConfig(dataset="mscmrseg", raw=root), tmp_path / "w")
    layouts, stored_order = {}, {}
    for dom in ("c0", "lge"):
        store = Store(tmp_path / "w" / "preprocessed" / f"mscmrseg__{dom}" / "store.h5")
        for case in store.case_ids:
            label = store.label(case)
            assert label.shape[1:] == (128, 128) and set(np.unique(label)) == {0, 1, 2, 3}
            x, y, z = store.meta(case)["processed"]["spacing"]
            layouts[f"{dom}/{case}"] = short_axis_layout(label, (z, y, x), myo=1, lv=2, rv=3)
        splits = json.loads((store.path.parent / "splits.json").read_text())
        if dom == "lge":
            assert splits["val"] == ["1"] and splits["train"] == ["6", "7"]
        else:
            assert splits["train"] == ["1", "2", "3"] and splits["val"] == []
    assert all(layout.key == ("W", -1, 1) for layout in layouts.values()), layouts
    assert disagreements(layouts, min_myo_around_lv=0.8) == {}
    for dom, cid, _, label in _files(root, summary):
        x, y, z = label.GetSpacing()
        array = np.isin(sitk.GetArrayFromImage(label), [200, 500, 600]) * np.searchsorted(
            [0, 200, 500, 600], sitk.GetArrayFromImage(label)
        )
        stored_order[f"{dom}/{cid}"] = short_axis_layout(array, (z, y, x), myo=1, lv=2, rv=3)
    assert set(disagreements(stored_order)) == {"c0/3", "lge/7"}


def test_labels_go_back_onto_the_files_voxel_for_voxel(phantom, tmp_path):
    """Reorientation, the C0 spacing correction, resampling and crop are undone exactly: each
    stored label, written back onto its file's grid, equals the file's label (class ids)."""
    root, summary = phantom
    preprocess.run(preprocess.PreprocessConfig(dataset="mscmrseg", raw=root), tmp_path / "w")
    for dom, cid, _, label in _files(root, summary):
        store = Store(tmp_path / "w" / "preprocessed" / f"mscmrseg__{dom}" / "store.h5")
        meta = store.meta(str(cid))
        assert ("assumed_spacing" in meta["original"]) == (dom == "c0")
        restored = restore_label(
            store.label(str(cid)), meta["processed"], meta["original"], meta["assumed_direction"]
        )
        assert restored.GetSpacing() == label.GetSpacing()
        expected = np.searchsorted([0, 200, 500, 600], sitk.GetArrayFromImage(label))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(restored), expected)


def test_c0_spacing_correction_brings_both_sequences_to_one_scale(phantom, tmp_path):
    """The LV of a C0 case measures like an LGE case's once the manifest's spacing factor is
    applied, and 1.67x larger without it."""
    root, _ = phantom

    def lv_diameter(overrides) -> dict[str, float]:
        work = tmp_path / str(len(overrides))
        config = preprocess.PreprocessConfig(dataset="mscmrseg", raw=root, overrides=overrides)
        preprocess.run(config, work)
        out = {}
        for dom in ("c0", "lge"):
            store = Store(work / "preprocessed" / f"mscmrseg__{dom}" / "store.h5")
            x, y, _ = store.meta(store.case_ids[0])["processed"]["spacing"]
            area = (store.label(store.case_ids[0]) == 2).sum(axis=(1, 2)).max() * x * y
            out[dom] = 2.0 * float(np.sqrt(area / np.pi))
        return out

    fixed = lv_diameter([])
    assert 0.75 < fixed["c0"] / fixed["lge"] < 1.33, fixed
    header = lv_diameter(["domains.c0.assume_spacing_scale=null"])
    assert header["c0"] / header["lge"] > 1.3 * fixed["c0"] / fixed["lge"], header


def test_phantom_stage_writes_a_manifest_that_extends_mscmrseg(tmp_path):
    from udaseg.config.phantom import PhantomConfig

    summary = phantom_stage.run(PhantomConfig(out=tmp_path, task="mscmrseg", size="tiny"))
    assert summary["cases"] == 6
    text = (tmp_path / "dataset.yaml").read_text(encoding="utf-8")
    assert "extends: mscmrseg" in text and "phantom-mscmrseg" in text
    made = preprocess.run(
        preprocess.PreprocessConfig(dataset=str(tmp_path / "dataset.yaml"), raw=tmp_path),
        tmp_path / "w",
    )
    assert [m.summary["cases"] for m in made] == [3, 3]
    store = Store(tmp_path / "w" / "preprocessed" / "phantom-mscmrseg__lge" / "store.h5")
    assert store.view == "short-axis" and store.image(store.case_ids[0]).shape[1:] == (64, 64)
