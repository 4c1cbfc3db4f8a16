"""Which torch device a run uses, at which precision and with how many CPU threads: the one place
``--device`` is checked and ``auto`` resolved, ``--amp`` turned into a precision, and
``--threads`` applied.

Every stage that runs a network (training, inference, translation, style clustering) and the
training loop's runtime resolve their ``device`` option here, so the same names are accepted and
the same mistakes are refused everywhere: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``. They ask
:func:`resolve_precision` whether ``--amp`` means bfloat16 autocast on that device, record its
answer in their config hash, and autocast with :func:`autocast`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from pathlib import Path

from udaseg.errors import UdasegError

DEVICE_PATTERN = r"cpu|cuda(:\d+)?"

#: the precisions a run computes in (what its config records as ``precision``)
BF16, FLOAT32 = "bf16", "float32"

#: ``1``/``0`` overrides the CPU check of :func:`cpu_has_native_bf16` (tests; a CPU whose flags lie)
CPU_BF16_ENV = "UDASEG_CPU_BF16"

#: /proc/cpuinfo flags of CPUs with bfloat16 arithmetic in hardware (Intel Cooper Lake and later,
#: AMD Zen 4 and later); elsewhere torch emulates bf16 and autocast is slower than float32
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def resolve_device(name: str, index: int | None = None) -> str:
    """The device a ``--device`` value names.

    ``auto``: ``cuda`` if torch sees a GPU (``cuda:<index>`` when ``index`` is given: a torchrun
    process's local rank), else ``cpu``. ``cpu``, ``cuda`` and ``cuda:N`` are returned unchanged.

    Raises:
        UdasegError (exit code 2): any other name, or a CUDA device where torch sees no GPU.
    """
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        return "cuda" if index is None else f"cuda:{index}"
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise UdasegError(f'--device "{name}": use cpu, cuda, cuda:N or auto', exit_code=2)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UdasegError(
            f"--device {name}, but torch sees no CUDA GPU",
            hint="use --device cpu, or install the CUDA build of torch on a GPU machine",
            exit_code=2,
        )
    return name


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware: /proc/cpuinfo lists ``avx512_bf16`` or
    ``amx_bf16`` (False where there is no /proc/cpuinfo, e.g. macOS).

    ``UDASEG_CPU_BF16=1`` or ``=0`` overrides the check (tests simulate either CPU with it).

    Raises:
        UdasegError (exit code 2): ``UDASEG_CPU_BF16`` set to anything but 0 or 1.
    """
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override:
        if override not in ("0", "1"):
            raise UdasegError(
                f'{CPU_BF16_ENV}="{override}": use 1 (this CPU has native bf16) or 0 (it has not)',
                hint=f"unset {CPU_BF16_ENV} to read the CPU's flags from {CPUINFO}",
                exit_code=2,
            )
        return override == "1"
    return bool(set(NATIVE_BF16_FLAGS) & _cpu_flags())


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    return frozenset(
        flag
        for line in text.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    )


def resolve_precision(device: str, amp: bool, *, notice: bool = True, stacklevel: int = 2) -> str:
    """What ``--amp`` means on ``device`` (resolved, not ``auto``): ``"bf16"`` (bfloat16
    autocast) on CUDA, and on a CPU with native bf16 (:func:`cpu_has_native_bf16`); otherwise,
    or without ``amp``, ``"float32"``.

    Stages record the answer in their config hash, so on a CPU without native bf16 ``--amp`` and
    ``--no-amp`` are the same run. ``notice``: warn (one line) when ``amp`` falls back to float32.
    """
    if not amp:
        return FLOAT32
    if str(device).startswith("cuda") or cpu_has_native_bf16():
        return BF16
    if notice:
        warnings.warn(
            f"--amp: this CPU has no native bfloat16 ({' or '.join(NATIVE_BF16_FLAGS)}), so the "
            "run computes in float32 (same results and config hash as --no-amp)",
            stacklevel=stacklevel,
        )
    return FLOAT32


def precision_record(device: str, amp: bool) -> dict[str, object]:
    """What a stage records in its config (and hash) for ``--amp`` on ``device``: ``precision``
    (:func:`resolve_precision`, warning about a fallback) and ``amp`` as it took effect (True only
    where it means bf16), so on a CPU without native bf16 ``--amp`` and ``--no-amp`` are one run,
    and where bf16 is used they are two."""
    precision = resolve_precision(device, amp, stacklevel=3)
    return {"amp": precision == BF16, "precision": precision}


def autocast(device: str, precision: str):
    """bfloat16 autocast on ``device`` for ``precision`` ``"bf16"``; a no-op context for float32.

    Under it convolutions and matrix products run in bf16; the stages keep losses, softmax
    probabilities, normalisation statistics, optimiser state and weights in float32.
    """
    import torch

    if precision == BF16:
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: the Slurm variable that says how many CPUs a job step may use
SLURM_CPUS_ENV = "SLURM_CPUS_PER_TASK"


def resolve_threads(threads: int | None) -> int | None:
    """``--threads``: the number given, else ``SLURM_CPUS_PER_TASK`` where Slurm sets it, else
    None (torch's default, one thread per core it sees, which on a shared node is too many)."""
    if threads is not None:
        return int(threads)
    slurm = os.environ.get(SLURM_CPUS_ENV, "").strip()
    return int(slurm) if slurm.isdigit() and int(slurm) > 0 else None


#: torch's intra-op thread count before the first stage of this process changed it
_PROCESS_THREADS: int | None = None


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to :func:`resolve_threads` (``threads``) at a stage's start;
    returns the count in effect. Without a count the process's own default is restored, so a
    stage's ``--threads`` does not carry over to the next stage of a pipeline run in the same
    process. Inter-op threads (parallel independent ops, rare in eager execution) are capped at
    the same count, where torch still allows it (only before its first parallel work in the
    process)."""
    import torch

    global _PROCESS_THREADS
    if _PROCESS_THREADS is None:
        _PROCESS_THREADS = torch.get_num_threads()
    count = resolve_threads(threads)
    if count is None:
        count = _PROCESS_THREADS
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    if torch.get_num_interop_threads() > count:
        with contextlib.suppress(RuntimeError):  # parallel work has started: it stays as it is
            torch.set_num_interop_threads(count)
    return count
