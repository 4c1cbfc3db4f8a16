"""`udaseg export nnunet`: stores as an nnU-Net v2 raw dataset (layout, dataset.json, geometry,
ignore label, folds, refusals), on tiny stores written in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from udaseg import artifacts, layout
from udaseg.cli import app
from udaseg.config.export_nnunet import ExportNnunetConfig
from udaseg.data.geometry import canonical_direction
from udaseg.data.store import IGNORE_LABEL, StoreWriter
from udaseg.errors import UdasegError
from udaseg.stages import export_nnunet

CLASSES = ["organ_a", "organ_b"]
SHAPE = (4, 6, 5)  # (S, H, W)


def _case(seed: int, *, ignored: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """A random (S, H, W) image, a label with both classes (and 255s), and a meta whose grid
    differs per case (spacing, origin and a non-identity direction, x-y-z order)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=SHAPE).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[1:3, 1:3, 1:3] = 1
    label[2:4, 4:6, 3:5] = 2
    if ignored:
        label[0, 0, :] = IGNORE_LABEL
    meta = {
        "processed": {
            "size": list(SHAPE[::-1]),
            "spacing": [0.75 + 0.1 * seed, 0.8, 2.5],
            "origin": [-10.5 + seed, 20.25, 3.0],
            "direction": list(canonical_direction("coronal")),
        }
    }
    return image, label, meta


def make_store(
    work: Path,
    folder: str,
    name: str,
    stage: str,
    cases: dict[str, tuple],
    splits: dict[str, list[str]],
    *,
    labelled: bool = True,
    domain: str = "src",
    classes: list[str] = CLASSES,
) -> Path:
    """Publish ``W/<folder>/<name>/`` holding a store of ``cases`` (id -> image, label, meta)
    and ``splits.json``, as made by ``stage``; returns the folder."""
    out = layout.run_dir(work, folder, name)
    with artifacts.building(out, discard_on_error=True) as tmp:
        with StoreWriter(
            tmp / layout.STORE,
            dataset="tiny",
            domain=domain,
            modality="MR",
            view="coronal",
            classes=classes,
            labelled=labelled,
        ) as writer:
            for case, (image, label, meta) in cases.items():
                writer.add_case(case, image, label if labelled else None, meta)
        (tmp / layout.SPLITS).write_text(json.dumps(splits))
        artifacts.publish(tmp, out, stage=stage, config={"name": name})
    return out


def translated(work: Path, name: str = "tr") -> Path:
    """Two source cases (c0 train, c1 val, c2 test) in two styles each."""
    cases = {}
    for i in range(3):
        for k in range(2):
            image, label, meta = _case(i)
            meta.update(source_case=f"c{i}", style_index=k)
            cases[f"c{i}__style{k}"] = (image + k, label, meta)
    splits = {
        "train": ["c0__style0", "c0__style1"],
        "val": ["c1__style0", "c1__style1"],
        "test": ["c2__style0", "c2__style1"],
    }
    return make_store(work, layout.TRANSLATED, name, "translate-apply", cases, splits)


def pseudo(work: Path, *, ignored: bool = True, name: str = "pl") -> Path:
    cases = {f"m{i}": _case(10 + i, ignored=ignored) for i in range(2)}
    splits = {"train": list(cases), "val": [], "test": []}
    return make_store(work, layout.PSEUDO, name, "pseudo-label", cases, splits, domain="tgt")


def target(work: Path) -> Path:
    """An unlabelled preprocessed target store: m0, m1 train, t0, t1 test."""
    cases = {c: _case(20 + i) for i, c in enumerate(["m0", "m1", "t0", "t1"])}
    splits = {"train": ["m0", "m1"], "val": [], "test": ["t0", "t1"]}
    return make_store(
        work,
        layout.PREPROCESSED,
        "tiny__tgt",
        "preprocess",
        cases,
        splits,
        labelled=False,
        domain="tgt",
    )


def export(work: Path, **options) -> artifacts.Manifest:
    return export_nnunet.run(ExportNnunetConfig(**options), work)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


# --- the dataset nnU-Net reads -----------------------------------------------------------------


def test_the_export_has_nnunet_v2s_raw_dataset_layout(tmp_path):
    work = tmp_path / "w"
    result = export(work, train=[translated(work)], target=target(work), name="tiny")
    out = work / "export" / "nnunet" / "Dataset501_tiny"
    assert Path(result.summary["output"]).resolve() == out.resolve()
    assert result.stage == "export-nnunet"
    cases = ["c0__style0", "c0__style1", "c1__style0", "c1__style1"]  # train,val: no test cases
    assert names(out / "imagesTr") == [f"{c}_0000.nii.gz" for c in cases]
    assert names(out / "labelsTr") == [f"{c}.nii.gz" for c in cases]
    assert names(out / "imagesTs") == ["t0_0000.nii.gz", "t1_0000.nii.gz"]
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "noNorm"}
    assert dataset["labels"] == {"background": 0, "organ_a": 1, "organ_b": 2}
    assert dataset["numTraining"] == len(names(out / "imagesTr")) == 4
    assert dataset["file_ending"] == ".nii.gz"
    assert result.summary["files"] == {"imagesTr": 4, "labelsTr": 4, "imagesTs": 2}
    assert set(result.inputs) == {"train0", "target"}
    assert not artifacts.partial_dir(out).exists()


