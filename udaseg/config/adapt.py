"""Options of ``udaseg adapt`` (see :mod:`udaseg.stages.adapt`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from udaseg.config import StageConfig, result, runtime, shared
from udaseg.config.shared import INTENSITY_NET_HELP

STAGE = "adapt"


@dataclass
class AdaptConfig(StageConfig):
    """One adaptation run (see the module docstring)."""

    STAGE: ClassVar[str] = STAGE
    COMMAND: ClassVar[str] = "adapt"

    method: str = result(help="sifa.v1, adaptsegnet.v1, advent.v1, attent.v1, glua.v1 or bigl.v1.")
    source: Path | None = result(
        None, help="Labelled source store: preprocessed, or translated by `translate apply`."
    )
    target: Path | None = result(
        None, help="Preprocessed target store (its labels never train anything)."
    )
    translator: Path | None = result(
        None,
        help="translate-train run, for methods that translate online (BiGL); a two-way run "
        "trained target -> source is used reversed.",
    )
    init: Path | None = result(
        None, help="Model directory to start the segmenter from (the source-only run)."
    )
    model: str | None = result(
        None, help="Segmenter (default: the init model's, else the method's)."
    )
    hparams: dict[str, Any] = result(
        factory=dict,
        help="Hyperparameter of the method or constructor argument of the segmenter key=value, "
        "e.g. steps=2000, d_lr=1e-4, base_channels=16 (see --show-defaults).",
    )
    source_split: str = result("train", help="Split of the source store to train on.")
    target_split: str = result("train", help="Split of the target store to adapt on.")
    val_split: str = result(
        "val", help="Split of the target store whose Dice is logged (never selects a model)."
    )
    augment: bool = result(True, help="Random affine + gamma on both domains.")
    intensity_net: float = result(0.0, help=INTENSITY_NET_HELP, low=0, high=1)
    ipa: float = result(0.0, help=shared.IPA_HELP, low=0, high=1)
    location_scale: float = result(0.0, help=shared.LOCATION_SCALE_HELP, low=0, high=1)
    foreground_fraction: float = result(
        0.5, help="Share of each source batch drawn from slices with labels.", low=0, high=1
    )
    seed: int = result(0, help="Random seed (runs on the same machine repeat exactly).")
    amp: bool = shared.amp()
    name: str | None = runtime(None, help="Run name (default method__dataset__source-to-target).")
    val_every: int = runtime(
        500, help="Steps between target-val Dice logs (information only; 0: at the end).", low=0
    )
    checkpoint_every: int = shared.checkpoint_every()
    log_every: int = shared.log_every()
    device: str = shared.device()
    threads: int | None = shared.threads()
    channels_last: bool = shared.channels_last()
    compile: bool = shared.compile_model()
    resume: bool = shared.resume()
