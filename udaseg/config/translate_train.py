"""Options of ``udaseg translate train`` (see :mod:`udaseg.stages.translate_train`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from udaseg.config import StageConfig, result, runtime, shared

STAGE = "translate-train"

# hparams keys every method understands; a method's own hparams keys (loss weights) are allowed too
HPARAM_KEYS = (
    "steps",
    "batch_size",
    "patch_size",
    "lr_g",
    "lr_d",
    "betas",
    "schedule",
    "poly_power",
    "decay_from",
    "warmup_steps",
)


@dataclass
class TranslateTrainConfig(StageConfig):
    """One translator training run (see the module docstring)."""

    STAGE: ClassVar[str] = STAGE
    COMMAND: ClassVar[str] = "translate train"

    method: str = result(
        help="Registered translator: cyclegan.v1, attention-cyclegan.v1, disentangled.v1, "
        "domain-style.v1."
    )
    source: Path = result(help="Preprocessed source store artifact.")
    target: Path = result(help="Preprocessed target store artifact (labels never read).")
    hparams: dict[str, Any] = result(
        factory=dict,
        help="Hyperparameter or translator constructor argument key=value, e.g. steps=2000, "
        "batch_size=4, patch_size=256,256, lr_g=2e-4, lr_d=2e-4, schedule=linear (constant, "
        "linear, cosine or poly), a loss weight lambda_cycle=10, or width=32 "
        "(see --show-defaults).",
    )
    source_split: str = result("train", help="Source cases to train on.")
    target_split: str = result("train", help="Target cases to train on.")
    semantic_segmenter: Path | None = result(
        None,
        help="Opt-in, beyond the papers (CycleGAN-family methods): a segment-train run on the "
        "source labels (best trained with --intensity-net) that must read translated slices as "
        "the originals; its weight lambda_semantic is 1 unless --set sets it. Measured on the "
        "abdominal pair it kept shapes but not organ tones (docs/results/translation.md).",
    )
    seed: int = result(0, help="Random seed (CPU runs repeat exactly).")
    amp: bool = shared.amp()
    name: str | None = runtime(
        None, help="Run name (default METHOD__DATASET_SOURCEDOMAIN__to__TARGETDOMAIN)."
    )
    sample_every: int = runtime(
        500, help="Steps between sample grids samples/step_N.png (0: only at the end).", low=0
    )
    sample_count: int = runtime(4, help="Slices per sample grid.", low=1)
    sample_styles: int = runtime(
        3,
        help="Rows of each sample grid showing the source in the style of that many random "
        "target slices (methods with style codes).",
        low=0,
    )
    checkpoint_every: int = shared.checkpoint_every()
    log_every: int = shared.log_every()
    device: str = shared.device()
    threads: int | None = shared.threads()
    channels_last: bool = shared.channels_last()
    resume: bool = shared.resume()
