"""The workspace under concurrency, hostile names, forced runs and moves: one lock per artifact,
nothing outside ``--work``, staleness through every level, and workspaces that can be copied."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from udaseg import artifacts, layout
from udaseg.artifacts import ArtifactLockedError, StaleInputError
from udaseg.errors import UdasegError
from udaseg.models.registry import model_spec
from udaseg.stages import preprocess

# --- helpers: artifacts made directly, without training anything -------------------------------


def make(work: Path, folder: str, name: str, text: str, inputs: dict | None = None, **config):
    """Publish ``W/<folder>/<name>/data.txt`` holding ``text``; returns the folder."""
    out = layout.run_dir(work, folder, name)
    with artifacts.building(out, discard_on_error=True) as tmp:
        (tmp / "data.txt").write_text(text)
        artifacts.publish(
            tmp,
            out,
            stage=folder,
            config={"text": text, **config},
            inputs={
                k: artifacts.input_record(v, artifacts.load_manifest(v))
                for k, v in (inputs or {}).items()
            },
        )
    return out


def chain(work: Path) -> tuple[Path, Path, Path]:
    """store -> model -> predictions, each reading the one before."""
    store = make(work, layout.PREPROCESSED, "d__ct", "scans")
    model = make(work, layout.SEGMENT, "m", "weights", {"store": store}, store=str(store))
    pred = make(work, layout.PREDICT, "p", "masks", {"model": model}, model=str(model))
    return store, model, pred


# --- one lock per artifact ---------------------------------------------------------------------


def test_a_second_builder_fails_at_once_naming_the_holder_and_touches_nothing(tmp_path):
    out = tmp_path / "W" / "segment" / "run"
    partial = artifacts.partial_dir(out)
    partial.mkdir(parents=True)
    (partial / "checkpoint_latest.pt").write_text("the first run's")
    with artifacts.locked(out):
        holder = json.loads(artifacts.lock_path(out).read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
        with pytest.raises(ArtifactLockedError) as caught, artifacts.building(out):
            pass
        assert f"pid {os.getpid()}" in caught.value.message and caught.value.exit_code == 3
        assert (partial / "checkpoint_latest.pt").read_text() == "the first run's"
    # released: the lock file is gone and the next build goes ahead
    assert not artifacts.lock_path(out).exists()
    with artifacts.building(out) as tmp:
        assert not (tmp / "checkpoint_latest.pt").exists()


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "W" / "preprocessed" / "d__ct"
    out.parent.mkdir(parents=True)
    # what a run killed with SIGKILL leaves: the file, but no process holding its lock
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    artifacts.lock_path(out).write_text(
        json.dumps(
            {"host": "here", "pid": int(dead.stdout), "started": "then", "command": "udaseg x"}
        )
    )
    with artifacts.building(out, discard_on_error=True) as tmp:
        (tmp / "f").write_text("x")
        artifacts.publish(tmp, out, stage="preprocess", config={})
    artifacts.require_input(out, stage="preprocess", rerun="udaseg preprocess")
    assert not artifacts.lock_path(out).exists()


def test_lock_dir_moves_lock_files_out_of_the_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv(artifacts.LOCK_DIR_ENV, str(tmp_path / "locks"))
    out = tmp_path / "W" / "segment" / "run"
    with artifacts.locked(out):
        (lock,) = (tmp_path / "locks").iterdir()
        assert lock.name.startswith("run-") and lock.suffix == ".lock"
        same = tmp_path / "W" / "segment" / ".." / "segment" / "run"
        with pytest.raises(ArtifactLockedError), artifacts.locked(same):
            pass
    assert not (out.parent / "run.lock").exists()


def _train_command(work: Path, store: Path, steps: int) -> list[str]:
    tiny = model_spec("unet2d.v1").tiny
    sets = [f"{k}={v}" for k, v in tiny.items()]
    sets += [f"steps={steps}", "batch_size=2", "patch_size=32,32"]
    return [
        sys.executable, "-m", "udaseg", "segment-train", "--source", str(store),
        "--work", str(work), "--name", "race", "--device", "cpu", "--checkpoint-every", "50",
        "--log-every", "1", "--val-every", "0",
        *[part for s in sets for part in ("--set", s)],
    ]  # fmt: skip


def test_two_training_processes_on_one_run(tiny_dataset, tmp_path):
    """The second fails at once (exit 3, naming the first); the first's artifact verifies."""
    raw, manifest = tiny_dataset
    work = tmp_path / "W"
    preprocess.run(preprocess.PreprocessConfig(dataset=str(manifest), raw=raw), work)
    store = work / "preprocessed" / "tiny__src"
    out = work / "segment" / "race"
    steps = 30
    first = subprocess.Popen(
        _train_command(work, store, steps),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        deadline = time.monotonic() + 120
        while not (artifacts.partial_dir(out) / layout.METRICS).exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never started training"
            time.sleep(0.05)
        # hold the first run mid-training (lock held) while the second one tries
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = subprocess.run(
                _train_command(work, store, steps),
                capture_output=True,
                text=True,
                encoding="utf-8",
                timeout=120,
            )
        finally:
            os.kill(first.pid, signal.SIGCONT)
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert second.returncode == 3, second.stderr
    assert "being built by another process" in second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert first.returncode == 0, stderr
    made = artifacts.require_input(out, stage="segment-train", rerun="udaseg segment-train")
    assert artifacts.verify_outputs(out, made, full=True) == []
    rows = [json.loads(line) for line in (out / layout.METRICS).read_text().splitlines()]
    assert [row["step"] for row in rows if "val" not in row] == list(range(1, steps + 1))
    assert not artifacts.partial_dir(out).exists() and not artifacts.lock_path(out).exists()


# --- names that become paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../victim", "/tmp/x", "a/b", "..", ".hidden", "run.partial", "run.old", ""]
)
def test_run_names_must_be_plain_folder_names(name, tmp_path):
    with pytest.raises(UdasegError) as caught:
        layout.run_dir(tmp_path, layout.SEGMENT, name)
    assert caught.value.exit_code == 2
    with pytest.raises(UdasegError):
        artifacts.check_run_name(name)


