"""Training-step time in float32 and bf16 autocast, peak memory and utilisation on this machine,
for every registered segmenter and translator.

Not a test. For each model, in one run:
- seconds per training step (median of ``--steps``, after one warm-up step) in float32 and under
  bfloat16 autocast, timed in one process that alternates the two (same seed, one model instance
  each), so their ratio is measured under the same load. A segmenter step is forward, the
  hparams' loss, backward and the hparams' optimiser (Adam, AdamW or SGD) as ``udaseg
  segment-train`` runs it; a translator step is its ``train_step`` (all of its updates) as
  ``udaseg translate train`` calls it;
- peak resident memory of a fresh process doing only that model at that precision (warm-up + one
  step; ``resource.getrusage`` ru_maxrss, so it includes torch's own ~0.3 GB);
- forward+backward FLOPs per step (``torch.utils.flop_counter``) and the achieved FLOP rate as a
  fraction of this machine's measured matmul throughput in the same dtype (the utilisation).

bf16 is :func:`udaseg.device.autocast` (``torch.autocast("cpu", dtype=torch.bfloat16)``) around
the forward passes; the segmentation losses upcast to float32 themselves, weights and optimiser
state stay float32, channels-last as the training defaults. It is forced here even on a CPU without
native bf16 (where udaseg's ``--amp`` would fall back to float32); the machine line says which.

Sizes: by default those udaseg's CPU route trains at (2D U-Nets 8 x 128x128, sifa-encoder
2 x 256x256, deeplabv2 1 x 256x256, 3D nets 1 x 32x128x128, translators 4 x 128x128 at their
default widths); ``--paper-sizes`` for the papers' (dar-unet.v1 at 32x256x256 is ~40 s/step).

    python benchmarks/train_step.py                                 # everything, CPU-route sizes
    python benchmarks/train_step.py --models unet2d.v1,cyclegan.v1 --steps 5 --json out.json
    python benchmarks/train_step.py --quick                         # tiny variants, 1 step
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PRECISIONS = ("float32", "bf16")
NUM_CLASSES = 5  # background + the four abdominal organs
# batch and input size udaseg's CPU route trains at; other 2D/3D segmenters get DEFAULT_2D/3D
CPU_SIZES = {
    "unet2d.v1": (8, (128, 128)),
    "dual-attention-unet.v1": (8, (128, 128)),
    "sifa-encoder.v1": (2, (256, 256)),
    "deeplabv2.v1": (1, (256, 256)),
    "dar-unet.v1": (1, (32, 128, 128)),
}
DEFAULT_2D, DEFAULT_3D, TRANSLATOR = (8, (128, 128)), (1, (32, 128, 128)), (4, (128, 128))
# the papers' settings where they differ from the registry's hparams (batch_size, patch_size)
PAPER_SIZES = {
    "sifa-encoder.v1": (8, (256, 256)),
    "deeplabv2.v1": (1, (256, 256)),  # ADVENT/AttENT train DeepLab-v2 with batch 1
    "dar-unet.v1": (1, (32, 256, 256)),
}
QUICK_2D, QUICK_3D = (2, (32, 32)), (1, (16, 32, 32))


# --- what to measure -----------------------------------------------------------------------------


def plan(names: list[str], *, paper: bool, quick: bool, batch: int | None, size: str | None):
    """One config per model: {"model", "kind" (segmenter | translator), "batch", "size",
    "kwargs" (constructor arguments: the tiny variant's under ``quick``, else the defaults)}.

    Raises:
        UdasegError (exit code 2): a name neither registry knows, or a ``size`` of the wrong rank.
    """
    from udaseg.errors import UdasegError, look_up_option
    from udaseg.models.registry import list_models

    segmenters = list_models()
    configs = []
    for name in names:
        look_up_option(name, [*segmenters, *_translator_names()], what="model or translator")
        kind = "segmenter" if name in segmenters else "translator"
        spec, dims, (n, shape) = _sizes(name, kind, paper)
        if quick:
            n, shape = QUICK_2D if dims == 2 else QUICK_3D
        shape = [int(s) for s in size.split(",")] if size else list(shape)
        if len(shape) != dims:
            raise UdasegError(
                f"--size {size}: {name} takes {dims}D input",
                hint="give one size per axis, or select 2D and 3D models in separate runs",
                exit_code=2,
            )
        kwargs = dict(spec.tiny) if quick else {}
        configs.append(
            {"model": name, "kind": kind, "batch": batch or int(n), "size": shape, "kwargs": kwargs}
        )
    return configs


def plan_or_exit(names: list[str], **options) -> list[dict]:
    """:func:`plan`, or the error and its fix printed to stderr and the process ended with the
    error's exit code (2): how every benchmark script reports a bad ``--models``/``--size``."""
    from udaseg.errors import UdasegError

    try:
        return plan(names, **options)
    except UdasegError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


def _translator_names() -> list[str]:
    from udaseg.translation.registry import list_translators

    return list_translators()


def _sizes(name: str, kind: str, paper: bool):
    """``(spec, dims, (batch, size))`` at the CPU route's or the papers' (``paper``) size."""
    from udaseg.models.registry import model_spec
    from udaseg.translation.registry import translator_spec

    if kind == "translator":
        spec = translator_spec(name)
        hparams = (spec.hparams["batch_size"], spec.hparams["patch_size"])
        return spec, 2, hparams if paper else TRANSLATOR
    spec = model_spec(name)
    if paper:
        hparams = (spec.hparams["batch_size"], spec.hparams["patch_size"])
        return spec, spec.dims, PAPER_SIZES.get(name, hparams)
    return spec, spec.dims, CPU_SIZES.get(name, DEFAULT_2D if spec.dims == 2 else DEFAULT_3D)


# --- one training step, as the stages run it ------------------------------------------------------


def build_step(config: dict, precision: str):
    """``(step, module)``: a zero-argument training step of a freshly seeded model at
    ``precision`` ("float32" or "bf16") on fixed random data, and the module (for its size)."""
    import torch

    from udaseg.training import loop

    torch.manual_seed(0)
    runtime = loop.setup_runtime("cpu", amp=precision == "bf16", channels_last=True)
    fmt = loop.memory_format(runtime, len(config["size"]))
    if config["kind"] == "segmenter":
        return _segmenter_step(config, precision, runtime, fmt)
    return _translator_step(config, precision, runtime, fmt)


def _segmenter_step(config, precision, runtime, fmt):
    import torch

    from udaseg import device as devices
    from udaseg.losses import create_loss
    from udaseg.models.registry import create_model, model_spec
    from udaseg.training import loop
    from udaseg.training.optim import build_optimizer

    name, size, hparams = config["model"], config["size"], model_spec(config["model"]).hparams
    model = create_model(name, in_channels=1, num_classes=NUM_CLASSES, **config["kwargs"])
    model = loop.prepare_model(model, runtime, len(size))
    optimizer = build_optimizer(model.parameters(), hparams)
    aux_weight = float(hparams.get("aux_weight", 0.0))
    criterion = create_loss(hparams["loss"], NUM_CLASSES, aux_weight=aux_weight)
    images = torch.randn(config["batch"], 1, *size).to(memory_format=fmt)
    labels = torch.randint(0, NUM_CLASSES, (config["batch"], *size))

    def step() -> None:  # udaseg.stages.segment_train's step without the sampler
        model.train()
        with devices.autocast("cpu", precision):
            outputs = model(images)
        total, _ = criterion(outputs, labels)  # float32: the loss upcasts under autocast off
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step, model


def _translator_step(config, precision, runtime, fmt):
    import functools

    import torch

    from udaseg import device as devices
    from udaseg.translation.registry import constructor_kwargs, create_translator, translator_spec

    name, hparams = config["model"], translator_spec(config["model"]).hparams
    translator = create_translator(name, **constructor_kwargs(name, hparams, config["kwargs"]))
    translator = translator.to(runtime.device, memory_format=fmt)
    optimizers = translator.optimizers(hparams)
    # the translator contract: a zero-argument callable giving a fresh context per update
    autocast = functools.partial(devices.autocast, "cpu", precision)

    def images() -> torch.Tensor:  # the stores' range [-1, 1]
        return (torch.rand(config["batch"], 1, *config["size"]) * 2 - 1).to(memory_format=fmt)

    source, target = images(), images()

    def step() -> None:
        translator.train()
        translator.train_step(source, target, optimizers, autocast)

    return step, translator


# --- the child processes -------------------------------------------------------------------------


def time_both(config: dict, steps: int) -> dict:
    """Both precisions in this process, alternating step by step (the first of each round
    alternates too), after one warm-up step each; FLOPs counted on the float32 warm-up."""
    from torch.utils.flop_counter import FlopCounterMode

    built = {p: build_step(config, p) for p in PRECISIONS}
    with FlopCounterMode(display=False) as counter:
        built["float32"][0]()
    built["bf16"][0]()
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for i in range(steps):
        for precision in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:
            started = time.perf_counter()
            built[precision][0]()
            seconds[precision].append(time.perf_counter() - started)
    module = built["float32"][1]
    return {
        "parameters_m": sum(p.numel() for p in module.parameters()) / 1e6,
        "gflop_per_step": counter.get_total_flops() / 1e9,
        "step_seconds": seconds,
    }


def peak_memory(config: dict, precision: str) -> dict:
    """Peak RSS (GB) of this fresh process after a warm-up step and one more step."""
    import resource

    step, _ = build_step(config, precision)
    step()
    step()
    return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def child(what: str, config: dict, precision: str, steps: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    if what == "time":
        return time_both(config, steps)
    return peak_memory(config, precision)


def start_child(args: list[str]) -> subprocess.Popen:
    """Start this script with ``--child``."""
    command = [sys.executable, __file__, "--child", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_result(process: subprocess.Popen) -> tuple[dict | None, str]:
    """A child's last stdout line as JSON, or None and why not."""
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        # a negative code is a signal: SIGKILL (-9) here is almost always the OOM killer
        code = process.returncode
        why = f"killed by signal {-code}" if code < 0 else "failed"
        return None, f"{why}: {stderr.strip()[-1500:]}"
    return json.loads(stdout.strip().splitlines()[-1]), ""


def measure(config: dict, steps: int, threads: int) -> dict:
    """The row of one model: the timing child alone, then the two peak-memory children side by
    side (peak RSS is per process, so running them together only saves time)."""
    common = ["--config", json.dumps(config), "--threads", str(threads)]
    timing, error = child_result(start_child(["time", "--steps", str(steps), *common]))
    row = {**config, "threads": threads, "error": error or None}
    if timing is None:
        return row
    row.update(timing)
    memory = {p: start_child(["memory", "--precision", p, *common]) for p in PRECISIONS}
    for precision in PRECISIONS:
        seconds = statistics.median(timing["step_seconds"][precision])
        peak, error = child_result(memory[precision])
        row[precision] = {
            "seconds_per_step": seconds,
            "steps_per_second": 1.0 / seconds,
            "peak_rss_gb": peak["peak_rss_gb"] if peak else None,
        }
        row["error"] = row["error"] or error or None
    row["ratio"] = row["float32"]["seconds_per_step"] / row["bf16"]["seconds_per_step"]
    return row


# --- the machine ---------------------------------------------------------------------------------


def matmul_flops(dtype_name: str, seconds: float, n: int) -> float:
    """Measured matmul throughput (FLOP/s) of torch's BLAS/oneDNN, n x n, in ``dtype_name``."""
    import torch

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - started)


def machine(threads: int, quick: bool) -> dict:
    """CPU model and bf16 flags (/proc/cpuinfo), torch, threads, date, commit, matmul peaks."""
    import torch

    from udaseg import device as devices

    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    torch.set_num_threads(threads)
    sizes, seconds = ((256,), 0.1) if quick else ((1024, 2048, 4096), 1.0)
    # the best of three sizes: small matrices underestimate what the BLAS can sustain
    peaks = {p: max(matmul_flops(p, seconds, n) for n in sizes) for p in PRECISIONS}
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "bf16_flags": sorted(flags & set(devices.NATIVE_BF16_FLAGS)),
        "native_bf16": devices.cpu_has_native_bf16(),
        "torch": torch.__version__,
        "threads": threads,
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
        "matmul_gflops": {p: peaks[p] / 1e9 for p in PRECISIONS},
        "matmul_sizes": list(sizes),
    }


def _commit() -> str:
    """``git rev-parse --short HEAD``, with "+uncommitted" when the tree differs from it."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "unknown"
    dirty = git("diff", "--quiet", "HEAD", "--").returncode == 1
    return head.stdout.strip() + ("+uncommitted" if dirty else "")


# --- output --------------------------------------------------------------------------------------


HEADER = (
    "| model | batch x size | float32 s/step | bf16 s/step | fp32/bf16 | steps/s fp32 "
    "| steps/s bf16 | peak GB fp32 | peak GB bf16 | GFLOP/step | utilisation fp32 "
    "| utilisation bf16 |"
)


def table(rows: list[dict], info: dict) -> str:
    """The markdown table and the machine line."""
    lines = [HEADER, "|" + " --- |" * (HEADER.count("|") - 1)]
    lines += [table_row(row, info) for row in rows]
    return "\n".join(lines) + "\n\n" + machine_line(info)


def table_row(row: dict, info: dict) -> str:
    """One model's line. Utilisation: achieved FLOP/s over the matmul peak of the same dtype, for
    segmenters (translators' steps have the FLOPs counted but are not rated, as before)."""
    shape = f"{row['batch']} x {'x'.join(map(str, row['size']))}"
    if "ratio" not in row:
        return f"| `{row['model']}` | {shape} | failed: {row['error'][:80]} |"
    f32, b16 = row["float32"], row["bf16"]
    cells = [f"`{row['model']}`", shape]
    cells += [f"{f32['seconds_per_step']:.3g}", f"{b16['seconds_per_step']:.3g}"]
    cells += [f"**{row['ratio']:.2f}x**"]
    cells += [f"{f32['steps_per_second']:.3g}", f"{b16['steps_per_second']:.3g}"]
    cells += ["-" if p["peak_rss_gb"] is None else f"{p['peak_rss_gb']:.2f}" for p in (f32, b16)]
    gflop = row["gflop_per_step"]
    cells += [f"{gflop:.0f}" if gflop >= 100 else f"{gflop:.3g}"]
    for precision in PRECISIONS:
        achieved = row["gflop_per_step"] / row[precision]["seconds_per_step"]
        share = achieved / info["matmul_gflops"][precision]
        cells.append(f"{share:.0%}" if row["kind"] == "segmenter" else "-")
    return "| " + " | ".join(cells) + " |"


def progress_line(row: dict) -> str:
    if "ratio" not in row:
        return f"{row['model']}: {row['error']}"
    f32, b16 = row["float32"]["seconds_per_step"], row["bf16"]["seconds_per_step"]
    return f"{row['model']}: float32 {f32:.3g} s/step, bf16 {b16:.3g}: {row['ratio']:.2f}x"


def machine_line(info: dict) -> str:
    flags = ", ".join(info["bf16_flags"]) or "none (bf16 emulated)"
    peaks = info["matmul_gflops"]
    return (
        f"machine: {info['cpu']} ({info['cores']} cores visible), bf16 flags: {flags}; "
        f"torch {info['torch']}, {info['threads']} thread(s); {info['date']}, commit "
        f"{info['commit']}; matmul peak float32 {peaks['float32']:.1f} / bf16 "
        f"{peaks['bf16']:.1f} GFLOP/s (best of n = {'/'.join(map(str, info['matmul_sizes']))})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names (default: every registered one)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision")
    parser.add_argument("--json", type=Path, help="write the machine and the rows here")
    parser.add_argument("--quick", action="store_true", help="tiny variants and sizes, 1 step")
    parser.add_argument("--paper-sizes", action="store_true", help="the papers' batch and size")
    parser.add_argument("--batch", type=int, help="override every model's batch size")
    parser.add_argument("--size", help="override every model's input size, e.g. 128,128")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--child", choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(
            args.child, json.loads(args.config), args.precision, args.steps, args.threads
        )
        print(json.dumps(result))
        return
    main_run(args)


def main_run(args: argparse.Namespace) -> None:
    from udaseg.models.registry import list_models

    names = args.models.split(",") if args.models else [*list_models(), *_translator_names()]
    steps = 1 if args.quick else args.steps
    configs = plan_or_exit(
        names, paper=args.paper_sizes, quick=args.quick, batch=args.batch, size=args.size
    )
    started = time.perf_counter()
    info = machine(args.threads, args.quick)
    print(machine_line(info), flush=True)
    rows = []
    for config in configs:
        row = measure(config, steps, args.threads)
        rows.append(row)
        print(progress_line(row), flush=True)
    info["seconds"] = round(time.perf_counter() - started, 1)
    info["steps"] = steps
    print("\n" + table(rows, info) + f"; whole run {info['seconds']:.0f} s, {steps} timed step(s)")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    if any(row["error"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
