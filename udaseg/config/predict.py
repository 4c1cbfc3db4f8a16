"""Options of ``udaseg predict`` (see :mod:`udaseg.stages.predict`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from udaseg.config import StageConfig, result, runtime, shared
from udaseg.config.shared import MODEL_DIR_HELP, WINDOW_BATCH_HELP
from udaseg.config.values import (
    CLASS_IDS,
    DATASET_CODES,
    comma_list,
    parse_label_values,
    parse_shard,
)
from udaseg.errors import UdasegError

STAGE = "predict"


@dataclass
class PredictConfig(StageConfig):
    """One predict run (see the module docstring).

    Text options hold their converted values once built: ``label_values`` one of
    :data:`~udaseg.config.values.LABEL_VALUES`; ``stride`` None, a fraction of the
    window (float) or voxels per window axis (tuple of ints); ``cases`` a list of ids or None;
    ``shard`` ``(i, n)`` or None. Each also accepts the converted value.
    """

    STAGE: ClassVar[str] = STAGE
    COMMAND: ClassVar[str] = "predict"
    # bump when the same model, data and options would give different label maps
    # 2: dataset codes by default (--label-values), label description files beside the maps
    VERSION: ClassVar[int] = 2

    model_dir: Path = result(help=MODEL_DIR_HELP)
    data: Path = result(
        help="A `udaseg preprocess` output folder (or its store.h5), or a RAW dataset folder "
        "(then give --dataset and --domain; images are preprocessed in memory)."
    )
    ensemble: list[Path] = result(
        factory=list,
        help="Another model directory to ensemble with --model-dir (repeat the option): the "
        "class probabilities of all are averaged before the argmax (e.g. students of several "
        "seeds). Same classes, view and input layout; --checkpoint applies to all.",
    )
    dataset: str | None = result(None, help="Manifest of raw --data (built-in name or YAML).")
    domain: str | None = result(None, help="Domain of raw --data.")
    checkpoint: str = result(
        "final",
        help="best, final or latest (falls back to final, then latest, when absent).",
    )
    tta: bool = result(
        False,
        help="Flip test-time augmentation: average over flips of the in-plane axes (2D models, "
        "4 passes) or of all three axes (3D, 8 passes). Only for models trained with flips: "
        "udaseg's own are not, and lose accuracy with it.",
    )
    largest_component: bool = result(
        False,
        help="Keep only the largest connected component of each class (drops detached false "
        "positives; each organ is one body).",
    )
    gaussian: bool = result(
        True,
        help="Weight overlapping sliding windows by a Gaussian (sigma 1/8 of the window) "
        "instead of uniformly.",
    )
    stride: str | None = result(
        None,
        help="Sliding-window step: a fraction of the window (default 0.5) or voxels per window "
        "axis, e.g. 16,128,128 (3D) or 128,128 (2D).",
    )
    label_values: str = result(
        DATASET_CODES,
        help=f"Voxel values written: {DATASET_CODES} (the dataset's own label code of each class "
        "in the predicted domain, as its ground-truth files have them, e.g. liver 6 in BTCV CT) "
        f"or {CLASS_IDS} (0..C in the order of the manifest's classes). Where the codes are "
        "unknown (no dataset manifest recorded for the data), class ids, with a notice.",
    )
    amp: bool = shared.amp()
    cases: str | None = result(None, help="Comma list of case ids (default: all).")
    split: str | None = result(
        None,
        help="Only the cases of these splits of a preprocessed store, e.g. val or val,test.",
    )
    name: str | None = runtime(
        None,
        help="Run name: results go to WORK/predict/NAME (default: MODELDIR__DATA, e.g. "
        "unet__phantom-abdomen__mr).",
    )
    batch_size: int = runtime(8, help=WINDOW_BATCH_HELP, low=1)
    device: str = shared.device()
    threads: int | None = shared.threads()
    shard: str | None = runtime(
        None,
        help="Predict only shard i of n (0-based) into NAME__shard-i-of-n; join with "
        "--merge-shards.",
    )
    merge_shards: bool = runtime(
        False, help="Copy the finished shards' files into WORK/predict/NAME."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.label_values = parse_label_values(self.label_values, "--label-values")  # type: ignore[assignment]
        self.stride = parse_stride(self.stride)  # type: ignore[assignment]
        self.cases = comma_list(self.cases)  # type: ignore[assignment]
        self.shard = parse_shard(self.shard)  # type: ignore[assignment]


def parse_stride(
    value: str | float | Sequence[int] | None,
) -> float | tuple[int, ...] | None:
    """``--stride``: a fraction of the window (``"0.5"``) or voxels per axis (``"16,128,128"``);
    a number or a sequence of ints is taken as already converted (checked against the model's
    dimensions by the stage).

    Raises:
        UdasegError: text that is neither, or a single value outside (0, 1].
    """
    if value is None:
        return None
    if not isinstance(value, str):
        if isinstance(value, Sequence):
            return tuple(int(v) for v in value)
        return float(value)
    try:
        if "," in value:
            return tuple(int(v) for v in value.split(","))
        fraction = float(value)
    except ValueError as exc:
        raise UdasegError(
            f'--stride "{value}" must be a fraction like 0.5 or voxels like 16,128,128',
            exit_code=2,
        ) from exc
    if not 0 < fraction <= 1:
        raise UdasegError(
            f"--stride {value}: a single value is a fraction of the window, in (0, 1]",
            hint="give voxels per window axis as a list, e.g. --stride 16,128,128",
            exit_code=2,
        )
    return fraction
