"""Options of ``udaseg phantom`` (see :mod:`udaseg.stages.phantom`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from udaseg.config import StageConfig, result


@dataclass
class PhantomConfig(StageConfig):
    """A synthetic raw dataset: where it goes, which task, how big, from which seed."""

    STAGE: ClassVar[str] = "phantom"
    COMMAND: ClassVar[str] = "phantom"

    out: Path = result(help="Folder to write the raw phantom dataset into.")
    task: str = result(
        "abdomen",
        help="abdomen (BTCV-like CT + CHAOS-like MR, SSL-ALPNet layout), cardiac (MMWHS layout) "
        "or mscmrseg (bSSFP C0 + LGE short-axis stacks, MS-CMRSeg 2019 layout).",
    )
    seed: int = result(0, help="Random seed.")
    size: str = result("small", help="small (demo) or tiny (tests).")
    n_cases: int | None = result(
        None,
        help="Cases per domain (default: the size's, 6 small / 3 tiny). Adding cases never "
        "changes the others; the test split follows the dataset's fixed test ids.",
        low=1,
    )
