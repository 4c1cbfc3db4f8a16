"""One training loop for every stage that trains (segment-train now, translate and adapt later).

A stage supplies a :class:`TrainState` (its networks, optimisers, schedulers and random
generators) and a ``step_fn(state) -> dict[str, float]`` doing one optimisation step; the loop
does the rest the same way for all: step counting, schedules, ``metrics.jsonl``, validation and
``checkpoint_best.pt``, ``checkpoint_latest.pt`` every N steps, ``checkpoint_final.pt``, progress,
resume, and rank-aware behaviour under ``torchrun``.

Resume restores the step count, every state dict and every random generator, and cuts
``metrics.jsonl`` back to the checkpoint's step, so a run killed and resumed produces the same
weights and log as one that never stopped. A rerun of the same command continues by itself (a
resubmitted cluster job loses at most ``checkpoint_every`` steps); see :func:`prepare_resume`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udaseg import device as devices
from udaseg import layout
from udaseg.device import resolve_device
from udaseg.errors import UdasegError
from udaseg.progress import NullProgress, Progress
from udaseg.training.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint

# --- runtime: device, precision, distributed ------------------------------------------------


@dataclass
class Runtime:
    """How (not what) to train: none of this changes the configuration hash.

    device: "auto" (CUDA if available), "cpu" or "cuda[:i]"; amp: the ``--amp`` request, whose
    effect on this device is :attr:`precision` (the one exception: the stages record that in
    their config hash); channels_last: NHWC / NDHWC memory format (see :func:`memory_format`);
    compile: try ``torch.compile`` and fall back to eager execution if it fails;
    rank/world_size/local_rank: set from torchrun's environment.
    """

    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    @property
    def precision(self) -> str:
        """``"bf16"`` or ``"float32"``: :func:`udaseg.device.resolve_precision` of device and amp
        (the stage warned about a fallback when it recorded the precision in its config)."""
        return devices.resolve_precision(self.device, self.amp, notice=False)


def setup_runtime(
    device: str = "auto", amp: bool = True, channels_last: bool = True, compile: bool = False
) -> Runtime:
    """Resolve the device (``auto``: this process's GPU under torchrun, see
    :func:`udaseg.device.resolve_device`) and, when launched by torchrun, join the process group.

    Raises:
        UdasegError (exit code 2): a device name torch does not know, or CUDA without a GPU.
    """
    world_size = launched_processes()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device, local_rank)
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return Runtime(device, amp, channels_last, compile, rank, world_size, local_rank)


def launched_processes() -> int:
    """How many processes torchrun started for this run (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_record(batch_size: Any) -> dict[str, int]:
    """What a distributed run records beside its hparams: ``batch_size`` is per process, so the
    batch of one optimiser step is that times the processes, and 1 GPU and 4 are different runs."""
    processes = launched_processes()
    return {"world_size": processes, "global_batch_size": int(batch_size) * processes}


def autocast(runtime: Runtime):
    """bf16 autocast when the runtime's :attr:`~Runtime.precision` is bf16 (CUDA, or a CPU with
    native bf16 under ``--amp``); a no-op context otherwise."""
    return devices.autocast(runtime.device, runtime.precision)


def memory_format(runtime: Runtime, dims: int, instance_norm: bool = False):
    """Channels-last (NHWC, or NDHWC for 3D) with ``--channels-last``, on CUDA and on the CPU;
    else contiguous. Like any change of kernels it can move the last bits of float32 results.

    ``instance_norm``: the module normalises with InstanceNorm (the translators' generators),
    which on the CPU copies channels-last tensors to contiguous and back at every layer, so on
    the CPU those modules stay contiguous. Measured 2026-12-06, same machine, ``cyclegan.v1``
    as the abdominal route trains it (width 32, 6 blocks, batch 2x1x128x128), s per iteration:
    float32 1.85-1.96 channels-last vs 1.68-1.73 contiguous; bf16 1.11-1.16 vs 0.96-0.97.

    Measured 2026-12-06 on this machine: 2-core AVX512-BF16 CPU, torch 2.13, 1 thread, median s per
    train step (forward, ce_dice loss, backward, Adam), round-robin over the configurations:
    unet2d.v1, batch 8x1x128x128: float32 0.765 contiguous vs 0.745 channels-last (min 0.52 vs
    0.42); bf16 0.463 vs 0.374. dar-unet.v1 (tiny), batch 2x1x32x64x64: float32 5.15 vs 2.74;
    bf16 3.37 vs 1.82. So channels-last is on for the CPU too.
    """
    if instance_norm and not runtime.cuda:
        return torch.contiguous_format
    if runtime.channels_last:
        return torch.channels_last if dims == 2 else torch.channels_last_3d
    return torch.contiguous_format


def prepare_model(model: torch.nn.Module, runtime: Runtime, dims: int) -> torch.nn.Module:
    """Move to the device (see :func:`memory_format`), wrap in DDP under torchrun, maybe compile."""
    model = model.to(runtime.device, memory_format=memory_format(runtime, dims))
    if runtime.world_size > 1:
        ids = [torch.device(runtime.device).index] if runtime.cuda else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if runtime.compile:
        import warnings

        # compilation happens at the first forward pass, not here: dynamo's own switch makes a
        # graph that fails to compile run eagerly (with a warning) instead of ending the stage
        from torch import _dynamo

        _dynamo.config.suppress_errors = True
        try:
            model = torch.compile(model)
        except Exception as exc:  # compilation support varies by platform and version
            warnings.warn(f"torch.compile failed ({exc}); training without it", stacklevel=2)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP / torch.compile wrappers (what checkpoints store)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed torch and make CPU runs bit-for-bit repeatable."""
    torch.manual_seed(seed + rank)
    torch.use_deterministic_algorithms(True, warn_only=True)


# --- state and checkpoints --------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything a training run mutates and a checkpoint must hold.

    modules/optimizers/schedulers: by name (the main segmenter is ``"model"``);
    numpy_rng: draws batches; torch_gen: drives augmentation; best: {"score", "step"} of the
    best validation so far; model_spec: {"name", "kwargs"} to rebuild the main model.
    """

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    numpy_rng: np.random.Generator
    torch_gen: torch.Generator
    model_spec: dict[str, Any]
    step: int = 0
    best: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        modules = {name: unwrap(m).state_dict() for name, m in self.modules.items()}
        return {
            "model": self.model_spec,
            "state_dict": modules.get("model"),
            "training": {
                "modules": {k: v for k, v in modules.items() if k != "model"},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "torch_gen": self.torch_gen.get_state(),
            },
            "step": self.step,
            "best": self.best,
            "rng": rng_state(self.numpy_rng),
            "extra": self.extra,
        }

    def load(self, payload: dict[str, Any]) -> None:
        training = payload["training"]
        if "model" in self.modules:
            unwrap(self.modules["model"]).load_state_dict(payload["state_dict"])
        for name, state in training["modules"].items():
            unwrap(self.modules[name]).load_state_dict(state)
        for name, state in training["optimizers"].items():
            self.optimizers[name].load_state_dict(state)
        for name, state in training["schedulers"].items():
            self.schedulers[name].load_state_dict(state)
        self.torch_gen.set_state(training["torch_gen"])
        restore_rng(payload["rng"], self.numpy_rng)
        self.step, self.best, self.extra = payload["step"], payload["best"], payload["extra"]


def resume_from(state: TrainState, work: Path) -> bool:
    """Load ``work/checkpoint_latest.pt`` into ``state`` if present; cut the log back to it."""
    path = Path(work) / layout.checkpoint_name("latest")
    if not path.is_file():
        return False
    state.load(load_checkpoint(path))
    truncate_metrics(Path(work) / layout.METRICS, state.step)
    return True


def resume_key(config_hash: str, inputs: dict[str, dict[str, Any]]) -> str:
    """What a checkpoint must match to be continued: the run's config hash and the builds of its
    input artifacts (their manifest hashes), so a run whose stores were rebuilt starts over
    rather than continuing on weights trained on the old data."""
    builds = sorted((name, str(record.get("manifest_hash"))) for name, record in inputs.items())
    text = json.dumps([config_hash, builds])
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def building(artifact_dir: Path, runtime: Runtime) -> Iterator[Path]:
    """:func:`udaseg.artifacts.building` for a training run: the ``.partial`` folder is kept to
    resume from, but a run that fails before its first ``checkpoint_latest.pt`` (a refused
    option, an unreadable store) leaves nothing behind, having nothing to resume."""
    from udaseg import artifacts

    with artifacts.building(artifact_dir, keep_partial=True) as work:
        try:
            yield work
        except BaseException:
            if runtime.is_main and not (work / layout.checkpoint_name("latest")).is_file():
                shutil.rmtree(work, ignore_errors=True)
            raise


def prepare_resume(
    work: Path,
    key: str,
    resume: bool,
    progress: Progress,
    runtime: Runtime | None = None,
) -> bool:
    """Decide what happens to an interrupted run left in ``work`` (the ``.partial`` folder);
    True when the stage is to continue it (:func:`resume_from`).

    Its ``checkpoint_latest.pt`` is continued when it was made with the same ``key``
    (:func:`resume_key`, kept in ``TrainState.extra["config_hash"]``): the continuation ends with
    the same weights and log as an uninterrupted run. A run made with other options or inputs is
    discarded with a log line saying why; a run killed before its first checkpoint is cleared
    (its log would otherwise be written twice). ``resume`` makes continuing a must.

    Raises:
        UdasegError (exit code 2): ``resume`` and no checkpoint to continue, or one made with
            other options or inputs.
    """
    work = Path(work)
    latest = work / layout.checkpoint_name("latest")
    saved = load_checkpoint(latest) if latest.is_file() else None
    made_with = saved["extra"].get("config_hash") if saved is not None else None
    if saved is not None and made_with == key:
        return True
    if resume:
        why = (
            "it has no checkpoint to continue from"
            if saved is None
            else f"it was started with other options or inputs (checkpoint of step {saved['step']})"
        )
        raise UdasegError(
            f"cannot resume {work}: {why}",
            hint="rerun with the interrupted run's options, or without --resume to start over",
            path=work,
            exit_code=2,
        )
    log = progress.log if runtime is None or runtime.is_main else (lambda _: None)
    if saved is not None:
        reason = f"discarding the interrupted run in {work} (step {saved['step']}): "
        reason += "it was started with other options or inputs, so it cannot be continued"
        log(reason)
    elif any(work.iterdir()):
        log(f"clearing {work}: the interrupted run stopped before its first checkpoint")
    _clear(work, runtime)
    return False


def _clear(work: Path, runtime: Runtime | None) -> None:
    """Empty ``work``. Under torchrun every rank has read the checkpoint before rank 0 deletes
    it (the first barrier), and none goes on before it is gone (the second)."""
    distributed = runtime is not None and runtime.world_size > 1
    if distributed:
        torch.distributed.barrier()
    if runtime is None or runtime.is_main:
        for item in work.iterdir():
            item.unlink() if item.is_file() else shutil.rmtree(item)
    if distributed:
        torch.distributed.barrier()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (by the run that was killed after its checkpoint)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(line + "\n" for line in kept))


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class LoopSchedule:
    """steps: total optimiser steps; checkpoint_every / val_every / log_every: cadence in steps
    (0 disables validation during training; it still runs once at the end when a validator
    is given)."""

    steps: int
    checkpoint_every: int = 200
    val_every: int = 500
    log_every: int = 10


