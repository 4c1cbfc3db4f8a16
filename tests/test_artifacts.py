"""The artifact contract: atomic outputs, manifests, staleness and --force."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from udaseg import artifacts
from udaseg.artifacts import StaleInputError


def make_artifact(
    out: Path, content: str, *, stage="a", config=None, inputs=None
) -> artifacts.Manifest:
    with artifacts.building(out) as tmp:
        (tmp / "data.txt").write_text(content)
        return artifacts.publish(tmp, out, stage=stage, config=config or {"x": 1}, inputs=inputs)


def test_manifest_records_what_the_contract_says(tmp_path):
    out = tmp_path / "a"
    manifest = make_artifact(out, "hello", config={"x": 1, "nested": {"b": [1, 2]}})
    data = json.loads((out / "manifest.json").read_text())
    for key in (
        "schema_version",
        "stage",
        "udaseg_version",
        "git_commit",
        "libraries",
        "config",
        "config_hash",
        "inputs",
        "outputs",
        "created",
    ):
        assert key in data
    assert data["outputs"]["data.txt"]["size"] == 5
    # the manifest records the config it is given: what is hashed is decided by udaseg.config
    assert data["config"] == {"x": 1, "nested": {"b": [1, 2]}}
    assert data["libraries"]["numpy"]
    assert manifest.config_hash == artifacts.config_hash({"nested": {"b": [1, 2]}, "x": 1})
    assert manifest.config_hash != artifacts.config_hash({"x": 2, "nested": {"b": [1, 2]}})
    assert not artifacts.partial_dir(out).exists()


def test_failure_inside_building_leaves_nothing_complete(tmp_path):
    out = tmp_path / "a"
    with pytest.raises(RuntimeError), artifacts.building(out) as tmp:
        (tmp / "data.txt").write_text("half")
        raise RuntimeError("crash")
    assert not out.exists()
    with pytest.raises(StaleInputError, match="never finished"):
        artifacts.require_input(out, stage="a", rerun="udaseg a")


def test_discard_on_error_removes_the_partial_folder_and_reraises(tmp_path):
    out = tmp_path / "a"
    with pytest.raises(KeyboardInterrupt), artifacts.building(out, discard_on_error=True) as tmp:
        (tmp / "data.txt").write_text("half")
        raise KeyboardInterrupt
    assert not out.exists() and not artifacts.partial_dir(out).exists()
    with artifacts.building(out, discard_on_error=True) as tmp:
        (tmp / "data.txt").write_text("whole")
        artifacts.publish(tmp, out, stage="a", config={}, inputs={}, summary={})
    assert (out / "data.txt").read_text() == "whole"


def test_killed_process_leaves_nothing_that_looks_complete(tmp_path):
    out = tmp_path / "a"
    script = (
        "import sys, time; from pathlib import Path; from udaseg import artifacts\n"
        f"out = Path({str(out)!r})\n"
        "with artifacts.building(out) as tmp:\n"
        "    (tmp / 'store.h5').write_bytes(b'x' * 1000)\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "    artifacts.publish(tmp, out, stage='a', config={})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert not out.exists()
    assert not (artifacts.partial_dir(out) / "manifest.json").exists()
    with pytest.raises(StaleInputError, match="never finished"):
        artifacts.require_input(out, stage="a", rerun="udaseg a")


def test_rebuilt_input_makes_consumer_stale(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    manifest_a = make_artifact(a, "v1")
    make_artifact(b, "made from v1", stage="b", inputs={"a": artifacts.input_record(a, manifest_a)})
    assert artifacts.require_input(b, stage="b", rerun="udaseg b").stage == "b"
    time.sleep(0.01)
    make_artifact(a, "v2", config={"x": 2})  # upstream rebuilt with another config
    with pytest.raises(StaleInputError, match=r"rebuilt after it.*\n.*rerun `udaseg b`"):
        artifacts.require_input(b, stage="b", rerun="udaseg b")
    with pytest.warns(UserWarning, match="--force"):
        assert artifacts.require_input(b, stage="b", rerun="udaseg b", force=True)


def test_modified_output_file_is_refused(tmp_path):
    out = tmp_path / "a"
    make_artifact(out, "original")
    (out / "data.txt").write_text("tampered")
    with pytest.raises(StaleInputError, match="data.txt changed"):
        artifacts.require_input(out, stage="a", rerun="udaseg a")
    (out / "data.txt").write_text("original")  # same size, new mtime: content is re-hashed
    assert artifacts.require_input(out, stage="a", rerun="udaseg a")
    (out / "data.txt").write_text("origina!")
    with pytest.raises(StaleInputError, match="changed content"):
        artifacts.require_input(out, stage="a", rerun="udaseg a")


def test_unknown_schema_version_and_wrong_stage_are_refused(tmp_path):
    out = tmp_path / "a"
    make_artifact(out, "x")
    with pytest.raises(StaleInputError, match="made by stage 'a', expected 'b'"):
        artifacts.require_input(out, stage="b", rerun="udaseg b")
    data = json.loads((out / "manifest.json").read_text())
    data["schema_version"] = 99
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(StaleInputError, match="schema version 99"):
        artifacts.load_manifest(out)


def test_is_current_compares_the_recorded_config(tmp_path):
    out = tmp_path / "a"
    make_artifact(out, "x", config={"x": 1})
    assert artifacts.is_current(out, {"x": 1}, {})
    assert not artifacts.is_current(out, {"x": 2}, {})
    assert not artifacts.is_current(tmp_path / "missing", {"x": 1}, {})


def test_publish_replaces_an_older_build(tmp_path):
    out = tmp_path / "a"
    make_artifact(out, "old")
    make_artifact(out, "new")
    assert (out / "data.txt").read_text() == "new"
    assert not out.with_name("a.old").exists()
