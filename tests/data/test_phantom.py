"""Tests of udaseg.data.phantom: layouts, geometry, codes, determinism and the modality gap.

Volumes are read back with SimpleITK, as the pipeline's readers do; numpy arrays are (z, y, x).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from udaseg.data import phantom
from udaseg.data.phantom import (
    BTCV_CT_LABELS,
    CARDIAC_LABELS,
    CHAOS_MR_LABELS,
    SIZES,
    write_phantom,
)
from udaseg.errors import UdasegError

CT_DIR, MR_DIR = "sabs_CT_normalized", "chaos_MR_T2_normalized"
MAIN = ("liver", "spleen", "kidney_r", "kidney_l")
LAS = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # the MR header (and the CT's true layout)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def abdomen_cases(root: Path, summary: dict):
    """Yield (domain, case id, image array, label array, image, label image, organ codes)."""
    for dom, folder, codes in (("ct", CT_DIR, BTCV_CT_LABELS), ("mr", MR_DIR, CHAOS_MR_LABELS)):
        for cid in summary["case_ids"][dom]:
            img, img_itk = read(root / folder / f"image_{cid}.nii.gz")
            lab, lab_itk = read(root / folder / f"label_{cid}.nii.gz")
            yield dom, cid, img, lab, img_itk, lab_itk, codes


def interior_mean(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the organ without its in-plane rim (partial volume would blur the contrast)."""
    core = ndimage.binary_erosion(mask, np.ones((1, 3, 3), bool))
    return float(image[core if core.sum() >= 5 else mask].mean())


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory):
    root = tmp_path_factory.mktemp("abdomen")
    summary = write_phantom("abdomen", root, seed=0, size="tiny")
    return root, summary, list(abdomen_cases(root, summary))


@pytest.fixture(scope="module")
def cardiac(tmp_path_factory):
    root = tmp_path_factory.mktemp("cardiac")
    return root, write_phantom("cardiac", root, seed=0, size="tiny")


# --- layout, geometry, codes ----------------------------------------------------------------------


def test_abdomen_layout_and_summary(abdomen):
    root, summary, _ = abdomen
    assert summary["task"] == "abdomen" and summary["layout"] == "abdominal-normalized"
    assert summary["n_cases"] == {"ct": 3, "mr": 3}
    assert summary["case_ids"]["ct"] == [0, 1, 2]
    assert len(set(summary["case_ids"]["mr"])) == 3
    for dom, folder in (("ct", CT_DIR), ("mr", MR_DIR)):
        for cid in summary["case_ids"][dom]:
            for kind in ("image", "label"):
                assert f"{folder}/{kind}_{cid}.nii.gz" in summary["files"]
    on_disk = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert on_disk == sorted(summary["files"])
    saved = json.loads((root / "phantom.json").read_text())
    assert saved == summary
    text = (root / "PHANTOM.md").read_text()
    assert "abdomen" in text and "seed: 0" in text and "6 liver" in text and "4 spleen" in text


def test_abdomen_geometry_dtypes_and_codes(abdomen):
    _, _, cases = abdomen
    ct_codes = set()
    for dom, cid, img, lab, img_itk, lab_itk, _ in cases:
        for attr in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert np.allclose(getattr(img_itk, attr)(), getattr(lab_itk, attr)()), (dom, cid, attr)
        if dom == "ct":
            assert img.dtype == np.uint8 and lab.dtype == np.float32
            assert np.allclose(img_itk.GetDirection(), IDENTITY)
            assert np.allclose(img_itk.GetOrigin(), 0.0)
            assert img.max() > 200  # windowed to the full 0..255 range (bone saturates)
            ct_codes |= set(np.unique(lab).tolist())
        else:
            assert img.dtype == np.float64 and lab.dtype == np.float64
            assert np.allclose(img_itk.GetDirection(), LAS)  # y flipped relative to the CT
            assert np.abs(img_itk.GetOrigin()).max() > 1.0
            assert img.min() >= 0.0 and 500.0 < img.max() < 1500.0
            assert set(np.unique(lab).tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}
    assert ct_codes <= {0.0, *map(float, BTCV_CT_LABELS.values())}
    assert {1.0, 2.0, 3.0, 6.0, 7.0, 8.0} <= ct_codes  # organs and distractors (stomach, aorta)


