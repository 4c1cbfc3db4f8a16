"""Tests of the evaluate stage and ``udaseg evaluate`` on tiny synthetic label volumes.

Volumes are (S, H, W) = (8, 24, 24) arrays written as NIfTI with spacing (x, y, z) = (0.75, 0.875,
2.5) mm, so the array-order spacing given to the metrics is (2.5, 0.875, 0.75).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from udaseg import artifacts
from udaseg.cli import app, main
from udaseg.data.label_values import dataset_codes
from udaseg.data.manifest import load_manifest
from udaseg.data.store import StoreWriter
from udaseg.errors import UdasegError
from udaseg.evaluation.comparison import read_summary
from udaseg.evaluation.labels import GRID_HINT
from udaseg.metrics import evaluate_case, image_diagonal
from udaseg.stages import evaluate as stage

SHAPE = (8, 24, 24)
SPACING_XYZ = (0.75, 0.875, 2.5)  # exact in float32, as NIfTI stores it
SPACING_ZYX = SPACING_XYZ[::-1]
CASES = ("c1", "c2", "c10")

MANIFEST = """
name: toy
view: axial
classes: [a, b]
domains:
  src:
    modality: CT
    reader: nifti
    images: images/{case}_image.nii.gz
    labels: labels/{case}_label.nii.gz
    label_map: {10: a, 20: b, 5: background}
  tgt:
    modality: MR
    reader: nifti
    images: tgt/{case}_image.nii.gz
    labels: null
"""

TUMOUR_MANIFEST = """
name: tumour
view: axial
classes: [ncr, ed, et]
regions: {WT: [ncr, ed, et], TC: [ncr, et], ET: [et]}
domains:
  t1:
    modality: MR-T1
    reader: nifti
    images: "{case}/{case}_t1.nii.gz"
    labels: "{case}/{case}_seg.nii.gz"
    label_map: {1: ncr, 2: ed, 4: et}
"""


def put_box(array: np.ndarray, lo, hi, value: int) -> np.ndarray:
    array[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = value
    return array


def reference(i: int) -> np.ndarray:
    """Class 1 (a) and class 2 (b) boxes whose position depends on the case."""
    label = np.zeros(SHAPE, np.uint8)
    put_box(label, (1, 3 + i, 3), (6, 10 + i, 11), 1)
    return put_box(label, (2, 14, 12 + i), (7, 20, 20 + i), 2)


def prediction(i: int) -> np.ndarray:
    """The reference with shifted boxes and a stray blob, so every distance is non-trivial."""
    label = np.zeros(SHAPE, np.uint8)
    put_box(label, (1, 4 + i, 3), (7, 10 + i, 12), 1)
    put_box(label, (2, 15, 11 + i), (6, 20, 19 + i), 2)
    return put_box(label, (0, 0, 20), (1, 2, 22), 2)


def write(path: Path, array: np.ndarray, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


@pytest.fixture
def toy(tmp_path: Path) -> SimpleNamespace:
    """Predictions, class-id references and a raw dataset (codes 10/20/5) for CASES."""
    manifest = tmp_path / "toy.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    pred, ref, raw = tmp_path / "sifa_preds", tmp_path / "ref", tmp_path / "raw"
    for i, case in enumerate(CASES):
        write(pred / f"{case}.nii.gz", prediction(i))
        write(ref / f"{case}.nii.gz", reference(i))
        codes = np.choose(reference(i), [0, 10, 20]).astype(np.int16)
        codes[0, 0, 0] = 5  # a code the manifest maps to background
        write(raw / "labels" / f"{case}_label.nii.gz", codes)
        write(raw / "images" / f"{case}_image.nii.gz", np.ones(SHAPE, np.float32))
    return SimpleNamespace(
        tmp=tmp_path, manifest=manifest, pred=pred, ref=ref, raw=raw, work=tmp_path / "work"
    )


def config(toy: SimpleNamespace, **options) -> stage.EvaluateConfig:
    """The toy's evaluate config; its bare folder of predictions holds class ids."""
    return stage.EvaluateConfig(
        pred=options.pop("pred", toy.pred),
        ref=options.pop("ref", toy.ref),
        dataset=options.pop("dataset", str(toy.manifest)),
        pred_values=options.pop("pred_values", "class-ids"),
        **options,
    )


