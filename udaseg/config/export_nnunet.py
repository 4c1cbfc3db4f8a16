"""Options of ``udaseg export nnunet`` (see :mod:`udaseg.stages.export_nnunet`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from udaseg.config import StageConfig, result

STAGE = "export-nnunet"

# nnU-Net's normalisation schemes that suit images udaseg has already normalised (see the stage)
NORMALIZATIONS = ("noNorm", "zscore")


@dataclass
class ExportNnunetConfig(StageConfig):
    """One export of labelled stores (and target images) as an nnU-Net v2 raw dataset."""

    STAGE: ClassVar[str] = STAGE
    COMMAND: ClassVar[str] = "export nnunet"
    # bump when the same stores and options would give other files
    VERSION: ClassVar[int] = 1

    train: list[Path] = result(
        help="Store artifact whose labelled cases become imagesTr/labelsTr: translated "
        "(WORK/translated/RUN), pseudo-labelled (WORK/pseudo/RUN) or preprocessed. Repeat to "
        "combine, e.g. translated source and pseudo-labelled target (case names then start "
        "with each store's folder name)."
    )
    train_split: str = result(
        "train,val",
        help="Cases of every --train store, from its splits.json: train, val, test, all, or a "
        "comma list (default train,val: nnU-Net cross-validates itself; test cases stay out).",
    )
    target: Path | None = result(
        None,
        help="Preprocessed target store artifact whose images become imagesTs (no labels are "
        "read), to predict with nnUNetv2_predict.",
    )
    target_split: str = result(
        "test", help="Cases of the --target store for imagesTs (as --train-split)."
    )
    dataset_id: int = result(
        501,
        help="nnU-Net dataset id (1-999; custom datasets usually take 500 and up): the folder "
        "is DatasetXXX_NAME.",
        low=1,
        high=999,
    )
    name: str | None = result(
        None,
        help="nnU-Net dataset name: letters, digits and _ (default: the first --train store's "
        "dataset and domain, e.g. mmwhs_mr_to_ct).",
    )
    normalization: str = result(
        "noNorm",
        help="channel_names entry, which picks nnU-Net's intensity normalisation: noNorm keeps "
        "udaseg's normalisation as it is (then predict on images udaseg exported); zscore "
        "re-standardises each case. CT is refused: the images are no longer in HU.",
    )