def test_a_dataset_named_like_a_path_is_refused_before_anything_is_written(tiny_dataset, tmp_path):
    raw, manifest = tiny_dataset
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(manifest.read_text().replace("name: tiny", "name: ../../victim"))
    assert hostile.read_text() != manifest.read_text()
    work = tmp_path / "deep" / "W"
    with pytest.raises(UdasegError, match="'name'.*not a plain folder name"):
        preprocess.run(preprocess.PreprocessConfig(dataset=str(hostile), raw=raw), work)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not work.exists()


# --- unfinished folders are never inputs -------------------------------------------------------


def test_unfinished_and_replaced_folders_are_not_inputs(tmp_path):
    store = make(tmp_path / "W", layout.PREPROCESSED, "d__ct", "scans")
    copy = artifacts.partial_dir(store)
    shutil.copytree(store, copy)  # a manifest inside does not make it finished
    for folder in (copy, store.with_name(store.name + layout.OLD_SUFFIX), copy / "store.h5"):
        with pytest.raises(UdasegError) as caught:
            artifacts.check_finished(folder, "--data")
        assert caught.value.exit_code == 2 and "--data" in caught.value.message
    with pytest.raises(UdasegError, match="unfinished"):
        artifacts.require_input(copy, stage="preprocessed", rerun="udaseg preprocess")


# --- integrity and staleness -------------------------------------------------------------------


