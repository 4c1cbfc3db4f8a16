"""Options of ``udaseg evaluate`` (see :mod:`udaseg.stages.evaluate`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from udaseg.config import StageConfig, result, runtime, shared
from udaseg.config.values import CLASS_IDS, DATASET_CODES, comma_list, parse_label_values

STAGE = "evaluate"


@dataclass
class EvaluateConfig(StageConfig):
    """One evaluate run (see the module docstring).

    ``metric`` is a comma list or a list of names (the stage checks and orders them); ``cases``
    holds a list of ids or None once built (comma text or a list accepted); ``pred_values`` one
    of :data:`~udaseg.config.values.LABEL_VALUES` or None.
    """

    STAGE: ClassVar[str] = STAGE
    COMMAND: ClassVar[str] = "evaluate"
    # bump when the same inputs and options would give different numbers
    VERSION: ClassVar[int] = 1

    pred: Path = result(
        help="Predictions: a folder of <case_id>.nii.gz label maps (a `udaseg predict` run, whose "
        "manifest says whether they hold dataset codes or class ids; any other folder needs "
        "--pred-values), or an HDF5 store (store.h5 or an artifact folder holding one)."
    )
    ref: Path = result(
        help="Reference labels: a store (store.h5 or its artifact folder); else the RAW dataset "
        "folder when the manifest's labels pattern finds files in it (raw codes mapped by the "
        "domain's label_map); else a folder of <case_id>.nii.gz class-id maps."
    )
    dataset: str = result(
        help="Built-in dataset or manifest YAML: gives the classes, the regions evaluated "
        "(BraTS WT/TC/ET) and the raw label codes."
    )
    domain: str | None = result(
        None,
        help="Domain of a raw --ref (needed when several domains' labels are found in it), and "
        f"whose label codes --pred-values {DATASET_CODES} reads.",
    )
    pred_values: str | None = result(
        None,
        help=f"What a --pred folder that is no `udaseg predict` run holds: {DATASET_CODES} (the "
        "label codes of --domain, as the dataset's own label files) or "
        f"{CLASS_IDS} (0..C in the order of the manifest's classes). A predict run's folder says "
        "it itself.",
    )
    metric: str = result(
        "dice,assd,hd95",
        help="Comma list of dice, assd, asd, hd95, hd. assd: average SYMMETRIC surface distance "
        "(what most papers call ASD); asd: ONE-directional mean surface distance pred -> ref, "
        "as medpy's asd (not symmetric); hd95: 95th percentile Hausdorff distance; hd: "
        "Hausdorff distance.",
    )
    unit: str = result("mm", help="Distances in mm (voxel spacing applied) or voxel.")
    hd95: str = result(
        "pooled",
        help="pooled: 95th percentile of both directions' surface distances together (medpy "
        "hd95); max-directed: larger of the two directed 95th percentiles (MONAI, DeepMind).",
    )
    assd: str = result(
        "pooled",
        help="pooled: mean of both directions' surface distances together (medpy>=0.5.2, "
        "MONAI); mean-of-directed: mean of the two directed means (medpy<=0.4, SIFA).",
    )
    connectivity: int = result(
        1,
        help="Surface = foreground voxels with a background neighbour; neighbours share a face "
        "(1), also an edge (2) or also a corner (3).",
        low=1,
        high=3,
    )
    empty_distance: str = result(
        "nan",
        help="Distances when exactly one of prediction and reference is empty for a class: nan "
        "(missing: left out of means and counted) or diagonal (the image diagonal).",
    )
    cases: str | None = result(
        None,
        help="Comma list of case ids to evaluate (default: all; then every prediction needs a "
        "reference and vice versa).",
    )
    predicted_only: bool = result(
        False, help="Evaluate exactly the predicted cases (e.g. of `predict --split val`)."
    )
    name: str | None = runtime(
        None,
        help="Run name: results go to WORK/evaluate/NAME (default: the --pred folder's name).",
    )
    workers: int = shared.workers()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pred_values = parse_label_values(self.pred_values, "--pred-values")
        self.cases = comma_list(self.cases)  # type: ignore[assignment]
