"""Options of ``udaseg segment-train`` (see :mod:`udaseg.stages.segment_train`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from udaseg.config import StageConfig, result, runtime, shared
from udaseg.config.shared import INTENSITY_NET_HELP

STAGE = "segment-train"

TRAIN_ON = ("source", "target", "translated", "pseudo")

# hparams keys a user may override from the command line
HPARAM_KEYS = (
    "optimizer",
    "lr",
    "betas",
    "momentum",
    "weight_decay",
    "schedule",
    "poly_power",
    "loss",
    "aux_weight",
    "batch_size",
    "patch_size",
    "steps",
    "warmup_steps",
)


@dataclass
class SegmentTrainConfig(StageConfig):
    """One training run of a registered segmenter (see the module docstring)."""

    STAGE: ClassVar[str] = STAGE
    COMMAND: ClassVar[str] = "segment-train"

    model: str = result(
        "unet2d.v1",
        help="Registered model, e.g. unet2d.v1, sifa-encoder.v1, deeplabv2.v1, "
        "dual-attention-unet.v1, dar-unet.v1.",
    )
    train_on: str = result(
        "source",
        help="source (no-adaptation bound), target (supervised bound), translated, or pseudo "
        "(pseudo-labelled target, with --source beside it when given: self-training).",
    )
    source: Path | None = result(None, help="Preprocessed source store artifact.")
    target: Path | None = result(None, help="Preprocessed target store artifact.")
    translated: list[Path] = result(
        factory=list, help="Translated store artifact(s) (all styles are used)."
    )
    pseudo: Path | None = result(
        None, help="Pseudo-labelled target store (`udaseg pseudo-label`) for --train-on pseudo."
    )
    val: Path | None = result(
        None, help="Store whose 'val' split picks checkpoint_best (default: the training store)."
    )
    train_split: str = result("train", help="Split of the training stores to train on.")
    val_split: str = result("val", help="Split of the validation store that picks checkpoint_best.")
    hparams: dict[str, Any] = result(
        factory=dict,
        help="Hyperparameter or model constructor argument key=value, e.g. steps=800, "
        "patch_size=128,128, lr=1e-3, base_channels=16 (see --show-defaults).",
    )
    augment: bool = result(True, help="Random rotation, scaling, shear, elastic (3D).")
    intensity_net: float = result(0.0, help=INTENSITY_NET_HELP, low=0, high=1)
    ipa: float = result(0.0, help=shared.IPA_HELP, low=0, high=1)
    location_scale: float = result(0.0, help=shared.LOCATION_SCALE_HELP, low=0, high=1)
    flip: bool = result(
        False,
        help="Flip training samples along each in-plane axis with probability 1/2. Anatomy is "
        "never mirrored in real scans, but a model trained with flips reads both sides and "
        "gains from `udaseg predict --tta`.",
    )
    ema: float = result(
        0.0,
        help="Keep an exponential moving average of the weights with this decay (e.g. 0.99; 0 "
        "= off) and validate and publish it instead of the last weights: an average over the "
        "last ~1/(1-decay) steps, steadier than any one step, as mean-teacher self-training "
        "uses.",
        low=0,
        high=0.9999,
    )
    foreground_fraction: float = result(
        0.5, help="Share of each batch drawn from slices/voxels with labels.", low=0, high=1
    )
    context_slices: int = result(
        0,
        help="2.5D input for 2D models: each slice and its K neighbours on each side as 2K+1 "
        "input channels (the edge slice repeated at a volume's ends); predict reads it from "
        "model.json. 0: plain 2D. Refused for 3D models.",
        low=0,
    )
    balance_stores: bool = result(
        False,
        help="With several training stores (--train-on pseudo: source and pseudo-labelled "
        "target), take an equal share of each batch from each, instead of drawing from their "
        "pooled slices (where the store with more slices dominates).",
    )
    seed: int = result(0, help="Random seed (runs on the same machine repeat exactly).")
    val_every: int = result(
        500, help="Steps between validations (0: only at the end); picks checkpoint_best.", low=0
    )
    amp: bool = shared.amp()
    name: str | None = runtime(None, help="Run name (default model__train-on__dataset__domain).")
    monitor: list[Path] = runtime(
        factory=list, help="Also log Dice on these stores (information only, never selects)."
    )
    monitor_split: str = runtime("all", help="Split of the --monitor stores.")
    checkpoint_every: int = shared.checkpoint_every()
    log_every: int = shared.log_every()
    device: str = shared.device()
    threads: int | None = shared.threads()
    channels_last: bool = shared.channels_last()
    compile: bool = shared.compile_model()
    resume: bool = shared.resume()

    @property
    def train(self) -> list[Path]:
        """The stores to train on, by ``train_on``; self-training keeps the labelled source first
        (its val split picks checkpoint_best: the target has no labels to validate on)."""
        stores = {
            "source": [self.source],
            "target": [self.target],
            "translated": list(self.translated),
            "pseudo": [self.source, self.pseudo] if self.pseudo is not None else [],
        }
        return [Path(p) for p in stores.get(self.train_on, []) if p is not None]
