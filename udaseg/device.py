"""Which torch device a run uses: the one place ``--device`` is checked and ``auto`` resolved.

Every stage that runs a network (training, inference, translation, style clustering) and the
training loop's runtime resolve their ``device`` option here, so the same names are accepted and
the same mistakes are refused everywhere: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
"""

from __future__ import annotations

import re

from udaseg.errors import UdasegError

DEVICE_PATTERN = r"cpu|cuda(:\d+)?"


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