def test_same_size_damage_with_the_mtime_restored_is_noticed(tmp_path):
    store = make(tmp_path / "W", layout.PREPROCESSED, "d__ct", "scans")
    data = store / "data.txt"
    stat = data.stat()
    data.write_text("SCANS")  # same size
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` / `touch -r` would
    with pytest.raises(StaleInputError, match="changed content"):
        artifacts.require_input(store, stage="preprocessed", rerun="udaseg preprocess")


def test_staleness_is_checked_through_every_level(tmp_path):
    work = tmp_path / "W"
    store, model, pred = chain(work)
    make(work, layout.PREPROCESSED, "d__ct", "new scans")  # the store is rebuilt
    # the model is stale directly, the predictions through it
    assert "was rebuilt after it" in artifacts.stale_reason(model)
    reason = artifacts.stale_reason(pred)
    assert "its input 'model'" in reason and "rebuilt" in reason
    assert not artifacts.is_current(
        pred,
        {"text": "masks", "model": str(model)},
        {"model": {"manifest_hash": artifacts.manifest_hash(model)}},
    )
    with pytest.raises(StaleInputError, match="out of date"):
        artifacts.require_input(pred, stage="predict", rerun="udaseg predict")


def test_a_run_forced_over_a_stale_input_says_so_and_so_does_everything_after_it(tmp_path):
    work = tmp_path / "W"
    store, model, _ = chain(work)
    make(work, layout.PREPROCESSED, "d__ct", "new scans")
    with pytest.warns(UserWarning, match="--force"):
        artifacts.require_input(model, stage="segment", rerun="udaseg segment-train", force=True)
    pred = make(work, layout.PREDICT, "p", "masks 2", {"model": model}, model=str(model))
    recorded = json.loads((pred / layout.MANIFEST).read_text())["inputs"]["model"]
    assert "rebuilt" in recorded["stale"]
    assert "built with --force" in artifacts.stale_reason(pred)
    evaluation = make(work, layout.EVALUATE, "e", "scores", {"pred": pred})
    assert "built with --force" in artifacts.stale_reason(evaluation)
    with pytest.raises(StaleInputError, match="built with --force"):
        artifacts.require_input(evaluation, stage="evaluate", rerun="udaseg evaluate")


# --- workspaces that move ----------------------------------------------------------------------


def test_manifests_hold_paths_in_the_workspace_relative_to_it(tmp_path):
    work = tmp_path / "W"
    raw = tmp_path / "raw"
    store, model, pred = chain(work)
    text = (model / layout.MANIFEST).read_text()
    assert str(work) not in text and "<work>/preprocessed/d__ct" in text
    loaded = artifacts.load_manifest(model)
    assert loaded.config["store"] == str(store.resolve())
    assert artifacts.input_dir(model, loaded.inputs["store"]) == store.resolve()
    # paths outside the workspace stay absolute
    outside = make(work, layout.PREPROCESSED, "d__mr", "scans", raw=str(raw))
    assert json.loads((outside / layout.MANIFEST).read_text())["config"]["raw"] == str(raw)


def test_a_copied_workspace_is_current_without_the_original(tmp_path):
    work, moved = tmp_path / "W", tmp_path / "elsewhere" / "W2"
    store, model, pred = chain(work)
    moved.parent.mkdir()
    subprocess.run(["cp", "-r", str(work), str(moved)], check=True)  # new inodes, times
    shutil.rmtree(work)
    new_store, new_model = moved / "preprocessed" / "d__ct", moved / "segment" / "m"
    new_pred = moved / "predict" / "p"
    for folder, stage in (
        (new_store, "preprocessed"),
        (new_model, "segment"),
        (new_pred, "predict"),
    ):
        artifacts.require_input(folder, stage=stage, rerun="x")
    inputs = {"model": artifacts.input_record(new_model, artifacts.load_manifest(new_model))}
    assert artifacts.is_current(new_pred, {"text": "masks", "model": str(new_model)}, inputs)
    assert not artifacts.is_current(new_pred, {"text": "masks", "model": str(model)}, inputs)