def run_loop(
    state: TrainState,
    work: Path,
    schedule: LoopSchedule,
    step_fn: Callable[[TrainState], dict[str, float]],
    *,
    validate_fn: Callable[[], dict[str, Any]] | None = None,
    runtime: Runtime | None = None,
    progress: Progress | None = None,
    description: str = "train",
    select_best: bool = True,
) -> dict[str, Any]:
    """Train ``state`` up to ``schedule.steps``; returns the last validation result (or {}).

    ``validate_fn`` returns ``{"score": float, ...}``: with ``select_best`` a higher score makes a
    new ``checkpoint_best.pt``; without, validation is only logged (adaptation, whose validation
    uses target labels that must not pick the model). Only rank 0 writes files and reports
    progress.
    """
    runtime = runtime or Runtime()
    progress = progress if runtime.is_main else NullProgress()
    progress = progress or NullProgress()
    log = MetricsLog(Path(work) / layout.METRICS, enabled=runtime.is_main)
    task = progress.task(description, schedule.steps)
    progress.advance(task, state.step)
    last_val: dict[str, Any] = {}
    started = time.perf_counter()
    while state.step < schedule.steps:
        parts = step_fn(state)
        state.step += 1
        for scheduler in state.schedulers.values():
            scheduler.step()
        step = state.step
        if step % schedule.log_every == 0 or step == schedule.steps:
            # the segmenter's learning rate where there is one (adaptation has several optimisers)
            main = state.optimizers.get("model") or next(iter(state.optimizers.values()))
            lr = main.param_groups[0]["lr"]
            log.write(
                {
                    "step": step,
                    "lr": lr,
                    **parts,
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
        if validate_fn and (
            step == schedule.steps or (schedule.val_every and step % schedule.val_every == 0)
        ):
            last_val = _validate(state, work, validate_fn, log, runtime, select_best)
        if step % schedule.checkpoint_every == 0 or step == schedule.steps:
            _save(state, Path(work) / layout.checkpoint_name("latest"), runtime)
        # a custom field, not "total": rich would take that as the bar's length
        progress.advance(task, 1, loss=round(float(parts.get("total", 0.0)), 4))
    _save(state, Path(work) / layout.checkpoint_name("final"), runtime)
    return last_val


def _validate(state, work, validate_fn, log, runtime, select_best) -> dict[str, Any]:
    result = validate_fn() if runtime.is_main else {}
    if runtime.world_size > 1:
        torch.distributed.barrier()
    if not result:
        return result
    log.write({"step": state.step, "val": result})
    if select_best and (state.best is None or result["score"] > state.best["score"]):
        state.best = {"score": result["score"], "step": state.step}
        _save(state, Path(work) / layout.checkpoint_name("best"), runtime)
    return result


def _save(state: TrainState, path: Path, runtime: Runtime) -> None:
    if runtime.is_main:
        save_checkpoint(path, state.payload())


class MetricsLog:
    """Append-only JSON lines, flushed per line so a killed run keeps what it logged."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record, default=float) + "\n")