def test_images_and_labels_keep_the_store_values_and_its_geometry(tmp_path):
    work = tmp_path / "w"
    export(work, train=[translated(work)], target=target(work), name="tiny")
    out = work / "export" / "nnunet" / "Dataset501_tiny"
    image, label, meta = _case(1)
    grid = meta["processed"]
    for path, array, dtype in (
        (out / "imagesTr" / "c1__style1_0000.nii.gz", image + 1, np.float32),
        (out / "labelsTr" / "c1__style1.nii.gz", label, np.uint8),
    ):
        written = read(path)
        assert written.GetSize() == tuple(grid["size"])
        assert np.allclose(written.GetSpacing(), grid["spacing"], atol=1e-6)
        assert np.allclose(written.GetOrigin(), grid["origin"], atol=1e-5)
        assert np.allclose(written.GetDirection(), grid["direction"], atol=1e-6)
        values = sitk.GetArrayFromImage(written)
        assert values.dtype == dtype and np.array_equal(values, array)
    test_image, _, test_meta = _case(22)  # t0
    written = read(out / "imagesTs" / "t0_0000.nii.gz")
    assert np.allclose(written.GetOrigin(), test_meta["processed"]["origin"], atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(written), test_image)


def test_ignored_pseudo_label_voxels_become_nnunets_ignore_label(tmp_path):
    work = tmp_path / "w"
    result = export(work, train=[pseudo(work)], name="pl")
    out = Path(result.summary["output"])
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "organ_a": 1, "organ_b": 2, "ignore": 3}
    written = sitk.GetArrayFromImage(read(out / "labelsTr" / "m0.nii.gz"))
    _, label, _ = _case(10, ignored=True)
    assert (written[label == IGNORE_LABEL] == 3).all()
    assert np.array_equal(written[label != IGNORE_LABEL], label[label != IGNORE_LABEL])
    # one row of 255s per case, two cases
    assert written.max() == 3 and result.summary["ignored_voxels"] == 2 * SHAPE[2]


def test_no_ignore_label_without_ignored_voxels(tmp_path):
    work = tmp_path / "w"
    result = export(work, train=[pseudo(work, ignored=False)], name="pl")
    assert "ignore" not in result.summary["labels"]


def test_folds_keep_every_style_copy_of_a_patient_together(tmp_path):
    work = tmp_path / "w"
    result = export(work, train=[translated(work)], train_split="all", name="tiny")
    splits = json.loads((Path(result.summary["output"]) / "splits_final.json").read_text())
    assert len(splits) == result.summary["folds"] == 3  # three patients: fewer than 5 folds
    exported = names(Path(result.summary["output"]) / "labelsTr")
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == sorted(n[: -len(".nii.gz")] for n in exported)
        patients = {c.split("__")[0] for c in fold["val"]}
        assert all(c.split("__")[0] not in patients for c in fold["train"])


def test_several_stores_get_their_folder_name_before_the_case(tmp_path):
    work = tmp_path / "w"
    result = export(work, train=[translated(work), pseudo(work)], name="both")
    out = Path(result.summary["output"])
    assert names(out / "labelsTr") == [
        "pl__m0.nii.gz",
        "pl__m1.nii.gz",
        "tr__c0__style0.nii.gz",
        "tr__c0__style1.nii.gz",
        "tr__c1__style0.nii.gz",
        "tr__c1__style1.nii.gz",
    ]
    cases = json.loads((out / "udaseg_cases.json").read_text())["imagesTr"]
    assert cases["pl__m1"] == {
        "input": "train1",
        "case": "m1",
        "patient": "m1",
        "ignored_voxels": SHAPE[2],
    }
    assert "ignore" in result.summary["labels"]  # the pseudo-labels' 255s


def test_the_default_name_is_the_stores_dataset_and_domain(tmp_path):
    work = tmp_path / "w"
    result = export(work, train=[translated(work)], dataset_id=7)
    assert result.summary["dataset"] == "Dataset007_tiny_src"