def test_abdomen_resolution_and_field_of_view_differ(abdomen):
    _, _, cases = abdomen
    ct = [c for c in cases if c[0] == "ct"]
    mr = [c for c in cases if c[0] == "mr"]
    for _, _, _, lab, img_itk, _, codes in ct:
        sx, _, sz = img_itk.GetSpacing()
        assert sx < min(m[4].GetSpacing()[0] for m in mr)
        assert sz < min(m[4].GetSpacing()[2] for m in mr)
        cover = sz * lab.shape[0]
        assert cover > max(m[4].GetSpacing()[2] * m[3].shape[0] for m in mr)
        organs = np.isin(lab, [codes[o] for o in MAIN]).any(axis=(1, 2))
        assert not organs.all()  # CT has organ-free slices above or below the organs


def test_every_main_organ_present_plausible_and_inside(abdomen):
    _, _, cases = abdomen
    for dom, cid, _, lab, img_itk, _, codes in cases:
        voxel_ml = np.prod(img_itk.GetSpacing()) / 1000.0
        for organ in MAIN:
            mask = lab == codes[organ]
            volume = mask.sum() * voxel_ml
            # nominal volumes (ml; the phantom is ~0.7x adult size): liver ~74, others ~8-10
            low, high = (25, 250) if organ == "liver" else (2, 40)
            assert low < volume < high, (dom, cid, organ, volume)
            idx = np.argwhere(mask)
            assert (idx.min(0) > 0).all() and (idx.max(0) < np.array(lab.shape) - 1).all(), (
                dom, cid, organ, "touches the volume border",
            )  # fmt: skip


def test_orientation_matches_the_real_files(abdomen):
    """As in the real SSL-ALPNet files, both arrays are stored LAS (row 0 posterior, column 0
    patient right): the MR header says so, the CT header wrongly claims LPS, so taken at its word
    it puts the kidneys in front of the liver (hence the manifest's assume_orientation: LAS)."""
    _, _, cases = abdomen
    for dom, cid, _, lab, _, lab_itk, codes in cases:
        centre = {o: ndimage.center_of_mass(lab == codes[o]) for o in MAIN}  # (z, y, x) indices
        assert centre["liver"][2] < centre["spleen"][2], (dom, cid)  # liver on the image left
        assert centre["kidney_r"][2] < centre["kidney_l"][2], (dom, cid)
        assert centre["liver"][0] > min(centre["kidney_r"][0], centre["kidney_l"][0])  # superior
        # physical y (mm, LPS: +y posterior) of each centre, as the header has it
        y = {
            o: lab_itk.TransformContinuousIndexToPhysicalPoint(c[::-1])[1]
            for o, c in centre.items()
        }
        for kidney in ("kidney_r", "kidney_l"):
            assert centre[kidney][1] < centre["liver"][1], (dom, cid, kidney)  # posterior on top
            assert (y[kidney] > y["liver"]) == (dom == "mr"), (dom, cid, kidney)


def test_built_in_manifest_reads_the_phantom_upright(abdomen, tmp_path):
    """The phantom goes through the very preprocessing real data does (the built-in manifest,
    its orientation fix included) and comes out with the same anatomy checks as real files."""
    from udaseg.data.store import Store
    from udaseg.stages import preprocess

    root, _, _ = abdomen
    config = preprocess.PreprocessConfig(dataset="abdominal-normalized", raw=root)
    preprocess.run(config, tmp_path / "w")
    for dom in ("ct", "mr"):
        store = Store(tmp_path / "w" / "preprocessed" / f"abdominal-normalized__{dom}" / "store.h5")
        for case in store.case_ids:
            label = store.label(case)  # canonical axial (S, H, W), class ids 1..4
            centre = {k: np.argwhere(label == k).mean(0) for k in (1, 2, 3, 4)}
            kidneys = (centre[2] + centre[3]) / 2
            assert kidneys[1] > centre[1][1], (dom, case)  # kidneys posterior to the liver
            assert centre[1][2] < centre[4][2], (dom, case)  # liver on the image left
            assert centre[1][0] > kidneys[0], (dom, case)  # liver above the kidneys


# --- the modality gap ----------------------------------------------------------------------------


def test_organ_contrast_ordering_is_reversed_between_ct_and_mr(abdomen):
    _, _, cases = abdomen
    for dom, cid, img, lab, _, _, codes in cases:
        mean = {o: interior_mean(img.astype(float), lab == codes[o]) for o in MAIN}
        kidney = min(mean["kidney_r"], mean["kidney_l"]), max(mean["kidney_r"], mean["kidney_l"])
        if dom == "ct":  # liver > spleen > kidneys
            assert mean["liver"] > mean["spleen"] > kidney[1], (cid, mean)
        else:  # kidneys > spleen > liver
            assert kidney[0] > mean["spleen"] > mean["liver"], (cid, mean)


