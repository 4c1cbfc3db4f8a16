"""Options of ``udaseg pseudo-label`` (see :mod:`udaseg.stages.pseudo_label`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from udaseg.config import StageConfig, result, runtime, shared
from udaseg.config.shared import MODEL_DIR_HELP, WINDOW_BATCH_HELP

STAGE = "pseudo-label"


@dataclass
class PseudoLabelConfig(StageConfig):
    """One pseudo-labelling run (see the module docstring)."""

    STAGE: ClassVar[str] = STAGE
    COMMAND: ClassVar[str] = "pseudo-label"
    # bump when the same model, store and options would give different labels
    VERSION: ClassVar[int] = 1

    model_dir: Path = result(help=MODEL_DIR_HELP)
    target: Path = result(help="Preprocessed target store artifact.")
    split: str = result(
        "train",
        help="Target cases to label: train (the unlabelled training cases; keep your dev "
        "cases out).",
    )
    threshold: float = result(
        0.9,
        help="A voxel keeps its pseudo-label when the model's top class probability reaches "
        "this; the rest take no part in training (0 keeps all).",
        low=0,
        high=1,
    )
    portion: float | None = result(
        None,
        help="Class-balanced selection (CBST) instead of --threshold: each class keeps the most "
        "confident PORTION (0 < PORTION <= 1) of the voxels predicted as it, over all cases (0.5 "
        "keeps the surer half; a cross-modality model's background is then left out where it is "
        "least sure, often inside organs it under-segments).",
        low=0,
        high=1,
    )
    margin: float = result(
        0.0,
        help="mm: background within this distance of a predicted organ stays unlabelled, "
        "however sure the model is (a cross-modality model mostly under-segments; the student "
        "then learns organ extents from the labelled source). 0 is off.",
        low=0,
    )
    largest_component: bool = result(
        True,
        help="Cut each class to its largest connected body first; the islands cut away are "
        "labelled background, so the student unlearns them.",
    )
    checkpoint: str = result("final", help="best, final or latest.")
    amp: bool = shared.amp()
    name: str | None = runtime(
        None, help="Run name: the store goes to WORK/pseudo/NAME (default MODELDIR__SPLIT)."
    )
    batch_size: int = runtime(8, help=WINDOW_BATCH_HELP, low=1)
    device: str = shared.device()
    threads: int | None = shared.threads()
