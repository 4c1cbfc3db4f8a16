"""Model directories to segment with: the ``segment-train`` / ``adapt`` output, checked and
described for the manifest of the run that uses it.

A model directory holds ``model.json`` (registered name, kwargs, dims, classes, view, patch size,
input channels and the 2.5D ``context_slices``; see :mod:`udaseg.training.checkpoint`) and
``checkpoint_{best,final,latest}.pt``; it is an artifact when it also holds ``manifest.json``.
The network itself is rebuilt by :func:`udaseg.training.checkpoint.load_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udaseg import artifacts, layout
from udaseg.errors import UdasegError, look_up_option

CHECKPOINTS = ("best", "final", "latest")


@dataclass
class ModelSource:
    """A model directory: its model.json, the checkpoint file ``load_model`` will read, and
    whether the directory is an artifact (has a manifest)."""

    directory: Path
    info: dict[str, Any]
    checkpoint: Path
    artifact: bool

    def record(self) -> dict[str, Any]:
        """What identifies the model in a run's config (an artifact is tracked by its manifest
        hash in the run's ``inputs``, any other directory by a fingerprint of its files)."""
        files = None if self.artifact else [self.directory / layout.MODEL_JSON, self.checkpoint]
        return {
            "path": str(self.directory.resolve()),
            "name": self.info.get("name"),
            "checkpoint": self.checkpoint.name,
            "fingerprint": file_fingerprint(files) if files else None,
        }


def resolve_model(directory: Path, which: str, option: str = "--model-dir") -> ModelSource:
    """The model directory's model.json and the checkpoint ``load_model(directory, which)`` reads.

    Raises:
        UdasegError: unknown checkpoint name, an unfinished (``.partial``) or replaced
            (``.old``) folder (both exit code 2, naming ``option``), no model.json, a model.json
            whose input layout contradicts itself (:func:`check_layout`), or no checkpoint.
    """
    from udaseg.training.checkpoint import find_checkpoint, read_model_json

    look_up_option(which, CHECKPOINTS, what="checkpoint")
    directory = artifacts.check_finished(Path(directory), option)
    if not directory.is_dir():
        raise UdasegError(
            f"model directory {directory} does not exist",
            hint="pass the output directory of `udaseg segment-train` or `udaseg adapt`",
            path=directory,
        )
    info = read_model_json(directory)
    check_layout(info, directory)
    # the same fallback as load_model: the requested checkpoint, then final, then latest
    path = find_checkpoint(directory, which)
    artifact = (directory / layout.MANIFEST).is_file()
    return ModelSource(directory, info, path, artifact)


def require_model(model: ModelSource, force: bool) -> None:
    """Refuse a model directory artifact that changed or whose inputs were rebuilt since."""
    if not model.artifact:
        return
    stage = artifacts.load_manifest(model.directory).stage
    artifacts.require_input(model.directory, stage=stage, rerun=f"udaseg {stage}", force=force)


def model_dims(info: dict[str, Any]) -> int:
    """2 (slice-wise) or 3 (volumetric): model.json's ``dims``, else the registered model's."""
    if "dims" in info:
        return int(info["dims"])
    from udaseg.models.registry import model_spec

    return model_spec(info["name"]).dims


def context_slices(info: dict[str, Any]) -> int:
    """K, the neighbouring slices on each side that a 2D model reads beside the centre slice (its
    input is 2K + 1 channels, ``segment-train --context-slices``): model.json's
    ``context_slices``; a model.json written before the option has none, and its in_channels (1)
    says K = 0."""
    if "context_slices" in info:
        return int(info["context_slices"])
    return (int(info.get("in_channels", 1)) - 1) // 2


def input_channels(info: dict[str, Any]) -> int:
    """The channels a model of layout ``info`` (model.json) takes: 2K + 1 (1 for plain 2D and
    3D models)."""
    return 2 * context_slices(info) + 1


def check_layout(info: dict[str, Any], directory: Path) -> None:
    """Refuse a model.json whose ``context_slices`` contradicts its ``in_channels`` or its
    dimensions (the network would get inputs it was not built for).

    Raises:
        UdasegError: naming the model directory.
    """
    k, channels = context_slices(info), int(info.get("in_channels", 1))
    problem = None
    if 2 * k + 1 != channels:
        problem = (
            f"context_slices {k} needs {2 * k + 1} input channels, but in_channels is {channels}"
        )
    elif k and model_dims(info) != 2:
        problem = f"context_slices {k} is given for a {model_dims(info)}D model"
    if problem:
        raise UdasegError(
            f"{Path(directory) / layout.MODEL_JSON}: {problem}",
            hint="the model.json was edited or damaged; retrain with `udaseg segment-train`",
            path=directory,
        )


def file_fingerprint(paths: list[Path]) -> str:
    """Hash of the content of input files that are not artifacts (a store file, an exported model),
    named without their folder so a copied model or store is the same input."""
    rows = [[Path(p).name, *row[1:]] for p in paths for row in artifacts.files_fingerprint([p])]
    return artifacts.config_hash({"files": rows})