def test_mr_has_a_bias_field_and_ct_does_not(abdomen):
    """Mean liver intensity differs between its left and right halves in MR (smooth multiplicative
    bias), hardly at all in CT."""
    _, _, cases = abdomen
    asymmetry = {"ct": [], "mr": []}
    for dom, _, img, lab, _, _, codes in cases:
        liver = ndimage.binary_erosion(lab == codes["liver"], np.ones((1, 3, 3), bool))
        cols = np.arange(img.shape[2])[None, None, :]
        split = np.median(np.argwhere(liver)[:, 2])
        left, right = img[liver & (cols < split)].mean(), img[liver & (cols > split)].mean()
        asymmetry[dom].append(abs(left - right) / (0.5 * (left + right)))
    ct, mr = np.mean(asymmetry["ct"]), np.mean(asymmetry["mr"])
    assert mr > 0.03 and mr > 3 * ct, asymmetry


def test_mr_background_is_rician_and_ct_fat_is_dark(abdomen):
    """MR air is positive (magnitude of complex noise), CT air is exactly 0 after windowing."""
    _, _, cases = abdomen
    for dom, _, img, _, _, _, _ in cases:
        corner = img[:, :4, :4]
        if dom == "mr":
            assert corner.min() >= 0.0 and 5.0 < corner.mean() < 60.0
        else:
            assert corner.max() == 0


# --- determinism ---------------------------------------------------------------------------------


def arrays(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): read(p)[0] for p in sorted(root.rglob("*.nii.gz"))}


def test_same_seed_same_arrays_other_seed_different(tmp_path):
    first = write_phantom("abdomen", tmp_path / "a", seed=3, n_cases=1, size="tiny")
    write_phantom("abdomen", tmp_path / "b", seed=3, n_cases=1, size="tiny")
    write_phantom("abdomen", tmp_path / "c", seed=4, n_cases=1, size="tiny")
    a, b, c = (arrays(tmp_path / name) for name in "abc")
    assert len(a) == 4 and a.keys() == b.keys() == c.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert all(not np.array_equal(a[k], c[k]) for k in a)
    geometry = [read(tmp_path / d / f)[1].GetSpacing() for d in "ab" for f in first["files"][:1]]
    assert geometry[0] == geometry[1]


def test_adding_cases_keeps_earlier_cases(tmp_path):
    write_phantom("cardiac", tmp_path / "one", seed=1, n_cases=1, size="tiny")
    write_phantom("cardiac", tmp_path / "two", seed=1, n_cases=2, size="tiny")
    one, two = arrays(tmp_path / "one"), arrays(tmp_path / "two")
    assert len(two) == 8 and all(np.array_equal(one[k], two[k]) for k in one)


# --- cardiac --------------------------------------------------------------------------------------


def test_cardiac_layout_dtypes_and_codes(cardiac):
    root, summary = cardiac
    assert summary["layout"] == "mmwhs" and summary["case_ids"]["ct"] == [1001, 1002, 1003]
    codes = set(CARDIAC_LABELS.values())
    for dom, label_dtype, (lo, hi) in (
        ("ct", np.uint16, (-1000, 1500)),
        ("mr", np.int16, (0, 2000)),
    ):
        for cid in summary["case_ids"][dom]:
            img, img_itk = read(root / f"{dom}_train" / f"{dom}_train_{cid}_image.nii.gz")
            lab, lab_itk = read(root / f"{dom}_train" / f"{dom}_train_{cid}_label.nii.gz")
            assert img.dtype == np.int16 and lab.dtype == label_dtype
            assert lo <= img.min() and img.max() <= hi
            assert np.allclose(img_itk.GetOrigin(), lab_itk.GetOrigin())
            assert img_itk.GetSize() == lab_itk.GetSize()
            assert set(np.unique(lab).tolist()) == {0, *codes}, (dom, cid)
            lv, myo = lab == CARDIAC_LABELS["lv"], lab == CARDIAC_LABELS["myo"]
            # the LV cavity sits inside the myocardium: most of its rim is myocardium
            rim = ndimage.binary_dilation(lv, np.ones((1, 3, 3), bool)) & ~lv
            assert myo[rim].mean() > 0.5, (dom, cid)
            assert img[lv].mean() > img[myo].mean()  # bright blood pool, darker muscle
            for name in ("lv", "myo", "la"):
                idx = np.argwhere(lab == CARDIAC_LABELS[name])
                assert (idx.min(0) > 0).all() and (idx.max(0) < np.array(lab.shape) - 1).all()


# --- errors, files on disk ----------------------------------------------------------------------