def read_csv(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {
            (row.pop("case"), row.pop("class")): {k: float(v) for k, v in row.items()}
            for row in csv.DictReader(handle)
        }


def expected(i: int, **options) -> dict[str, dict[str, float]]:
    options.setdefault("metrics", ("dice", "assd", "hd95"))
    return evaluate_case(
        prediction(i), reference(i), {"a": [1], "b": [2]}, spacing_mm=SPACING_ZYX, **options
    )


def assert_rows_equal(rows: dict, case: str, want: dict[str, dict[str, float]]) -> None:
    for name, scores in want.items():
        for metric, value in scores.items():
            got = rows[case, name][metric]
            assert got == value or (math.isnan(got) and math.isnan(value)), (case, name, metric)


def cli(*args: str) -> object:
    return CliRunner().invoke(app, ["evaluate", *args])


def exit_code_of(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run the console script's ``main`` (which turns UdasegError into an exit code)."""
    monkeypatch.setattr(sys, "argv", ["udaseg", "evaluate", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code, captured.out + captured.err


def toy_args(toy: SimpleNamespace, *extra: str) -> list[str]:
    return [
        "--pred", str(toy.pred), "--ref", str(toy.ref), "--pred-values", "class-ids",
        "--dataset", str(toy.manifest), "--work", str(toy.work), *extra,
    ]  # fmt: skip


# --- values -------------------------------------------------------------------------------------


def test_per_case_values_equal_evaluate_case(toy):
    manifest = stage.run(config(toy), toy.work)
    out = toy.work / "evaluate" / "sifa_preds"
    assert Path(manifest.summary["output"]) == out.resolve()
    rows = read_csv(out / "per_case.csv")
    assert list(dict.fromkeys(case for case, _ in rows)) == ["c1", "c2", "c10"]  # natural order
    for i, case in enumerate(CASES):
        assert_rows_equal(rows, case, expected(i))
    assert {"per_case.csv", "summary.json", "table.md"} <= set(manifest.outputs)


def test_voxel_unit_differs_from_mm_by_the_spacing(toy):
    stage.run(config(toy, name="mm"), toy.work)
    stage.run(config(toy, name="vox", unit="voxel"), toy.work)
    mm = read_csv(toy.work / "evaluate" / "mm" / "per_case.csv")
    vox = read_csv(toy.work / "evaluate" / "vox" / "per_case.csv")
    assert_rows_equal(vox, "c2", expected(1, unit="voxel"))
    for key in mm:
        assert mm[key]["dice"] == vox[key]["dice"]
        assert mm[key]["hd95"] != vox[key]["hd95"]
    # a shift of whole slices only: 1 voxel apart along S is 2.5 mm apart
    one = np.zeros(SHAPE, np.uint8)
    put_box(one, (2, 5, 5), (4, 9, 9), 1)
    shifted = np.roll(one, 1, axis=0)
    for unit, want in (("mm", 2.5), ("voxel", 1.0)):
        got = evaluate_case(
            shifted, one, {"a": [1]}, spacing_mm=SPACING_ZYX, unit=unit, metrics=["hd"]
        )
        assert got["a"]["hd"] == pytest.approx(want)


def test_raw_reference_codes_mapped_through_the_manifest(toy):
    manifest = stage.run(config(toy, ref=toy.raw, name="raw"), toy.work)
    assert manifest.summary["ref"]["kind"] == "raw"
    assert manifest.summary["domain"] == "src"  # the only labelled domain
    rows = read_csv(toy.work / "evaluate" / "raw" / "per_case.csv")
    for i, case in enumerate(CASES):
        assert_rows_equal(rows, case, expected(i))
    # a code the label_map does not know is an error naming the case
    codes = np.choose(reference(0), [0, 10, 20]).astype(np.int16)
    codes[3, 3, 3] = 99
    write(toy.raw / "labels" / "c1_label.nii.gz", codes)
    with pytest.raises(UdasegError, match=r"case c1: .*codes \[99\]"):
        stage.run(config(toy, ref=toy.raw, name="raw"), toy.work, force=True)


def test_regions_are_evaluated_as_unions(tmp_path):
    manifest = tmp_path / "tumour.yaml"
    manifest.write_text(TUMOUR_MANIFEST)
    ref_ids = np.zeros(SHAPE, np.uint8)
    put_box(ref_ids, (1, 4, 4), (7, 16, 16), 2)  # edema around
    put_box(ref_ids, (2, 6, 6), (6, 12, 12), 1)  # necrotic core
    put_box(ref_ids, (3, 7, 7), (5, 10, 10), 3)  # enhancing (class id 3 = raw code 4)
    pred = np.roll(ref_ids, 1, axis=2)
    write(tmp_path / "raw" / "p1" / "p1_seg.nii.gz", np.choose(ref_ids, [0, 1, 2, 4]))
    write(tmp_path / "raw" / "p1" / "p1_t1.nii.gz", np.ones(SHAPE, np.float32))
    write(tmp_path / "pred" / "p1.nii.gz", pred)
    config = stage.EvaluateConfig(
        tmp_path / "pred", tmp_path / "raw", str(manifest), pred_values="class-ids"
    )
    stage.run(config, tmp_path / "work")
    out = tmp_path / "work" / "evaluate" / "pred"
    regions = load_manifest(manifest).evaluation_classes()
    assert regions == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    want = evaluate_case(pred, ref_ids, regions, spacing_mm=SPACING_ZYX)
    assert_rows_equal(read_csv(out / "per_case.csv"), "p1", want)
    header = (out / "table.md").read_text(encoding="utf-8").splitlines()[2]
    assert header == "| Metric | WT | TC | ET | Mean |"


# --- empty masks --------------------------------------------------------------------------------


def test_empty_prediction_is_missing_not_a_crash(toy):
    write(toy.pred / "c2.nii.gz", np.where(prediction(1) == 2, 0, prediction(1)))
    manifest = stage.run(config(toy), toy.work)
    out = toy.work / "evaluate" / "sifa_preds"
    rows = read_csv(out / "per_case.csv")
    assert rows["c2", "b"]["dice"] == 0.0
    assert math.isnan(rows["c2", "b"]["assd"]) and math.isnan(rows["c2", "b"]["hd95"])
    summary = read_summary(out)
    assert summary == {k: v for k, v in manifest.summary.items() if k not in ("skipped", "seconds")}
    hd95_b = summary["per_class"]["b"]["hd95"]
    assert (hd95_b["n"], hd95_b["n_missing"]) == (2, 1)
    assert hd95_b["mean"] == pytest.approx(np.mean([rows[c, "b"]["hd95"] for c in ("c1", "c10")]))
    assert summary["mean_over_classes"]["hd95"]["n_missing_values"] == 1
    assert summary["per_class"]["b"]["dice"]["n_missing"] == 0
    assert "(1 missing)" in (out / "table.md").read_text(encoding="utf-8")


def test_class_empty_everywhere_shows_a_dash_and_diagonal_option(toy):
    for i, case in enumerate(CASES):
        write(toy.pred / f"{case}.nii.gz", np.where(prediction(i) == 2, 0, prediction(i)))
    stage.run(config(toy), toy.work)
    out = toy.work / "evaluate" / "sifa_preds"
    summary = read_summary(out)
    assert summary["per_class"]["b"]["assd"]["mean"] is None  # null in JSON, never NaN
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "| — |" in table and "(3 missing)" in table
    stage.run(config(toy, empty_distance="diagonal", name="diag"), toy.work)
    rows = read_csv(toy.work / "evaluate" / "diag" / "per_case.csv")
    assert rows["c1", "b"]["hd95"] == pytest.approx(image_diagonal(SHAPE, SPACING_ZYX))
    stage.run(config(toy, empty_distance="diagonal", unit="voxel", name="dv"), toy.work)
    rows = read_csv(toy.work / "evaluate" / "dv" / "per_case.csv")
    assert rows["c1", "b"]["assd"] == pytest.approx(math.sqrt(8**2 + 24**2 + 24**2))


def test_both_empty_is_perfect(toy):
    for case in CASES:
        write(toy.pred / f"{case}.nii.gz", np.zeros(SHAPE, np.uint8))
        write(toy.ref / f"{case}.nii.gz", np.zeros(SHAPE, np.uint8))
    manifest = stage.run(config(toy), toy.work)
    stats = manifest.summary["per_class"]["a"]
    assert stats["dice"]["mean"] == 1.0 and stats["hd95"]["mean"] == 0.0


# --- input errors -------------------------------------------------------------------------------


def test_geometry_mismatch_names_case_and_both_files(toy):
    write(toy.ref / "c2.nii.gz", reference(1), spacing=(1.0, 0.875, 2.5))
    with pytest.raises(UdasegError) as exc:
        stage.run(config(toy), toy.work)
    text = str(exc.value)
    assert "case c2" in text
    assert str(toy.pred / "c2.nii.gz") in text and str(toy.ref / "c2.nii.gz") in text
    assert "spacing [0.75, 0.875, 2.5]" in text and "spacing [1.0, 0.875, 2.5]" in text
    assert "original" in exc.value.hint
    write(toy.ref / "c2.nii.gz", reference(1), origin=(5.0, 0.0, 0.0))
    with pytest.raises(UdasegError, match="case c2: prediction and reference grids differ"):
        stage.run(config(toy), toy.work)


def test_unmatched_cases_are_listed_and_cases_selects_a_subset(toy):
    (toy.ref / "c10.nii.gz").unlink()
    write(toy.ref / "c7.nii.gz", reference(0))
    with pytest.raises(UdasegError) as exc:
        stage.run(config(toy), toy.work)
    assert "predictions without a reference: c10" in str(exc.value)
    assert "references without a prediction: c7" in str(exc.value)
    assert "--cases" in exc.value.hint
    (toy.pred / "c10.nii.gz").unlink()  # predictions for a subset: the hint names it
    with pytest.raises(UdasegError, match="references without a prediction: c7") as exc:
        stage.run(config(toy), toy.work)
    hint = "to evaluate just the predicted cases, pass --predicted-only (or --cases c1,c2)"
    assert exc.value.hint == hint
    # --predicted-only evaluates exactly those
    only = stage.run(dataclasses.replace(config(toy), predicted_only=True), toy.work)
    assert only.summary["cases"] == ["c1", "c2"]
    manifest = stage.run(config(toy, cases=["c2", "c1"]), toy.work)
    assert manifest.summary["cases"] == ["c1", "c2"]
    # the comma list of --cases is the same selection
    assert stage.run(config(toy, cases="c2, c1"), toy.work).summary["skipped"]
    with pytest.raises(UdasegError, match="not in the predictions .*: c7") as exc:
        stage.run(config(toy, cases=["c1", "c7"]), toy.work)
    assert exc.value.exit_code == 2


def test_raw_reference_with_several_labelled_domains_needs_domain(toy):
    # a second domain whose labels pattern finds the same files: which label_map applies?
    twin = """
  twin:
    modality: CT2
    reader: nifti
    images: images/{case}_image.nii.gz
    labels: labels/{case}_label.nii.gz
    label_map: {10: a, 20: b, 5: background}
"""
    toy.manifest.write_text(MANIFEST + twin)  # MANIFEST ends inside "domains:"
    with pytest.raises(UdasegError, match=r"several domains .*\(src, twin\)") as exc:
        stage.run(config(toy, ref=toy.raw), toy.work)
    assert exc.value.exit_code == 2 and "--domain" in exc.value.hint
    manifest = stage.run(config(toy, ref=toy.raw, domain="twin"), toy.work)
    assert manifest.summary["domain"] == "twin" and manifest.summary["ref"]["kind"] == "raw"


def test_prediction_values_outside_class_ids(toy):
    write(toy.pred / "c10.nii.gz", np.full(SHAPE, 3, np.uint8))
    with pytest.raises(UdasegError, match=r"case c10: prediction .* values 3 outside .* 0\.\.2"):
        stage.run(config(toy), toy.work)


def test_metric_names(toy, monkeypatch, capsys):
    assert stage.parse_metrics("hd95, ASD,dice") == ["dice", "asd", "hd95"]
    result = cli(*toy_args(toy, "--metric", "asd,hd", "--name", "asd"))
    assert result.exit_code == 0, result.output
    rows = read_csv(toy.work / "evaluate" / "asd" / "per_case.csv")
    assert_rows_equal(rows, "c1", expected(0, metrics=("asd", "hd")))
    code, output = exit_code_of(monkeypatch, capsys, *toy_args(toy, "--metric", "dice,dize"))
    assert code == 2
    assert 'unknown metric "dize" (did you mean "dice"?)' in output


def test_help_says_what_asd_means():
    result = CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.replace("│", " ").split())
    assert "ONE-directional mean surface distance pred -> ref, as medpy's asd" in text


# --- runtime ------------------------------------------------------------------------------------


def test_workers_give_the_serial_result(toy):
    stage.run(config(toy, name="serial"), toy.work)
    stage.run(config(toy, name="parallel", workers=2), toy.work)
    for name in ("per_case.csv", "table.md"):
        serial = (toy.work / "evaluate" / "serial" / name).read_text(encoding="utf-8")
        parallel = (toy.work / "evaluate" / "parallel" / name).read_text(encoding="utf-8")
        assert serial.replace("serial", "parallel") == parallel
    # an error in a worker comes back with its hint
    write(toy.ref / "c2.nii.gz", reference(1), spacing=(1.0, 0.875, 2.5))
    with pytest.raises(UdasegError, match="case c2") as exc:
        stage.run(config(toy, name="parallel", workers=2), toy.work)
    assert exc.value.hint == GRID_HINT


def test_rerun_is_skipped_unless_forced_or_changed(toy):
    first = stage.run(config(toy), toy.work)
    assert first.summary["skipped"] is False
    again = stage.run(config(toy, workers=2), toy.work)  # workers do not change results
    assert again.summary["skipped"] is True and again.created == first.created
    forced = stage.run(config(toy), toy.work, force=True)
    assert forced.summary["skipped"] is False
    changed = stage.run(config(toy, connectivity=2), toy.work)
    assert changed.summary["skipped"] is False
    write(toy.pred / "c1.nii.gz", reference(0))  # a new prediction file is noticed
    rerun = stage.run(config(toy, connectivity=2), toy.work)
    assert rerun.summary["skipped"] is False
    dice = [m.summary["per_class"]["a"]["dice"]["mean"] for m in (changed, rerun)]
    assert dice[1] > dice[0]


# --- table --------------------------------------------------------------------------------------


def test_table_layout(toy):
    manifest = stage.run(config(toy, metric="hd95,asd, dice,assd"), toy.work)
    lines = (
        (toy.work / "evaluate" / "sifa_preds" / "table.md").read_text(encoding="utf-8").splitlines()
    )
    assert lines[0].startswith("**sifa_preds: toy, 3 cases.**")
    assert "ASSD: pooled (medpy>=0.5.2), ASD: one-directional pred->ref" in lines[0]
    assert "HD95: pooled (medpy), connectivity 1, unit mm, empty: nan" in lines[0]
    assert lines[2] == "| Metric | a | b | Mean |"
    labels = [line.split("|")[1].strip() for line in lines[4:8]]
    assert labels == ["Dice", "ASSD (mm)", "ASD (mm)", "HD95 (mm)"]
    stats = manifest.summary["per_class"]["a"]["dice"]
    assert lines[4].split("|")[2].strip() == f"{stats['mean']:.3f} ± {stats['std']:.3f}"
    over = manifest.summary["mean_over_classes"]["hd95"]
    class_means = [manifest.summary["per_class"][c]["hd95"]["mean"] for c in ("a", "b")]
    assert over["mean"] == pytest.approx(np.mean(class_means))
    assert lines[7].split("|")[4].strip() == f"{over['mean']:.2f} ± {over['std']:.2f}"


# --- stores -------------------------------------------------------------------------------------


def make_store_artifact(folder: Path, labels: dict[str, np.ndarray], classes=("a", "b")) -> Path:
    """A preprocess-like artifact whose store holds ``labels`` with the toy NIfTI geometry."""
    identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    processed = {"spacing": list(SPACING_XYZ), "origin": [0.0] * 3, "direction": identity}
    with artifacts.building(folder) as tmp:
        with StoreWriter(
            tmp / "store.h5", dataset="toy", domain="src", modality="CT", view="axial",
            classes=classes, labelled=True,
        ) as writer:  # fmt: skip
            for case, label in labels.items():
                meta = {"processed": {**processed, "size": list(label.shape[::-1])}}
                writer.add_case(case, np.zeros(label.shape, np.float32), label, meta)
        artifacts.publish(tmp, folder, stage="preprocess", config={"dataset": "toy"})
    return folder


def test_store_as_reference_and_stale_store_refused(toy):
    store = make_store_artifact(
        toy.work / "preprocessed" / "toy__src", {c: reference(i) for i, c in enumerate(CASES)}
    )
    manifest = stage.run(config(toy, ref=store, name="vs_store"), toy.work)
    assert manifest.inputs["ref"]["stage"] == "preprocess"
    rows = read_csv(toy.work / "evaluate" / "vs_store" / "per_case.csv")
    for i, case in enumerate(CASES):
        assert_rows_equal(rows, case, expected(i))
    # a store of predictions against the store itself: perfect scores
    same = stage.run(config(toy, pred=store / "store.h5", ref=store, pred_values=None), toy.work)
    assert same.summary["run"] == "toy__src"
    assert same.summary["mean_over_classes"]["dice"]["mean"] == 1.0
    with pytest.raises(UdasegError, match="prediction store .* holds class ids") as caught:
        stage.run(config(toy, pred=store, ref=store, pred_values="dataset-codes"), toy.work)
    assert caught.value.exit_code == 2
    with open(store / "store.h5", "ab") as handle:  # the store changes after it was published
        handle.write(b"\0")
    with pytest.raises(artifacts.StaleInputError, match="rerun `udaseg preprocess toy`"):
        stage.run(config(toy, ref=store, name="vs_store"), toy.work)


def test_store_shape_mismatch_is_an_error(toy):
    small = {c: reference(i)[:, :20] for i, c in enumerate(CASES)}
    store = make_store_artifact(toy.tmp / "small_store", small)
    with pytest.raises(UdasegError, match=r"case c1: .*size \[24, 20, 8\]"):
        stage.run(config(toy, ref=store), toy.work)


def test_store_classes_must_match_the_dataset(toy):
    store = make_store_artifact(toy.tmp / "s", {"c1": reference(0)}, classes=("x", "y"))
    with pytest.raises(UdasegError, match="has classes"):
        stage.run(config(toy, ref=store, cases=["c1"]), toy.work)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_prints_the_table_and_json(toy):
    result = cli(*toy_args(toy))
    assert result.exit_code == 0, result.output
    assert "HD95 (mm)" in result.stdout and "Mean" in result.stdout
    again = cli(*toy_args(toy, "--json"))
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    out = toy.work / "evaluate" / "sifa_preds"
    assert summary.pop("skipped") is True  # the second call found it current
    summary.pop("seconds")
    assert summary == read_summary(out)
    assert summary["options"] == {
        "metrics": ["dice", "assd", "hd95"], "unit": "mm", "hd95": "pooled", "assd": "pooled",
        "connectivity": 1, "empty_distance": "nan",
    }  # fmt: skip
    assert set(summary["definitions"]) == {"dice", "assd", "hd95"}


def test_cli_errors_exit_non_zero(toy, monkeypatch, capsys):
    write(toy.ref / "c2.nii.gz", reference(1), spacing=(1.0, 0.875, 2.5))
    code, output = exit_code_of(monkeypatch, capsys, *toy_args(toy))
    assert code == 1 and "case c2" in output
    code, output = exit_code_of(monkeypatch, capsys, *toy_args(toy, "--hd95", "pooed"))
    assert code == 2 and 'did you mean "pooled"' in output
    code, output = exit_code_of(monkeypatch, capsys, *toy_args(toy, "--connectivity", "4"))
    assert code == 2 and "--connectivity 4" in output


# --- what prediction files hold: class ids or the dataset's codes -------------------------------

CODES = np.array([0, 10, 20], np.int16)  # the toy src domain's codes of a and b, by class id


def write_codes(folder: Path) -> Path:
    """The toy's predictions as the dataset's own codes."""
    for i, case in enumerate(CASES):
        write(folder / f"{case}.nii.gz", CODES[prediction(i)])
    return folder


def fake_predict_run(toy: SimpleNamespace, name: str, summary: dict, codes: bool) -> Path:
    """A `udaseg predict` artifact holding the toy's predictions, recording ``summary``."""
    out = toy.work / "predict" / name
    with artifacts.building(out) as tmp:
        for i, case in enumerate(CASES):
            write(tmp / f"{case}.nii.gz", CODES[prediction(i)] if codes else prediction(i))
        artifacts.publish(tmp, out, stage="predict", config={"name": name}, summary=summary)
    return out


def test_codes_and_class_ids_of_one_prediction_score_the_same(toy):
    ids = stage.run(config(toy, name="ids"), toy.work)
    codes = write_codes(toy.tmp / "codes")
    coded = config(toy, pred=codes, pred_values="dataset-codes", domain="src", name="codes")
    as_codes = stage.run(coded, toy.work)
    assert as_codes.summary["pred"]["label_values"] == "dataset-codes"
    assert as_codes.summary["pred"]["label_table"] == {"background": 0, "a": 10, "b": 20}
    assert ids.summary["pred"]["label_values"] == "class-ids"
    assert as_codes.summary["per_class"] == ids.summary["per_class"]
    rows = read_csv(toy.work / "evaluate" / "codes" / "per_case.csv")
    assert rows == read_csv(toy.work / "evaluate" / "ids" / "per_case.csv")
    # the codes of a raw reference's domain, found without --domain
    raw = stage.run(
        config(toy, pred=codes, ref=toy.raw, pred_values="dataset-codes", name="raw"), toy.work
    )
    assert raw.summary["per_class"] == ids.summary["per_class"]
    # a code the manifest maps to background is read as background
    with_five = CODES[prediction(0)]
    with_five[0, 0, 0] = 5
    write(codes / "c1.nii.gz", with_five)
    five = stage.run(
        config(toy, pred=codes, pred_values="dataset-codes", domain="src", name="five"), toy.work
    )
    assert five.summary["per_class"] == ids.summary["per_class"]


def test_a_value_that_is_neither_fails_naming_the_file_and_the_value(toy):
    codes = write_codes(toy.tmp / "codes")
    bad = CODES[prediction(1)]
    bad[2, 2, 2] = 15
    write(codes / "c2.nii.gz", bad)
    where = re.escape(str(codes / "c2.nii.gz"))
    with pytest.raises(UdasegError, match=rf"case c2: prediction {where} has values 15 outside "
                       r"the label codes of toy/src \(0 background, 10 a, 20 b\)"):  # fmt: skip
        stage.run(config(toy, pred=codes, pred_values="dataset-codes", domain="src"), toy.work)
    # codes read as class ids: the hint says how to read them
    with pytest.raises(UdasegError, match=r"values 10, 20 outside the class ids 0\.\.2") as caught:
        stage.run(config(toy, pred=codes, cases=["c1"]), toy.work)
    assert "--pred-values dataset-codes" in caught.value.hint


def test_a_bare_folder_needs_pred_values(toy, monkeypatch, capsys):
    with pytest.raises(UdasegError, match="is no `udaseg predict` run") as caught:
        stage.run(config(toy, pred_values=None), toy.work)
    assert caught.value.exit_code == 2 and "--pred-values class-ids" in caught.value.hint
    args = [a for a in toy_args(toy) if a not in ("--pred-values", "class-ids")]
    code, output = exit_code_of(monkeypatch, capsys, *args)
    assert code == 2 and "--pred-values" in output
    code, output = exit_code_of(monkeypatch, capsys, *args, "--pred-values", "codes")
    assert code == 2 and 'unknown --pred-values "codes"' in output
    # the codes of which domain? toy's tgt has none of its own: it takes src's, the only ones
    with_tgt = config(
        toy, pred=write_codes(toy.tmp / "c"), pred_values="dataset-codes", domain="tgt"
    )
    assert stage.run(with_tgt, toy.work).summary["n_cases"] == 3


def test_a_predict_run_says_what_it_holds(toy):
    ids = stage.run(config(toy, name="ids"), toy.work)
    codes = dataset_codes(load_manifest(toy.manifest), "src")
    run = fake_predict_run(toy, "coded", codes.record(), codes=True)
    read = stage.run(config(toy, pred=run, pred_values=None), toy.work)
    assert read.summary["per_class"] == ids.summary["per_class"]
    assert read.inputs["pred"]["stage"] == "predict"
    agreeing = stage.run(config(toy, pred=run, pred_values="dataset-codes"), toy.work)
    assert agreeing.summary["per_class"] == ids.summary["per_class"]
    with pytest.raises(
        UdasegError, match="--pred-values class-ids, but predict run .* wrote dataset-codes"
    ) as caught:
        stage.run(config(toy, pred=run), toy.work)
    assert caught.value.exit_code == 2
    # a run from before predict recorded its values wrote class ids
    old = fake_predict_run(toy, "old", {"cases": 3}, codes=False)
    before = stage.run(config(toy, pred=old, pred_values=None), toy.work)
    assert before.summary["per_class"] == ids.summary["per_class"]


def test_a_stale_predict_run_names_the_command_that_rebuilds_it(toy):
    old = toy.work / "predict" / "stale"
    with artifacts.building(old) as tmp:
        for i, case in enumerate(CASES):
            write(tmp / f"{case}.nii.gz", prediction(i))
        # predict records dataset None when it read a store: not an argument of the rerun
        config_record = {"name": "stale", "dataset": None}
        artifacts.publish(tmp, old, stage="predict", config=config_record, summary={"cases": 3})
    with open(old / f"{CASES[0]}.nii.gz", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(artifacts.StaleInputError, match=r"rerun `udaseg predict`") as caught:
        stage.run(config(toy, pred=old, pred_values=None), toy.work)
    assert "None" not in str(caught.value.hint)
