"""Check a GPU node: udaseg's CUDA paths end to end, and the paper models' speed and memory.

One run, at most ``--budget-s`` seconds (default 460: under 8 minutes with start-up), in four parts,
each with its own share of the time (what a part leaves unused goes to the next); a command that
overruns is killed with its process group and reported as timed out, never left hanging:

- pipelines: ``udaseg run phantom-demo --preset smoke`` and ``phantom-methods --preset smoke`` on
  the device (every stage, every adaptation method; bf16 autocast and channels-last, the defaults);
- torchrun: ``segment-train`` launched by ``torch.distributed.run``, which must publish a model
  recording its world size; with one process udaseg starts no process group, so a second check
  takes one DDP step of a udaseg network under torchrun (NCCL on CUDA, gloo on a CPU);
- models: training steps/s and peak memory of each paper model at its paper size (bf16 autocast,
  channels-last, the registry's optimiser and loss, deterministic algorithms as training sets
  them; on a GPU a fresh process each);
- stages: what the pipelines cannot pass: ``segment-train`` and ``adapt --method advent.v1`` with
  ``--compile`` (a fallback to eager mode fails the check), and the 3D route (``segment-train
  --model dar-unet.v1`` with channels-last-3d, then a 3D sliding-window ``predict``). Last, as
  compiling takes the least predictable time: it gets whatever the others left.

    python benchmarks/gpu_check.py                         # on a GPU node: about 7 minutes
    python benchmarks/gpu_check.py --device cpu --tiny     # the same parts, tiny, on a CPU (CI)

``--tiny`` runs two stages of phantom-demo, no ``--compile`` (unless asked), no 3D stages. Prints a
table and writes it as JSON (``--out``); exits 1 if any check failed, and then keeps the workspace
with every command's output (``logs/``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# model -> (batch, input size) as the papers train them; DAR-UNet's paper reports 23.5 GB
PAPER_SETTINGS: dict[str, tuple[int, tuple[int, ...]]] = {
    "sifa-encoder.v1": (8, (256, 256)),
    "deeplabv2.v1": (1, (256, 256)),  # ADVENT / AttENT train DeepLab-v2 with batch 1
    "dar-unet.v1": (2, (32, 256, 256)),
}
PAPER_MEMORY_GB = {"dar-unet.v1": 23.5}
TINY_SETTINGS: dict[int, tuple[int, tuple[int, ...]]] = {2: (2, (32, 32)), 3: (1, (8, 32, 32))}
NUM_CLASSES = 5  # background + the four abdominal organs

# each part's share of the budget, in running order
PART_SHARES = {"pipelines": 0.36, "torchrun": 0.10, "models": 0.26, "stages": 0.28}
PIPELINES = ("phantom-demo", "phantom-methods")
# phantom-demo's first stages, which make the data the other parts train on: all of it that
# --tiny runs (CI has two cores; every stage is covered by the e2e tests), and what --parts
# without pipelines runs first
DATA_STAGES = "phantom,preprocess"
DATA = "preprocessed/phantom-abdomen"  # the phantom's stores, relative to the workspace
KILL_GRACE_S = 5
SCRIPT = str(Path(__file__).resolve())  # what the child processes run


@dataclass
class Check:
    part: str
    name: str
    ok: bool = False
    seconds: float = 0.0
    detail: str = ""
    timed_out: bool = False
    measures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    device: str
    tiny: bool
    work: Path
    logs: Path
    compile: bool
    nproc: int
    steps: int
    pipelines: list[str]
    only: str | None = None  # the stages of the pipelines to run (None: all)
    checks: list[Check] = field(default_factory=list)


# --- running commands within a deadline -----------------------------------------------------------


def run_command(
    ctx: Context, name: str, command: list[str], timeout_s: float
) -> tuple[int | None, str, str, float]:
    """Run ``command`` with stdout and stderr in log files; kill its whole process group (torchrun
    and its workers too) once ``timeout_s`` has passed. Returns (exit code or None on time-out,
    stdout, stderr, seconds)."""
    slug = name.replace(" ", "_").replace("/", "-")
    out_path, err_path = ctx.logs / f"{slug}.out", ctx.logs / f"{slug}.err"
    started = time.perf_counter()
    if timeout_s < 1:
        return None, "", "not started: the part's time was spent", 0.0
    with open(out_path, "w") as out, open(err_path, "w") as err:
        print(f"[gpu_check] {name}: {' '.join(command)}", file=sys.stderr, flush=True)
        process = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
        try:
            code: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop(process)
            code = None
    seconds = time.perf_counter() - started
    return code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), seconds


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group started for ``process``; SIGKILL what is left of it after a
    grace period (a launcher's workers, compile workers)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def udaseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "udaseg", *args]


def command_check(
    ctx: Context, part: str, name: str, command: list[str], deadline: float, verify=None
) -> tuple[Check, str]:
    """Run one command as a check; returns it and the command's stdout. It passes when the
    command exits 0 and ``verify(stdout, stderr)`` (if given) returns an empty string; otherwise
    that string (or the stderr's tail) says why."""
    check = Check(part, name)
    code, out, err, check.seconds = run_command(ctx, name, command, deadline - time.time())
    if code is None:
        check.timed_out = True
        check.detail = err if not out and err.startswith("not started") else "timed out"
    elif code != 0:
        check.detail = f"exit {code}: {tail(err)}"
    else:
        try:
            problem = verify(out, err) if verify else ""
        except (ValueError, KeyError, IndexError) as exc:  # no JSON where one was due
            problem = f"unexpected output ({exc!r}): {tail(out or err)}"
        check.ok, check.detail = not problem, problem
    ctx.checks.append(check)
    return check, out


def published(path: Path, stage: str, **config: Any) -> str:
    """'' when ``path`` is a complete ``stage`` artifact whose config has ``config``; else why."""
    from udaseg.artifacts import load_manifest

    try:
        manifest = load_manifest(path)
    except Exception as exc:  # StaleInputError and friends: the message is the finding
        return f"no complete artifact at {path}: {exc}"
    if manifest.stage != stage:
        return f"{path} was made by {manifest.stage}, not {stage}"
    for key, value in config.items():
        if manifest.config.get(key) != value:
            return f"{path}: {key} = {manifest.config.get(key)!r}, expected {value!r}"
    return ""


def no_compile_fallback(err: str) -> str:
    if "torch.compile failed" in err:
        return "torch.compile fell back to eager mode: " + tail(
            "\n".join(line for line in err.splitlines() if "torch.compile failed" in line), 1
        )
    return ""


# --- pipelines: the phantom's, every stage --------------------------------------------------------


def part_pipelines(ctx: Context, deadline: float) -> None:
    for pipeline in ctx.pipelines:
        command = udaseg(
            "run", pipeline, "--preset", "smoke", "--work", str(ctx.work),
            "--var", f"device={ctx.device}", "--json",
        )  # fmt: skip
        if ctx.only:
            command += ["--only", ctx.only]

        def verify(out: str, err: str) -> str:
            stages = json.loads(out)["stages"]
            bad = [s["stage"] for s in stages if s["status"] not in ("ran", "skipped")]
            return f"stages not run: {bad}" if bad else ""

        check, out = command_check(
            ctx, "pipelines", f"pipeline {pipeline}", command, deadline, verify
        )
        if check.ok:
            check.detail = f"{len(json.loads(out)['stages'])} stages"


# --- stages: what the pipelines cannot pass: --compile, and the 3D route --------------------------


def part_stages(ctx: Context, deadline: float) -> None:
    w = ctx.work
    device = ["--device", ctx.device, "--channels-last"]
    compiled = ["--compile"] if ctx.compile else ["--no-compile"]
    batch, patch = ("4", "32,32") if ctx.tiny else ("8", "64,64")
    common = ["--set", f"steps={ctx.steps}", "--set", f"batch_size={batch}"]
    common += ["--set", f"patch_size={patch}", "--seed", "0", "--force", "--json"]
    small = ["--set", "base_channels=4", "--set", "depth=3"] if ctx.tiny else []
    tag = "compiled" if ctx.compile else "eager"
    seg_dir, adapt_dir = w / "segment" / f"check-2d-{tag}", w / "adapt" / f"check-advent-{tag}"
    seg, _ = command_check(
        ctx, "stages", f"segment-train 2D {tag}",
        udaseg(
            "segment-train", "--model", "unet2d.v1", "--train-on", "source",
            "--source", str(w / f"{DATA}__ct"), "--work", str(w), "--name", seg_dir.name,
            *common, *small, *device, *compiled, "--val-every", "0",
        ),
        deadline,
        lambda out, err: no_compile_fallback(err) or published(seg_dir, "segment-train"),
    )  # fmt: skip
    if seg.ok:
        command_check(
            ctx, "stages", f"adapt advent {tag}",
            udaseg(
                "adapt", "--method", "advent.v1", "--source", str(w / f"{DATA}__ct"),
                "--target", str(w / f"{DATA}__mr"), "--init", str(seg_dir), "--work", str(w),
                "--name", adapt_dir.name, *common, "--set", "lr=1e-4", "--set", "optimizer=adam",
                "--set", "d_width=16", *device, *compiled,
            ),
            deadline,
            lambda out, err: no_compile_fallback(err) or published(adapt_dir, "adapt"),
        )  # fmt: skip
    else:
        ctx.checks.append(Check("stages", f"adapt advent {tag}", detail="not run: no segmenter"))
    if ctx.tiny:  # a 3D step costs seconds on a CPU; the models part runs DAR-UNet tiny
        return
    # 3D: DAR-UNet (small widths on the phantom) trained with NDHWC tensors, then predicted
    seg3d, _ = command_check(
        ctx, "stages", "segment-train 3D dar-unet",
        udaseg(
            "segment-train", "--model", "dar-unet.v1", "--train-on", "source",
            "--source", str(w / f"{DATA}__ct"), "--work", str(w), "--name", "check-3d",
            "--set", f"steps={ctx.steps}", "--set", "batch_size=2", "--set", "patch_size=8,64,64",
            "--set", "channels=[8,16,32,64,64]", "--seed", "0",
            *device, "--val-every", "0", "--force", "--json",
        ),
        deadline,
        lambda out, err: published(w / "segment" / "check-3d", "segment-train"),
    )  # fmt: skip
    if seg3d.ok:
        command_check(
            ctx, "stages", "predict 3D sliding window",
            udaseg(
                "predict", "--model-dir", str(w / "segment" / "check-3d"),
                "--data", str(w / f"{DATA}__mr"), "--split", "all", "--work", str(w),
                "--name", "check-3d", "--checkpoint", "final", "--device", ctx.device,
                "--force", "--json",
            ),
            deadline,
            lambda out, err: published(w / "predict" / "check-3d", "predict"),
        )  # fmt: skip
    else:
        ctx.checks.append(Check("stages", "predict 3D sliding window", detail="not run: no model"))


# --- torchrun: a stage launched as under SLURM, and DDP -------------------------------------------


def torchrun(nproc: int, *args: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc_per_node", str(nproc), *args]


def part_torchrun(ctx: Context, deadline: float) -> None:
    w = ctx.work
    size = ["--set", "base_channels=4", "--set", "depth=3"] if ctx.tiny else []
    patch = "32,32" if ctx.tiny else "64,64"
    # under torchrun --device auto takes the process's own GPU (cuda:LOCAL_RANK)
    device = "auto" if ctx.device.startswith("cuda") else ctx.device
    artifact = w / "segment" / "check-torchrun"
    command_check(
        ctx, "torchrun", f"torchrun segment-train x{ctx.nproc}",
        torchrun(
            ctx.nproc, "-m", "udaseg", "segment-train", "--model", "unet2d.v1",
            "--train-on", "source", "--source", str(w / f"{DATA}__ct"), "--work", str(w),
            "--name", "check-torchrun", "--set", f"steps={ctx.steps}", "--set", "batch_size=4",
            "--set", f"patch_size={patch}", *size, "--device", device, "--val-every", "0",
            "--force", "--json",
        ),
        deadline,
        lambda o, e: published(artifact, "segment-train", world_size=ctx.nproc),
    )  # fmt: skip
    # one process: udaseg starts no process group, so check the backend and DDP here
    check, out = command_check(
        ctx, "torchrun", "torchrun DDP step x1",
        torchrun(1, SCRIPT, "--child", "ddp", "--device", ctx.device),
        deadline,
        lambda o, e: "" if last_json(o)["ok"] else tail(o),
    )  # fmt: skip
    if check.ok:
        result = last_json(out)
        check.detail = f"{result['backend']}, all_reduce {result['all_reduce']}"
        if result["warnings"]:
            check.detail += "; warned: " + " | ".join(result["warnings"])


def child_ddp(device: str) -> dict[str, Any]:
    """Under torchrun: join the process group (NCCL on CUDA), wrap a tiny udaseg U-Net in DDP the
    way the training loop does, take one bf16 channels-last step, all_reduce and barrier."""
    import torch
    import torch.distributed as dist

    from udaseg.models.registry import create_model, model_spec
    from udaseg.training import loop

    runtime = loop.setup_runtime("auto" if device.startswith("cuda") else device)
    backend = "nccl" if runtime.cuda else "gloo"
    dist.init_process_group(backend)
    model = create_model("unet2d.v1", in_channels=1, num_classes=3, **model_spec("unet2d.v1").tiny)
    model = model.to(runtime.device, memory_format=loop.memory_format(runtime, 2))
    ids = [torch.device(runtime.device).index] if runtime.cuda else None
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    x = torch.randn(2, 1, 32, 32, device=runtime.device)
    x = x.to(memory_format=loop.memory_format(runtime, 2))
    # DDP's warnings (e.g. gradient strides that do not match its buckets under channels-last)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with loop.autocast(runtime):
            loss = model(x)["logits"].float().mean()
        loss.backward()
    total = torch.ones(1, device=runtime.device)
    dist.all_reduce(total)
    dist.barrier()
    dist.destroy_process_group()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return {
        "ok": float(total) == world_size,
        "backend": backend,
        "all_reduce": float(total),
        "warnings": sorted({str(w.message).splitlines()[0][:200] for w in caught}),
    }


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object a child printed last."""
    return json.loads(stdout.strip().splitlines()[-1])


# --- models: the paper models' training steps -----------------------------------------------------


def part_models(ctx: Context, deadline: float) -> None:
    names = list(PAPER_SETTINGS)
    # on a GPU a fresh process per model: its own peak memory, and an OOM ends only it;
    # --tiny: one process for all, as a CPU spends seconds importing torch into each
    groups = [names] if ctx.tiny else [[name] for name in names]
    for i, group in enumerate(groups):
        share = (deadline - time.time()) / (len(groups) - i)
        command = [
            sys.executable, SCRIPT, "--child", "model", "--model", ",".join(group),
            "--device", ctx.device, *(["--tiny"] if ctx.tiny else []),
            # half the share for timed steps, the rest for start-up, warm-up and cuDNN autotune
            "--time-cap", f"{max(share * 0.5 / len(group), 1.0):.1f}",
        ]  # fmt: skip
        code, out, err, seconds = run_command(ctx, f"model {group[0]}", command, share)
        results = {}
        for line in out.splitlines():
            if line.startswith("{"):
                result = json.loads(line)
                results[result["model"]] = result
        for name in group:
            batch, size = model_setting(name, ctx.tiny)
            check = Check("models", f"model {name} {batch}x{'x'.join(map(str, size))}")
            result = results.get(name)
            if result is not None:
                check.ok, check.detail = result["ok"], result.get("error", "")
                check.seconds = result["seconds"]
                check.measures = {k: v for k, v in result.items() if k not in ("ok", "error")}
                if result.get("warnings") and not check.detail:
                    check.detail = f"{len(result['warnings'])} torch warning(s): see the JSON"
            else:
                check.timed_out, check.seconds = code is None, seconds
                check.detail = "timed out" if code is None else f"exit {code}: {tail(err)}"
            if name in PAPER_MEMORY_GB:
                check.measures["paper_memory_gb"] = PAPER_MEMORY_GB[name]
            ctx.checks.append(check)


def model_setting(name: str, tiny: bool) -> tuple[int, tuple[int, ...]]:
    """(batch, input size) of ``name``: the paper's, or a tiny one."""
    from udaseg.models.registry import model_spec

    return TINY_SETTINGS[model_spec(name).dims] if tiny else PAPER_SETTINGS[name]


def child_model(name: str, device: str, tiny: bool, time_cap: float) -> dict[str, Any]:
    """Train ``name`` on random data the way ``segment-train`` does (its runtime, optimiser, loss,
    autocast and memory format) and time it: warm-up steps, then up to 20 timed steps or
    ``time_cap`` seconds."""
    import torch

    from udaseg.losses import create_loss
    from udaseg.models.registry import create_model, model_spec
    from udaseg.training import loop
    from udaseg.training.optim import build_optimizer

    begun = time.perf_counter()
    spec = model_spec(name)
    batch, size = model_setting(name, tiny)
    runtime = loop.setup_runtime(device, amp=True, channels_last=True)
    loop.seed_everything(0)  # as training does (deterministic algorithms where they exist)
    kwargs = dict(spec.tiny) if tiny else {}
    model = loop.prepare_model(
        create_model(name, in_channels=1, num_classes=NUM_CLASSES, **kwargs), runtime, spec.dims
    )
    optimizer = build_optimizer(model.parameters(), spec.hparams)
    criterion = create_loss(
        spec.hparams["loss"], NUM_CLASSES, aux_weight=float(spec.hparams.get("aux_weight", 0.0))
    )
    fmt = loop.memory_format(runtime, spec.dims)
    images = torch.randn(batch, 1, *size, device=runtime.device).to(memory_format=fmt)
    labels = torch.randint(0, NUM_CLASSES, (batch, *size), device=runtime.device)
    model.train()

    def step() -> None:
        with loop.autocast(runtime):
            outputs = model(images)
        total, _ = criterion(outputs, labels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    def sync() -> None:
        if runtime.cuda:
            torch.cuda.synchronize()

    result: dict[str, Any] = {"model": name, "batch": batch, "size": list(size), "ok": False}
    if runtime.cuda:
        result["gpu"] = torch.cuda.get_device_name(torch.device(runtime.device))
    try:
        # what torch warns about once (ops without a deterministic kernel, fallbacks): kept
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(1 if tiny else 3):
                step()
            sync()
        result["warnings"] = sorted({str(w.message).splitlines()[0][:200] for w in caught})
        if runtime.cuda:
            torch.cuda.reset_peak_memory_stats()
        steps, started = 0, time.perf_counter()
        while steps < (1 if tiny else 20) and (
            steps == 0 or time.perf_counter() - started < time_cap
        ):
            step()
            sync()
            steps += 1
        seconds = time.perf_counter() - started
    except torch.cuda.OutOfMemoryError as exc:
        result["error"] = f"out of GPU memory: {str(exc).splitlines()[0]}"
        result["seconds"] = time.perf_counter() - begun
        return result
    result.update(ok=True, timed_steps=steps, steps_per_s=steps / seconds)
    result["seconds"] = time.perf_counter() - begun
    if runtime.cuda:
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
    else:  # the process's peak resident memory (with --tiny, of all models so far)
        result["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return result


# --- the run --------------------------------------------------------------------------------------

PARTS = {
    "pipelines": part_pipelines,
    "torchrun": part_torchrun,
    "models": part_models,
    "stages": part_stages,
}


def run_parts(ctx: Context, parts: list[str], budget_s: float) -> None:
    """Each part gets its share of what is left, so time one part leaves goes to the next."""
    ends = time.time() + budget_s
    for i, part in enumerate(parts):
        remaining = [PART_SHARES[p] for p in parts[i:]]
        share = PART_SHARES[part] / sum(remaining)
        deadline = time.time() + max(0.0, ends - time.time()) * share
        started = time.time()
        try:
            PARTS[part](ctx, deadline)
        except Exception as exc:  # a bug in a check must not hide the other parts' results
            ctx.checks.append(Check(part, f"{part} (check script)", detail=repr(exc)))
        print(f"[gpu_check] {part}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)


def environment(device: str) -> dict[str, Any]:
    import torch

    env = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if device.startswith("cuda"):
        env["gpus"] = torch.cuda.device_count()
    return env


def report(ctx: Context, env: dict[str, Any], budget_s: float, seconds: float) -> dict[str, Any]:
    ok = bool(ctx.checks) and all(c.ok for c in ctx.checks)
    gpu = next((c.measures.get("gpu") for c in ctx.checks if c.measures.get("gpu")), None)
    print(
        f"\nudaseg GPU check on {gpu or env['device']} (torch {env['torch']}, CUDA {env['cuda']})"
    )
    print(f"{'check':<44} {'result':<9} {'seconds':>8}  detail")
    for c in ctx.checks:
        result = "pass" if c.ok else ("TIMEOUT" if c.timed_out else "FAIL")
        print(f"{c.name:<44} {result:<9} {c.seconds:>8.1f}  {c.detail[:160]}")
    models = [c for c in ctx.checks if c.part == "models" and "steps_per_s" in c.measures]
    if models:
        print(f"\n{'model':<18} {'batch x size':<16} {'steps/s':>8} {'peak GB':>8}  paper")
        for c in models:
            m = c.measures
            shape = f"{m['batch']}x{'x'.join(map(str, m['size']))}"
            paper = f"{m['paper_memory_gb']} GB" if "paper_memory_gb" in m else ""
            print(
                f"{m['model']:<18} {shape:<16} {m['steps_per_s']:>8.2f} "
                f"{m['peak_memory_gb']:>8.2f}  {paper}"
            )
    print(
        f"\n{'all checks passed' if ok else 'FAILED'} in {seconds:.0f} s (budget {budget_s:.0f} s)"
    )
    return {
        "ok": ok,
        "seconds": round(seconds, 1),
        "budget_s": budget_s,
        "environment": {**env, "gpu": gpu},
        "checks": [asdict(c) for c in ctx.checks],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cuda", help="cuda or cpu (pick a GPU with CUDA_VISIBLE_DEVICES)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, a few steps (CI on CPU)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON report")
    parser.add_argument("--budget-s", type=float, default=460.0, help="seconds for all parts")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma list of parts to run")
    parser.add_argument("--work", type=Path, help="workspace (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the workspace when all pass")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="--compile the training stages (default: on CUDA only; a CPU compile takes minutes)",
    )
    parser.add_argument("--nproc", type=int, default=1, help="torchrun processes (one per GPU)")
    parser.add_argument(
        "--pipelines",
        help=f"comma list (default: {','.join(PIPELINES)}; with --tiny: phantom-demo, some stages)",
    )
    # a child process's job (models, DDP): not for the command line
    parser.add_argument("--child", choices=["model", "ddp"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--time-cap", type=float, default=10.0, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.child == "model":
        for name in args.model.split(","):
            print(json.dumps(child_model(name, args.device, args.tiny, args.time_cap)), flush=True)
        return 0
    if args.child == "ddp":
        print(json.dumps(child_ddp(args.device)))
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"error: unknown part(s) {unknown}; choose from {list(PARTS)}", file=sys.stderr)
        return 2
    cuda = args.device.startswith("cuda")
    if cuda:
        import torch

        if not torch.cuda.is_available():
            print(
                f"error: --device {args.device}, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}); use --device cpu --tiny on a CPU",
                file=sys.stderr,
            )
            return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="udaseg-gpu-check-"))
    work = work.resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pipelines = args.pipelines.split(",") if args.pipelines else None
    ctx = Context(
        device=args.device,
        tiny=args.tiny,
        work=work,
        logs=logs,
        compile=cuda if args.compile is None else args.compile,
        nproc=args.nproc,
        steps=1 if args.tiny else 5,
        pipelines=pipelines or (["phantom-demo"] if args.tiny else list(PIPELINES)),
        only=DATA_STAGES if args.tiny else None,
    )
    if "pipelines" not in parts and {"torchrun", "stages"} & set(parts):
        # the phantom's stores first, so one part can be rerun alone
        ctx.pipelines, ctx.only = ["phantom-demo"], DATA_STAGES
        parts.insert(0, "pipelines")
    env = environment(args.device)
    started = time.time()
    run_parts(ctx, parts, args.budget_s)
    summary = report(ctx, env, args.budget_s, time.time() - started)
    summary["workspace"] = str(work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"report: {args.out}")
    if summary["ok"] and not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"workspace and logs: {work} (logs/*.out, *.err)")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
