"""End to end through the command line, on a tiny phantom: every stage built so far."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from udaseg.artifacts import load_manifest, require_input

pytestmark = pytest.mark.e2e


def udaseg(*args: str) -> dict | list:
    done = subprocess.run(
        [sys.executable, "-m", "udaseg", *args, "--json"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_phantom_preprocess_evaluate_with_reruns(tmp_path):
    raw, work = tmp_path / "raw", tmp_path / "work"
    summary = udaseg("phantom", "--out", str(raw), "--size", "tiny")
    assert summary["cases"] == 6
    manifest = str(raw / "dataset.yaml")
    first = udaseg("preprocess", manifest, "--raw", str(raw), "--work", str(work))
    assert [s["domain"] for s in first] == ["ct", "mr"] and not first[0]["skipped"]
    for domain in ("ct", "mr"):
        out = work / "preprocessed" / f"phantom-abdomen__{domain}"
        made = require_input(out, stage="preprocess", rerun="udaseg preprocess")
        assert set(made.outputs) == {"store.h5", "splits.json", "fingerprint.json"}
    # a second call skips both domains; new raw data rebuilds them
    assert all(
        s["skipped"] for s in udaseg("preprocess", manifest, "--raw", str(raw), "--work", str(work))
    )
    before = load_manifest(work / "preprocessed" / "phantom-abdomen__mr").config_hash
    udaseg("phantom", "--out", str(raw), "--size", "tiny", "--seed", "1")
    again = udaseg("preprocess", manifest, "--raw", str(raw), "--work", str(work))
    assert not any(s["skipped"] for s in again)
    assert load_manifest(work / "preprocessed" / "phantom-abdomen__mr").config_hash != before

    # evaluate reads store artifacts; the labels against themselves score Dice 1 everywhere
    store = str(work / "preprocessed" / "phantom-abdomen__mr")
    summary = udaseg(
        "evaluate",
        "--pred",
        store,
        "--ref",
        store,
        "--dataset",
        manifest,
        "--work",
        str(work),
        "--name",
        "self",
    )
    assert summary["mean_over_classes"]["dice"]["mean"] == 1.0
    out = work / "evaluate" / "self"
    assert require_input(out, stage="evaluate", rerun="udaseg evaluate").inputs
    assert {p.name for p in out.iterdir()} >= {"per_case.csv", "summary.json", "table.md"}


def test_train_predict_evaluate_and_resume_after_a_kill(tmp_path):
    """phantom -> preprocess -> segment-train (killed, resumed) -> predict -> evaluate."""
    import os
    import signal
    import time

    raw, work = tmp_path / "raw", tmp_path / "work"
    udaseg("phantom", "--out", str(raw), "--size", "tiny")
    udaseg("preprocess", str(raw / "dataset.yaml"), "--raw", str(raw), "--work", str(work))
    ct = work / "preprocessed" / "phantom-abdomen__ct"
    train = [
        "segment-train",
        "--work",
        str(work),
        "--model",
        "unet2d.v1",
        "--source",
        str(ct),
        "--set",
        "base_channels=4",
        "--set",
        "depth=3",
        "--set",
        "steps=60",
        "--set",
        "batch_size=4",
        "--set",
        "patch_size=32,32",
        "--checkpoint-every",
        "5",
        "--val-every",
        "30",
        "--log-every",
        "5",
        "--device",
        "cpu",
        "--name",
        "unet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "udaseg", *train],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = work / "segment" / "unet.partial" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "segment" / "unet").exists()
    summary = udaseg(*train, "--resume")
    assert summary["steps"] == 60
    steps = [
        json.loads(line)["step"]
        for line in (work / "segment" / "unet" / "metrics.jsonl").read_text().splitlines()
        if "val" not in line
    ]
    assert steps == list(range(5, 61, 5))  # no step logged twice, none missing
    model = work / "segment" / "unet"
    mr = work / "preprocessed" / "phantom-abdomen__mr"
    predicted = udaseg(
        "predict",
        "--model-dir",
        str(model),
        "--data",
        str(mr),
        "--work",
        str(work),
        "--name",
        "unet_on_mr",
    )
    assert predicted["cases"] == 3
    scores = udaseg(
        "evaluate",
        "--pred",
        str(work / "predict" / "unet_on_mr"),
        "--ref",
        str(raw),
        "--dataset",
        str(raw / "dataset.yaml"),
        "--domain",
        "mr",
        "--work",
        str(work),
    )
    assert 0.0 <= scores["mean_over_classes"]["dice"]["mean"] <= 1.0
    for stage, out in (("segment-train", model), ("predict", work / "predict" / "unet_on_mr")):
        assert require_input(out, stage=stage, rerun=f"udaseg {stage}").inputs


def test_the_demo_pipeline_runs_every_stage_then_skips_then_reruns_what_changed(tmp_path):
    """`udaseg run phantom-demo --preset smoke`: phantom, preprocess, translate train + apply,
    three segment-train runs, adapt, predict and evaluate, a few iterations each."""
    work = tmp_path / "w"
    first = udaseg("run", "phantom-demo", "--work", str(work), "--preset", "smoke")
    statuses = {s["stage"]: s["status"] for s in first["stages"]}
    assert set(statuses.values()) == {"ran"}, statuses
    expected = {
        "preprocessed/phantom-abdomen__ct": "preprocess",
        "translate/cyclegan": "translate-train",
        "translated/ct-as-mr": "translate-apply",
        "styles/multi-style": "cluster-styles",
        "translated/ct-as-mr-2-styles": "translate-apply",
        "segment/no-adaptation": "segment-train",
        "segment/translation-only": "segment-train",
        "adapt/translation+advent": "adapt",
        "predict/translation+advent": "predict",
        "evaluate/translation+advent": "evaluate",
    }
    for folder, stage in expected.items():
        assert load_manifest(work / folder).stage == stage, folder
    rows = {row["label"]: row for row in first["comparison"]}
    assert len(rows) == 5 and all(0 <= r["mean_dice"] <= 1 for r in rows.values())
    assert (work / "runs" / "phantom-demo" / "comparison.md").is_file()
    # a second call finds every artifact complete and current
    second = udaseg("run", "phantom-demo", "--work", str(work), "--preset", "smoke")
    assert {s["status"] for s in second["stages"]} == {"skipped"}
    # a copy of the workspace is just as current, with the original gone, and its report complete
    report = udaseg("report", "--work", str(work))
    copy, gone = tmp_path / "copy" / "w2", tmp_path / "gone"
    copy.parent.mkdir()
    subprocess.run(["cp", "-r", str(work), str(copy)], check=True)
    work.rename(gone)
    moved = udaseg("run", "phantom-demo", "--work", str(copy), "--preset", "smoke")
    assert {s["status"] for s in moved["stages"]} == {"skipped"}
    assert udaseg("report", "--work", str(copy))["sections"] == report["sections"]
    assert not any(s["notes"] for s in report["sections"].values())
    gone.rename(work)
    # longer adaptation: adapt and what reads its model rerun, nothing upstream does
    third = udaseg(
        "run", "phantom-demo", "--work", str(work), "--preset", "smoke", "--var", "adapt_steps=3"
    )
    ran = {s["stage"] for s in third["stages"] if s["status"] == "ran"}
    assert ran == {"adapt-advent", "predict-advent", "evaluate-advent"}


@pytest.mark.parametrize(
    ("task", "dataset", "src", "tgt"),
    [("abdomen", "dataset.yaml", "ct", "mr"), ("mscmrseg", "mscmrseg", "c0", "lge")],
)
def test_the_generic_route_runs_on_the_abdominal_and_the_cardiac_layout(
    tmp_path, task, dataset, src, tgt
):
    """`udaseg run uda --preset smoke --with bounds` on a phantom in each layout: every stage runs
    (the smoke preset has cpu-90's shape: two self-training rounds, two students averaged),
    the target's predictions are where the run says, in the dataset's own label codes, with the
    label tables beside them, and the comparison has the route, GIN-only and both bounds."""
    import numpy as np
    import SimpleITK as sitk

    from udaseg.data.manifest import load_manifest

    raw, work = tmp_path / "raw", tmp_path / "W"
    udaseg("phantom", "--task", task, "--out", str(raw), "--size", "tiny")
    name = str(raw / dataset) if dataset.endswith(".yaml") else dataset
    record = udaseg(
        "run", "uda", "--work", str(work), "--preset", "smoke", "--with", "bounds",
        "--var", f"dataset={name}", "--var", f"raw={raw}", "--var", f"src={src}",
        "--var", f"tgt={tgt}",
    )  # fmt: skip
    assert {s["status"] for s in record["stages"]} == {"ran"}
    assert len(record["stages"]) == 20  # with the second round and its second student
    labels = [row["label"] for row in record["comparison"]]
    assert len(labels) == 4 and labels[-1] == "supervised (target labels)"
    predictions = record["outputs"]["predictions of the target"]
    files = sorted(Path(predictions).glob("*.nii.gz"))
    manifest = load_manifest(name)
    codes = {0} | set(manifest.domains[tgt].label_map)
    from udaseg.data.readers import find_cases

    cases = find_cases(manifest.domains[tgt], raw)
    assert sorted(p.name for p in files) == sorted(f"{c.case_id}.nii.gz" for c in cases)
    for path in files:
        values = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).tolist())
        assert values <= codes, (path.name, values)
    for table in ("labels.itksnap.txt", "labels.ctbl"):
        text = (Path(predictions) / table).read_text()
        assert all(c in text for c in manifest.classes)
