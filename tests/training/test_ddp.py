"""Distributed training on the CPU: two torchrun processes (gloo) through `udaseg adapt`.

The CUDA path (NCCL) is the same code with another backend; these runs catch what only shows
with several ranks: one rank deleting files another reads, wrapped networks that talk to the other
ranks in a forward pass only one rank makes, and a rank leaving before the others.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import write_tiny_dataset
from udaseg.artifacts import load_manifest
from udaseg.stages import preprocess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    manifest = write_tiny_dataset(root / "raw")
    preprocess.run(preprocess.PreprocessConfig(dataset=str(manifest), raw=root / "raw"), root / "w")
    return (
        root / "w",
        root / "w" / "preprocessed" / "tiny__src",
        root / "w" / "preprocessed" / "tiny__tgt",
    )


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + ["-m", "udaseg", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize(
    ("method", "model", "extra"),
    [
        ("advent.v1", "unet2d.v1", ["--set", "base_channels=4", "--set", "depth=3"]),
        (
            "sifa.v1",
            "sifa-encoder.v1",
            [
                "--set",
                "base_channels=2",
                "--set",
                "g_width=4",
                "--set",
                "g_blocks=1",
                "--set",
                "u_width=4",
            ],
        ),
    ],  # fmt: skip
)
def test_two_ranks_adapt_and_rerun_over_a_killed_run(stores, method, model, extra):
    work, source, target = stores
    args = [
        "adapt", "--work", str(work), "--method", method, "--source", str(source),
        "--target", str(target), "--model", model, *extra, "--set", "steps=3", "--set",
        "batch_size=2", "--set", "patch_size=32,32", "--set", "d_width=4", "--device", "cpu",
        "--name", method, "--checkpoint-every", "1",
    ]  # fmt: skip
    done = torchrun(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    run = work / "adapt" / method
    assert load_manifest(run).summary["steps"] == 3
    assert (run / "extras").is_dir() == (method == "sifa.v1")  # its pictures, by rank 0
    assert not (work / "adapt" / f"{method}.partial").exists()
    # an interrupted run left behind is discarded by one rank while the other waits
    partial = work / "adapt" / f"{method}-again.partial"
    (run).rename(partial)
    again = torchrun(*args[:-4], "--name", f"{method}-again", "--checkpoint-every", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert load_manifest(work / "adapt" / f"{method}-again").summary["steps"] == 3
