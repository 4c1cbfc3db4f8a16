"""End to end through the command line, on a tiny phantom: every stage built so far."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from udaseg.artifacts import load_manifest, require_input

pytestmark = pytest.mark.e2e


def udaseg(*args: str) -> dict | list:
    done = subprocess.run(
        [sys.executable, "-m", "udaseg.cli", *args, "--json"],
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