def test_a_current_export_is_skipped_and_force_rebuilds_it(tmp_path):
    work = tmp_path / "w"
    config = ExportNnunetConfig(train=[pseudo(work)], name="pl")
    export_nnunet.run(config, work)
    assert export_nnunet.run(config, work).summary["skipped"]
    assert not export_nnunet.run(config, work, force=True).summary["skipped"]


# --- refusals ---------------------------------------------------------------------------------


def refused(work: Path, match: str, **options) -> UdasegError:
    with pytest.raises(UdasegError, match=match) as caught:
        export(work, **options)
    assert caught.value.exit_code == 2
    return caught.value


def test_an_unfinished_input_folder_is_refused(tmp_path):
    work = tmp_path / "w"
    store = pseudo(work)
    partial = artifacts.partial_dir(store)
    store.rename(partial)
    refused(work, r"--train .*unfinished", train=[partial], name="x")
    partial.rename(store)
    (store / layout.MANIFEST).unlink()
    refused(work, r"--train .* not a finished udaseg artifact", train=[store], name="x")


def test_a_store_without_labels_is_refused_for_imagestr(tmp_path):
    work = tmp_path / "w"
    error = refused(work, "has no labels", train=[target(work)], name="x")
    assert "--target" in error.hint


def test_a_target_that_is_no_preprocessed_store_is_refused(tmp_path):
    work = tmp_path / "w"
    refused(work, r"--target .* is not a store", train=[pseudo(work)], target=translated(work))


@pytest.mark.parametrize(
    ("name", "match"),
    [("my-data", "not an nnU-Net dataset name"), ("Dataset501_x", "whole nnU-Net folder name")],
)
def test_a_name_nnunet_cannot_take_is_refused(tmp_path, name, match):
    work = tmp_path / "w"
    refused(work, match, train=[pseudo(work)], name=name)


def test_ct_normalization_is_refused_and_a_typo_is_named(tmp_path):
    work = tmp_path / "w"
    store = pseudo(work)
    refused(work, "no longer|Hounsfield", train=[store], normalization="CT")
    refused(work, 'did you mean "noNorm"', train=[store], normalization="nonorm")


def test_an_id_another_export_has_is_refused(tmp_path):
    work = tmp_path / "w"
    store = pseudo(work)
    export(work, train=[store], name="first")
    refused(work, "--dataset-id 501 is taken", train=[store], name="second")


def test_a_split_without_cases_is_refused(tmp_path):
    work = tmp_path / "w"
    refused(work, "--train-split test", train=[pseudo(work)], train_split="test")


def test_stores_of_other_classes_are_refused(tmp_path):
    work = tmp_path / "w"
    cases = {"x0": _case(0)}
    other = make_store(
        work,
        layout.PSEUDO,
        "other",
        "pseudo-label",
        cases,
        {"train": ["x0"], "val": []},
        classes=["liver"],
    )
    refused(work, "has classes", train=[pseudo(work), other])


def test_a_class_named_like_an_nnunet_label_is_refused(tmp_path):
    work = tmp_path / "w"
    cases = {"x0": _case(0)}
    splits = {"train": ["x0"], "val": []}
    store = make_store(
        work, layout.PSEUDO, "odd", "pseudo-label", cases, splits, classes=["ignore", "b"]
    )
    refused(work, "class named 'ignore'", train=[store])


def test_a_clashing_case_name_is_refused(tmp_path):
    work = tmp_path / "w"
    # two stores of one folder name (in different stage folders) holding the same case id
    one = pseudo(work, name="pl")
    two = make_store(
        work,
        layout.PREPROCESSED,
        "pl",
        "preprocess",
        {"m0": _case(0)},
        {"train": ["m0"], "val": []},
    )
    refused(work, 'both export case "pl__m0"', train=[one, two])


# --- the command line -------------------------------------------------------------------------


def test_the_command_prints_a_json_summary_with_counts_per_folder(tmp_path):
    work = tmp_path / "w"
    store, tgt = pseudo(work), target(work)
    args = ["export", "nnunet", "--train", str(store), "--target", str(tgt), "--work", str(work)]
    result = CliRunner().invoke(app, [*args, "--name", "pl", "--dataset-id", "502", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["files"] == {"imagesTr": 2, "labelsTr": 2, "imagesTs": 2}
    assert summary["dataset"] == "Dataset502_pl"
    assert Path(summary["output"]).resolve() == (work / "export/nnunet/Dataset502_pl").resolve()
    text = CliRunner().invoke(app, [*args, "--name", "pl", "--dataset-id", "502"])
    printed = " ".join(text.stdout.split())  # the terminal may wrap the line anywhere
    assert "up to date" in printed and "nnUNetv2_plan_and_preprocess -d 502" in printed
    bad = CliRunner().invoke(app, [*args, "--name", "a b"])
    assert isinstance(bad.exception, UdasegError) and bad.exception.exit_code == 2