def test_unknown_task_names_it_and_suggests(tmp_path):
    with pytest.raises(UdasegError, match=r'"abdomn".*did you mean "abdomen"'):
        write_phantom("abdomn", tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "kwargs, pattern",
    [({"size": "huge"}, "phantom size"), ({"n_cases": 0}, "n_cases"), ({"seed": -1}, "seed")],
)
def test_bad_options_are_user_errors(tmp_path, kwargs, pattern):
    with pytest.raises(UdasegError, match=pattern):
        write_phantom("cardiac", tmp_path, **kwargs)


def test_no_temporary_files_left(tmp_path):
    write_phantom("cardiac", tmp_path, n_cases=1, size="tiny")
    names = [p.name for p in tmp_path.rglob("*")]
    assert not [n for n in names if n.startswith(".") or ".tmp" in n], names


def test_interrupted_write_leaves_no_partial_files(tmp_path, monkeypatch):
    real_write, calls = sitk.WriteImage, []

    def flaky(image, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # die mid-file, leaving bytes under the temporary name
            Path(path).write_bytes(b"\x1f\x8b half a volume")
            raise KeyboardInterrupt
        real_write(image, path, *args, **kwargs)

    monkeypatch.setattr(phantom.sitk, "WriteImage", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_phantom("abdomen", tmp_path, n_cases=2, size="tiny")
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["phantom.json", f"{CT_DIR}/image_0.nii.gz", f"{CT_DIR}/label_0.nii.gz"]
    assert json.loads((tmp_path / "phantom.json").read_text())["complete"] is False
    for name in files[1:]:  # the volumes that made it are complete
        assert read(tmp_path / name)[0].shape == (SIZES["tiny"].ct_slices, 48, 48)
    monkeypatch.undo()  # a rerun recognises its own unfinished folder and completes it
    summary = write_phantom("abdomen", tmp_path, n_cases=1, size="tiny")
    assert summary["complete"] and not (tmp_path / CT_DIR / "image_1.nii.gz").exists()


def test_rewrite_removes_stale_cases_and_refuses_foreign_data(tmp_path):
    write_phantom("abdomen", tmp_path / "ph", n_cases=2, size="tiny")
    write_phantom("abdomen", tmp_path / "ph", n_cases=1, size="tiny")
    assert not (tmp_path / "ph" / CT_DIR / "image_1.nii.gz").exists()
    assert (tmp_path / "ph" / CT_DIR / "image_0.nii.gz").exists()
    real = tmp_path / "real" / CT_DIR
    real.mkdir(parents=True)
    (real / "image_0.nii.gz").write_bytes(b"precious")
    with pytest.raises(UdasegError, match="refusing to overwrite"):
        write_phantom("abdomen", tmp_path / "real", size="tiny")
    assert (real / "image_0.nii.gz").read_bytes() == b"precious"


def test_small_size_matrix(tmp_path):
    summary = write_phantom("abdomen", tmp_path, n_cases=1)
    assert summary["size"] == "small" and SIZES["small"].n_cases == 6
    assert read(tmp_path / CT_DIR / "image_0.nii.gz")[0].shape == (48, 96, 96)
    mr_id = summary["case_ids"]["mr"][0]
    assert read(tmp_path / MR_DIR / f"image_{mr_id}.nii.gz")[0].shape == (16, 96, 96)


def test_command_line_writes_the_asked_number_of_cases(tmp_path, monkeypatch, capsys):
    """`--n-cases` reaches the generator (the hint for a bad count names it), and the manifest
    records it, so a phantom of another size is not mistaken for the current one."""
    from udaseg.cli import main

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["udaseg", "phantom", "--out", str(tmp_path), *args])
        with pytest.raises(SystemExit) as exc:
            main()
        captured = capsys.readouterr()
        return exc.value.code, captured.out + captured.err

    code, out = run("--size", "tiny", "--n-cases", "2", "--json")
    assert code in (0, None)
    summary = json.loads(out)
    assert summary["n_cases"] == {"ct": 2, "mr": 2} and summary["cases"] == 4
    assert "cases 2" in (tmp_path / "dataset.yaml").read_text(encoding="utf-8")
    code, out = run("--size", "tiny", "--n-cases", "1", "--json")
    assert json.loads(out)["n_cases"] == {"ct": 1, "mr": 1}
    assert not (tmp_path / "sabs_CT_normalized" / "image_1.nii.gz").exists()  # stale case removed
    code, out = run("--size", "tiny", "--n-cases", "0")
    assert code == 2 and "--n-cases" in out
    assert (tmp_path / "dataset.yaml").is_file()  # a refused option leaves the phantom alone
