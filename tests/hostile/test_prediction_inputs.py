"""What `udaseg predict` (and `evaluate`) take as input: a model knows how its training data was
preprocessed and raw scans are preprocessed exactly so; unfinished folders, empty shards and
case ids that are no plain file names are refused before anything is written."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from tests.conftest import TINY_MANIFEST, require_shared, write_tiny_dataset
from udaseg import artifacts, layout
from udaseg.cli import main
from udaseg.data.manifest import apply_overrides
from udaseg.data.pipeline import PIPELINE_VERSION
from udaseg.errors import UdasegError
from udaseg.inference.preprocessing import record_preprocessing
from udaseg.models.registry import model_spec
from udaseg.progress import NullProgress
from udaseg.stages import predict, preprocess, segment_train

# the tiny manifest says inplane_mm 2.0, size [24, 24] and minmax for src: the stores differ
OVERRIDES = {
    "geometry.inplane_mm": 3.0,
    "geometry.inplane_size": [16, 16],
    "domains.src.intensity.method": "zscore",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def train(store: Path, work: Path, name: str, train_on: str = "source") -> Path:
    """A tiny U-Net trained for 6 steps on ``store`` (a high rate, so it already marks organs);
    returns its model directory."""
    hparams = {**model_spec("unet2d.v1").tiny, "steps": 6, "lr": 0.03, "batch_size": 2}
    hparams["patch_size"] = [16, 16]
    config = segment_train.SegmentTrainConfig(
        model="unet2d.v1",
        train_on=train_on,
        **{train_on: store},
        hparams=hparams,
        val_every=0,
        checkpoint_every=2,
        device="cpu",
        seed=0,
        name=name,
    )
    segment_train.run(config, work)
    return work / layout.SEGMENT / name


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """The tiny dataset preprocessed with OVERRIDES, and a model trained on its src store."""
    root = tmp_path_factory.mktemp("prediction_inputs")
    raw = root / "raw"
    manifest = write_tiny_dataset(raw)
    work = root / "w"
    config = preprocess.PreprocessConfig(dataset=str(manifest), raw=raw, overrides=OVERRIDES)
    preprocess.run(config, work)
    store = work / layout.PREPROCESSED / "tiny__src"
    return {"raw": raw, "manifest": manifest, "store": store, "model": train(store, work, "m")}


def run_predict(model: Path, data: Path, work: Path, **options):
    config = predict.PredictConfig(model_dir=model, data=data, device="cpu", **options)
    return predict.run(config, work)


def masks(folder: Path) -> dict[str, np.ndarray]:
    return {
        p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.gz"))
    }


def assert_same_masks(a: Path, b: Path) -> None:
    first, second = masks(a), masks(b)
    assert first and first.keys() == second.keys()
    for name in first:
        assert np.array_equal(first[name], second[name]), name


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["udaseg", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


# --- the record ----------------------------------------------------------------------------------


def test_model_json_records_the_resolved_preprocessing_of_its_store(trained):
    info = json.loads((trained["model"] / "model.json").read_text())
    (entry,) = info["preprocessing"]["stores"]
    assert (entry["dataset"], entry["domain"], entry["via"]) == ("tiny", "src", "train0")
    assert entry["manifest"]["geometry"]["inplane_mm"] == 3.0
    assert entry["manifest"]["geometry"]["inplane_size"] == [16, 16]
    assert entry["manifest"]["domains"]["src"]["intensity"]["method"] == "zscore"
    assert entry["pipeline_version"] == PIPELINE_VERSION


def test_the_record_follows_translated_stores_to_the_target_preprocessing(tmp_path):
    """A model trained on CT translated to look like MR records the MR store the translator's
    target was (and the CT store), found through the translate-apply artifact's inputs."""

    def publish(name: str, stage: str, config: dict, inputs: dict[str, Path]) -> Path:
        out = tmp_path / "w" / name
        with artifacts.building(out) as tmp:
            (tmp / "x.txt").write_text(name)
            records = {
                k: artifacts.input_record(v, artifacts.load_manifest(v)) for k, v in inputs.items()
            }
            artifacts.publish(tmp, out, stage=stage, config=config, inputs=records)
        return out

    def store(domain: str, inplane_mm: float) -> Path:
        manifest = {"name": "d", "geometry": {"inplane_mm": inplane_mm}}
        config = {"dataset": "d", "domain": domain, "manifest": manifest, "pipeline_version": 1}
        return publish(f"pre_{domain}", "preprocess", config, {})

    ct, mr = store("ct", 1.0), store("mr", 2.5)
    translator = publish("tr", "translate-train", {}, {"source": ct, "target": mr})
    translated = publish("tx", "translate-apply", {}, {"translator": translator, "source": ct})
    record = record_preprocessing({"train0": translated})
    found = {e["domain"]: e for e in record["stores"]}
    assert found["mr"]["manifest"]["geometry"]["inplane_mm"] == 2.5
    assert found["mr"]["via"] == "train0/translator/target"
    assert found["ct"]["via"] == "train0/source"  # the first way it was reached


