"""A training job killed on a cluster (SIGKILL at its time limit) and submitted again: the plain
rerun continues from the last checkpoint and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import KillAt
from udaseg.errors import UdasegError
from udaseg.progress import NullProgress
from udaseg.stages import preprocess, segment_train
from udaseg.training.checkpoint import load_checkpoint


class Log(NullProgress):
    """Keeps what a stage logs."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.fixture
def source(tiny_dataset, tmp_path) -> Path:
    raw, manifest = tiny_dataset
    preprocess.run(preprocess.PreprocessConfig(dataset=str(manifest), raw=raw), tmp_path / "w")
    return tmp_path / "w" / "preprocessed" / "tiny__src"


def command(source: Path, name: str, *extra: str) -> list[str]:
    return [
        *("segment-train", "--source", str(source), "--work", str(source.parents[1])),
        *("--name", name, "--device", "cpu", "--val-every", "0", "--log-every", "1"),
        *("--set", "base_channels=4", "--set", "depth=2", "--set", "patch_size=24,24"),
        *("--set", "batch_size=2", "--seed", "5", *extra),
    ]


def udaseg(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "udaseg", *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
    )


def kill_when(args: list[str], ready) -> None:
    """Start ``udaseg ARGS`` and SIGKILL it as soon as ``ready()`` holds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "udaseg", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def log_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def same_final_weights(a: Path, b: Path) -> bool:
    wa = load_checkpoint(a / "checkpoint_final.pt")["state_dict"]
    wb = load_checkpoint(b / "checkpoint_final.pt")["state_dict"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_plain_rerun_after_sigkill_continues_to_identical_weights_and_log(source):
    runs = source.parents[1] / "segment"
    steps = ("--set", "steps=80", "--checkpoint-every", "4")
    whole = udaseg(command(source, "whole", *steps))
    assert whole.returncode == 0, whole.stderr
    latest = runs / "cut.partial" / "checkpoint_latest.pt"
    kill_when(command(source, "cut", *steps), latest.is_file)
    assert not (runs / "cut").exists(), "the run finished before it was killed"
    killed_at = load_checkpoint(latest)["step"]
    assert 4 <= killed_at < 80
    again = udaseg(command(source, "cut", *steps))  # the job submitted again, no --resume
    assert again.returncode == 0, again.stderr
    assert f"resumed from step {killed_at}" in again.stderr + again.stdout
    assert same_final_weights(runs / "whole", runs / "cut")
    assert log_rows(runs / "whole" / "metrics.jsonl") == log_rows(runs / "cut" / "metrics.jsonl")
    assert not (runs / "cut.partial").exists()


def test_a_run_killed_before_its_first_checkpoint_starts_over_from_an_empty_folder(source):
    runs = source.parents[1] / "segment"
    steps = ("--set", "steps=60", "--checkpoint-every", "1000")
    partial_log = runs / "cut.partial" / "metrics.jsonl"

    def logged_some() -> bool:
        return partial_log.is_file() and len(partial_log.read_text().splitlines()) >= 3

    kill_when(command(source, "cut", *steps), logged_some)
    assert logged_some() and not (runs / "cut.partial" / "checkpoint_latest.pt").exists()
    again = udaseg(command(source, "cut", *steps))
    assert again.returncode == 0, again.stderr
    assert "stopped before its first checkpoint" in again.stderr + again.stdout
    rows = log_rows(runs / "cut" / "metrics.jsonl")
    # no step logged twice (the last row is the closing validation)
    assert [row["step"] for row in rows if "val" not in row] == list(range(1, 61))


def config(source: Path, **overrides) -> segment_train.SegmentTrainConfig:
    hparams = {"base_channels": 4, "depth": 2, "patch_size": [24, 24], "batch_size": 2}
    base = dict(
        source=source,
        hparams={**hparams, "steps": 8},
        name="r",
        device="cpu",
        checkpoint_every=3,
        val_every=0,
        log_every=1,
        seed=5,
    )
    return segment_train.SegmentTrainConfig(**{**base, **overrides})


def test_a_run_with_other_options_is_discarded_saying_why_and_resume_refuses_it(source):
    work, partial = source.parents[1], source.parents[1] / "segment" / "r.partial"
    with pytest.raises(KeyboardInterrupt):
        segment_train.run(config(source), work, progress=KillAt(5))
    assert load_checkpoint(partial / "checkpoint_latest.pt")["step"] == 3
    with pytest.raises(UdasegError, match="started with other options") as refused:
        segment_train.run(config(source, seed=6, resume=True), work)
    assert refused.value.exit_code == 2 and (partial / "checkpoint_latest.pt").is_file()
    log = Log()
    done = segment_train.run(config(source, seed=6), work, progress=log)
    assert done.summary["steps"] == 8
    assert any(
        "discarding the interrupted run" in line and "other options" in line for line in log.lines
    )
    assert not any(line.startswith("resumed") for line in log.lines)


def test_resume_without_a_checkpoint_refuses_and_leaves_nothing(source):
    work = source.parents[1]
    with pytest.raises(UdasegError, match="no checkpoint to continue") as refused:
        segment_train.run(config(source, resume=True), work)
    assert refused.value.exit_code == 2
    assert not (work / "segment" / "r.partial").exists()
    assert not (work / "segment" / "r").exists()


def test_rebuilt_inputs_are_not_continued(source, tiny_dataset):
    """A checkpoint is continued only on the same store build: a rebuilt store, and the
    interrupted run on the old one starts over."""
    work, partial = source.parents[1], source.parents[1] / "segment" / "r.partial"
    with pytest.raises(KeyboardInterrupt):
        segment_train.run(config(source), work, progress=KillAt(5))
    raw, manifest = tiny_dataset
    preprocess.run(preprocess.PreprocessConfig(dataset=str(manifest), raw=raw), work, force=True)
    log = Log()
    segment_train.run(config(source), work, progress=log)
    assert any("discarding the interrupted run" in line for line in log.lines)
    assert not partial.exists()


def test_the_run_records_its_processes_and_global_batch(source, monkeypatch):
    from udaseg.training import loop

    done = segment_train.run(config(source), source.parents[1])
    assert done.config["world_size"] == 1 and done.config["global_batch_size"] == 2
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert loop.batch_record(2) == {"world_size": 4, "global_batch_size": 8}


# --- examples/slurm/submit.sh, without SLURM (DRY=1 prints the sbatch lines) ---------------------

REPO = Path(__file__).resolve().parents[2]


def submit(tmp_path: Path, pipeline: str, **settings: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "UDASEG_VENV": str(tmp_path / "no-venv"),
        "DRY": "1",
        "WORK": str(tmp_path / "w"),
        **settings,
    }
    return subprocess.run(
        ["bash", str(REPO / "examples" / "slurm" / "submit.sh"), pipeline],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=tmp_path,
    )


def torchrun_batches(stdout: str) -> list[str]:
    """The --set batch_size of every segment-train / adapt (torchrun) job submitted."""
    lines = [line for line in stdout.splitlines() if "segment-train.sbatch" in line]
    lines += [line for line in stdout.splitlines() if "adapt.sbatch" in line]
    return [word for line in lines for word in line.split() if word.startswith("batch_size=")]


def test_submit_divides_the_pipeline_batch_over_the_gpus(tmp_path):
    (tmp_path / "raw").mkdir()
    raw = str(tmp_path / "raw")
    four = submit(tmp_path, "sifa-mmwhs", GPUS="4", RAW=raw)
    assert four.returncode == 0, four.stderr
    # sifa-mmwhs: batch 8 for both bounds and SIFA -> 2 per GPU on 4 GPUs
    assert torchrun_batches(four.stdout) == ["batch_size=2"] * 3
    assert four.stdout.count("--gres=gpu:4") == 3
    kept = submit(tmp_path, "sifa-mmwhs", GPUS="4", RAW=raw, PER_GPU_BATCH="1")
    assert torchrun_batches(kept.stdout) == ["batch_size=8"] * 3
    uneven = submit(tmp_path, "sifa-mmwhs", GPUS="3", RAW=raw)
    assert uneven.returncode != 0 and "does not divide over GPUS=3" in uneven.stderr
    assert uneven.stdout == ""  # refused before any job is submitted


def test_submit_refuses_a_missing_raw_folder_before_submitting_anything(tmp_path):
    missing = submit(tmp_path, "sifa-mmwhs", GPUS="4", RAW=str(tmp_path / "nowhere"))
    assert missing.returncode != 0
    assert f"RAW={tmp_path / 'nowhere'} is not a readable folder" in missing.stderr
    assert missing.stdout == ""
