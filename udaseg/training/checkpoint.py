"""Checkpoints and model directories.

A checkpoint (``checkpoint_{latest,best,final}.pt``) is a dict that
``torch.load(weights_only=True)`` reads, holding everything needed to rebuild and resume without
the code's defaults::

    {"format": "udaseg-checkpoint", "version": 1,
     "model": {"name": "unet2d.v1", "kwargs": {"in_channels": 1, "num_classes": 5, ...}},
     "state_dict": {...},                  # main model weights (no DDP "module." prefix)
     "training": {"modules": {...},        # other networks (discriminators, generators, ...)
                  "optimizers": {...}, "schedulers": {...}, "torch_gen": uint8 tensor},
     "step": 1200,                         # optimiser steps done
     "best": {"score": 0.81, "step": 1000} | None,
     "rng": {"torch": uint8 tensor, "numpy": dict, "python": tuple} | None,
     "extra": {...}}                       # e.g. the sampler's state

A model directory (the output of ``segment-train`` and ``adapt``) holds the checkpoints and
``model.json``: the registered name and constructor kwargs, the dimensionality, the classes (in id
order 1..C), the dataset and view it was trained on, the input layout (``in_channels`` and
``context_slices`` K: a 2.5D model reads 2K + 1 neighbouring slices), and ``preprocessing``: the
resolved preprocessing of every store its training data came from (see
:mod:`udaseg.inference.preprocessing`), so ``predict`` needs nothing else, even for raw scans.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from udaseg import layout
from udaseg.errors import UdasegError

if TYPE_CHECKING:
    from udaseg.data.store import Store

FORMAT = "udaseg-checkpoint"
VERSION = 1
# stages whose output is a model directory (checkpoints + model.json) that others may load
MODEL_STAGES = layout.MODEL_STAGES


def rng_state(numpy_rng: np.random.Generator | None = None) -> dict[str, Any]:
    """The RNG states a resumed run must restore to continue identically."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": numpy_rng.bit_generator.state if numpy_rng is not None else None,
        "python": list(random.getstate()[1]),
    }


def restore_rng(state: dict[str, Any], numpy_rng: np.random.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if numpy_rng is not None and state.get("numpy") is not None:
        numpy_rng.bit_generator.state = state["numpy"]
    if state.get("python") is not None:
        random.setstate((3, tuple(state["python"]), None))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file + rename): a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        UdasegError: missing, unreadable, or not a udaseg checkpoint of a known version.
    """
    path = Path(path)
    if not path.is_file():
        raise UdasegError(f"checkpoint {path} does not exist", path=path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise UdasegError(
            f"cannot read checkpoint {path}: {exc}",
            hint="the file is damaged; resume from another checkpoint or retrain",
            path=path,
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UdasegError(f"{path} is not a udaseg checkpoint", path=path)
    if data.get("version") != VERSION:
        raise UdasegError(
            f"{path} has checkpoint version {data.get('version')}, this udaseg reads {VERSION}",
            hint="use the udaseg version that wrote it",
            path=path,
        )
    return data


def write_model_json(directory: Path, info: dict[str, Any]) -> None:
    (Path(directory) / layout.MODEL_JSON).write_text(json.dumps(info, indent=2) + "\n")


def model_info(
    name: str,
    kwargs: dict,
    dims: int,
    hparams: dict,
    store: Store,
    train_on: str,
    preprocessing: dict[str, Any] | None = None,
    context_slices: int = 0,
) -> dict[str, Any]:
    """``model.json`` of a model directory: what ``udaseg predict`` needs to rebuild and apply
    the model (``store`` gives the classes, dataset, domain and view it predicts;
    ``preprocessing`` is :func:`udaseg.inference.preprocessing.record_preprocessing` of the
    training inputs, left out when None; ``context_slices`` K: a 2D model reads each slice with
    its K neighbours on each side, ``kwargs["in_channels"]`` = 2K + 1)."""
    info = {
        "name": name,
        "kwargs": kwargs,
        "dims": dims,
        "classes": list(store.classes),
        "num_classes": len(store.classes) + 1,
        "in_channels": kwargs["in_channels"],
        "context_slices": context_slices,
        "dataset": store.dataset,
        "domain": store.domain,
        "view": store.view,
        "patch_size": list(hparams["patch_size"]),
        "train_on": train_on,
        "hparams": hparams,
    }
    if preprocessing is not None:
        info["preprocessing"] = preprocessing
    return info


def read_model_json(
    directory: Path,
    hint: str = "pass a model directory written by `udaseg segment-train` or `udaseg adapt`",
) -> dict[str, Any]:
    """A run folder's ``model.json`` (a segmenter's, or a translator's, also while it trains in
    its ``.partial`` folder); ``hint`` says which folder the caller wants."""
    path = Path(directory) / layout.MODEL_JSON
    if not path.is_file():
        raise UdasegError(f"{directory} holds no {layout.MODEL_JSON}", hint=hint, path=directory)
    return json.loads(path.read_text(encoding="utf-8"))


def find_checkpoint(
    directory: Path,
    which: str,
    fallbacks: tuple[str, ...] = ("final", "latest"),
    hint: str = "train it first (or wait for its first checkpoint)",
) -> Path:
    """``checkpoint_<which>.pt`` in ``directory``, else the first of ``fallbacks`` present.

    Raises:
        UdasegError: none of them exists (naming the folder and the names tried).
    """
    names = tuple(dict.fromkeys((which, *fallbacks)))
    for name in names:
        path = Path(directory) / layout.checkpoint_name(name)
        if path.is_file():
            return path
    raise UdasegError(
        f"{directory} holds no checkpoint_{{{','.join(names)}}}.pt", hint=hint, path=directory
    )


def load_model(directory: Path, which: str = "best", device: str = "cpu"):
    """Rebuild the model of a model directory from ``checkpoint_<which>.pt`` (falls back to
    ``final`` then ``latest`` when the requested one is absent); returns (model, model.json)."""
    from udaseg.models.registry import create_model

    directory = Path(directory)
    info = read_model_json(directory)
    checkpoint = load_checkpoint(find_checkpoint(directory, which))
    spec = checkpoint["model"]
    kwargs = dict(spec["kwargs"])
    model = create_model(spec["name"], **kwargs)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), info