# --- predicting raw scans ------------------------------------------------------------------------


def test_raw_scans_are_preprocessed_as_the_model_s_store_was(trained, tmp_path, capsys):
    work = tmp_path / "w"
    run_predict(trained["model"], trained["store"], work, name="store")
    logs = []
    config = predict.PredictConfig(
        model_dir=trained["model"],
        data=trained["raw"],
        dataset=str(trained["manifest"]),
        domain="src",
        device="cpu",
        name="raw",
    )
    from_raw = predict.run(config, work, progress=_Log(logs))
    assert_same_masks(work / "predict" / "store", work / "predict" / "raw")
    assert any(v.max() > 0 for v in masks(work / "predict" / "raw").values())
    used = from_raw.config["data"]["preprocessing"]
    assert used["from"] == "model" and used["settings"]["geometry.inplane_mm"] == 3.0
    note = [line for line in logs if "training data" in line]
    assert len(note) == 1 and "geometry.inplane_mm 3.0 (not 2.0)" in note[0]


class _Log(NullProgress):
    """A progress that keeps the lines it is asked to log."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def log(self, message: str) -> None:
        self.lines.append(message)


def test_another_domain_of_the_dataset_takes_its_settings_from_the_recorded_manifest(
    trained, tmp_path
):
    """A source-only model on target scans: the src store's resolved manifest (the same --set
    overrides) says how tgt scans were preprocessed, as the tgt store was."""
    work = tmp_path / "w"
    target = trained["store"].with_name("tiny__tgt")
    run_predict(trained["model"], target, work, name="store")
    done = run_predict(
        trained["model"], trained["raw"], work, dataset=str(trained["manifest"]), domain="tgt"
    )
    assert done.config["data"]["preprocessing"]["settings"]["geometry.inplane_size"] == [16, 16]
    assert_same_masks(work / "predict" / "store", Path(done.summary["output"]))


def test_another_dataset_with_other_geometry_is_refused_naming_the_fields(trained, tmp_path):
    other = tmp_path / "other.yaml"
    data = {**yaml.safe_load(TINY_MANIFEST), "name": "other"}
    other.write_text(yaml.safe_dump(data))
    work = tmp_path / "w"
    with pytest.raises(UdasegError) as caught:
        run_predict(trained["model"], trained["raw"], work, dataset=str(other), domain="src")
    message = str(caught.value)
    assert caught.value.exit_code == 2 and str(trained["model"]) in message
    assert "geometry.inplane_mm: --dataset 2.0, model 3.0" in message
    assert "geometry.inplane_size: --dataset [24.0, 24.0], model [16.0, 16.0]" in message
    assert "--dataset tiny" in message  # how to fix it
    assert not (work / "predict").exists()
    # the same dataset under another name, with the model's settings, is accepted
    other.write_text(yaml.safe_dump(apply_overrides(data, OVERRIDES)))
    run_predict(trained["model"], trained["raw"], work, dataset=str(other), domain="src")


def strip_record(model: Path, bare: Path) -> Path:
    """A copy of the model directory whose model.json lacks the preprocessing record (as an
    older udaseg wrote it): no manifest, final checkpoint only."""
    bare.mkdir()
    shutil.copy2(model / "checkpoint_final.pt", bare)
    info = json.loads((model / "model.json").read_text())
    del info["preprocessing"]
    (bare / "model.json").write_text(json.dumps(info))
    return bare


def test_a_model_without_record_warns_and_uses_the_manifest(trained, tmp_path):
    bare = strip_record(trained["model"], tmp_path / "bare")
    work = tmp_path / "w"
    with pytest.warns(UserWarning, match="records no preprocessing of its training data"):
        done = run_predict(
            bare, trained["raw"], work, dataset=str(trained["manifest"]), domain="src", name="r"
        )
    assert done.config["data"]["preprocessing"]["from"] == "manifest"
    assert done.config["data"]["preprocessing"]["settings"]["geometry.inplane_mm"] == 2.0
    run_predict(bare, trained["store"], work, name="s")
    # the manifest's defaults are not the store's settings: the masks differ (which the record
    # prevents); this is what the test above relies on being able to fail
    first, second = masks(work / "predict" / "r"), masks(work / "predict" / "s")
    assert any(not np.array_equal(first[k], second[k]) for k in first)


# --- refusals before anything is written ---------------------------------------------------------


def test_unfinished_folders_are_refused_by_predict_and_evaluate(
    trained, tmp_path, monkeypatch, capsys
):
    work = tmp_path / "w"
    model = work / "segment" / "x.partial"
    shutil.copytree(trained["model"], model)
    store = work / "preprocessed" / "y.partial"
    shutil.copytree(trained["store"], store)
    pred = work / "predict" / "z.partial"
    pred.mkdir(parents=True)
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(pred / "c0.nii.gz"))
    before = sorted(p for p in work.rglob("*"))
    cases = [
        ("predict", "--model-dir", str(model), "--data", str(trained["store"])),
        ("predict", "--model-dir", str(trained["model"]), "--data", str(store)),
        ("predict", "--model-dir", str(trained["model"]), "--data", str(store / "store.h5")),
        ("predict", "--model-dir", str(trained["model"]), "--data", str(trained["store"]),
         "--ensemble", str(model)),
        ("evaluate", "--pred", str(pred), "--ref", str(trained["store"]),
         "--dataset", str(trained["manifest"])),
    ]  # fmt: skip
    for args in cases:
        code, err = cli(monkeypatch, capsys, *args, "--work", str(work))
        assert code == 2, (args, err)
        assert "is an unfinished run" in err and ".partial" in err
    assert sorted(p for p in work.rglob("*")) == before


def test_a_shard_without_cases_is_refused(trained, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    args = ("predict", "--model-dir", str(trained["model"]), "--data", str(trained["store"]))
    code, err = cli(
        monkeypatch, capsys, *args, "--cases", "c0,c1", "--shard", "3/4", "--work", str(work)
    )
    assert code == 2 and "--shard 3/4 selects no case" in err and "holds 2 cases" in err
    assert not (work / "predict").exists()


def test_case_ids_that_are_no_plain_file_names_are_refused(trained, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(trained["raw"] / "src", raw / "src")
    (raw / "src" / "c0_image.nii.gz").rename(raw / "src" / "c 0_image.nii.gz")
    work = tmp_path / "w"
    with pytest.raises(UdasegError, match='"c 0" is not a plain') as caught:
        run_predict(trained["model"], raw, work, dataset=str(trained["manifest"]), domain="src")
    assert caught.value.exit_code == 2 and not (work / "predict").exists()


# --- real data -----------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_mr_case_raw_and_store_predictions_are_identical(tmp_path):
    """One CHAOS MR case preprocessed with the abdominal pipeline's non-default grid (2.5 mm,
    128 x 128), a model trained 6 steps on it: its raw file gives the store's masks."""
    folder = require_shared("abdominal", "chaos_MR_T2_normalized")
    started = time.perf_counter()
    raw = tmp_path / "raw" / "chaos_MR_T2_normalized"
    raw.mkdir(parents=True)
    for name in ("image_2.nii.gz", "label_2.nii.gz"):
        (raw / name).symlink_to(folder / name)
    work = tmp_path / "w"
    overrides = ["geometry.inplane_mm=2.5", "geometry.inplane_size=[128,128]"]
    config = preprocess.PreprocessConfig(
        dataset="abdominal-normalized", raw=raw.parent, domain="mr", overrides=overrides
    )
    preprocess.run(config, work)
    store = work / layout.PREPROCESSED / "abdominal-normalized__mr"
    model = train(store, work, "mr", train_on="target")
    run_predict(model, store, work, name="store")
    done = run_predict(
        model, raw.parent, work, dataset="abdominal-normalized", domain="mr", name="raw"
    )
    assert done.config["data"]["preprocessing"]["settings"]["geometry.inplane_mm"] == 2.5
    assert_same_masks(work / "predict" / "store", work / "predict" / "raw")
    # the bug this guards against: the same model without its record, on the manifest's defaults
    bare = strip_record(model, tmp_path / "bare")
    with pytest.warns(UserWarning, match="records no preprocessing"):
        run_predict(bare, raw.parent, work, dataset="abdominal-normalized", domain="mr", name="d")
    (name,) = masks(work / "predict" / "d")
    assert not np.array_equal(
        masks(work / "predict" / "d")[name], masks(work / "predict" / "raw")[name]
    )
    assert time.perf_counter() - started < 120
