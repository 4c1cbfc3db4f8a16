"""benchmarks/gpu_check.py in its CPU form: every part of the GPU node check runs and passes.

The GPU run is the one that matters, and it gets a few minutes of a lent machine; this keeps the
script from failing there on something a CPU could have caught (a renamed option, a stage
that moved, a JSON field).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_cpu_tiny_run_passes_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--device",
            "cpu",
            "--tiny",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["environment"]["device"] == "cpu"
    checks = report["checks"]
    failed = [c for c in checks if not c["ok"]]
    assert not failed, failed
    assert {c["part"] for c in checks} == {"pipelines", "torchrun", "models", "stages"}
    names = " ".join(c["name"] for c in checks)
    assert "pipeline phantom-demo" in names and "torchrun segment-train x1" in names
    assert "adapt advent" in names
    models = {c["measures"]["model"]: c["measures"] for c in checks if c["part"] == "models"}
    assert set(models) == {"sifa-encoder.v1", "deeplabv2.v1", "dar-unet.v1"}
    assert all(m["steps_per_s"] > 0 and m["peak_memory_gb"] > 0 for m in models.values())


def test_a_command_that_overruns_is_killed_and_reported(tmp_path):
    """A part over its budget fails as timed out instead of hanging the node's allocation."""
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--device",
            "cpu",
            "--tiny",
            "--parts",
            "models",
            "--budget-s",
            "1.5",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    report = json.loads(out.read_text())
    assert not report["ok"]
    assert report["checks"] and all(c["timed_out"] for c in report["checks"])
    assert report["seconds"] < 30
