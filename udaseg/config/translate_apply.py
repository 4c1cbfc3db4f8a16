"""Options of ``udaseg translate apply`` (see :mod:`udaseg.stages.translate_apply`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from udaseg.config import StageConfig, result, runtime, shared
from udaseg.config.values import parse_shard

STAGE = "translate-apply"


@dataclass
class TranslateApplyConfig(StageConfig):
    """One apply run (see the module docstring). ``shard`` is ``"i/n"`` text or ``(i, n)``; it
    holds ``(i, n)`` (or None) once built."""

    STAGE: ClassVar[str] = STAGE
    COMMAND: ClassVar[str] = "translate apply"
    # bump when the same translator, styles and source would give different images
    VERSION: ClassVar[int] = 1

    translator: Path = result(
        help="Translate run folder (output of `udaseg translate train`, WORK/translate/RUN)."
    )
    styles: int | None = result(
        None,
        help="K styles: the style run's count (checked when given); 1 (the default style) "
        "without --style-run.",
        low=1,
    )
    style_run: Path | None = result(
        None,
        help="A `udaseg cluster-styles` output folder of this translator (WORK/styles/RUN).",
    )
    source: Path | None = result(
        None,
        help="Source store artifact to translate (default: the one the translator was trained on).",
    )
    checkpoint: str = result("final", help="final or latest.")
    amp: bool = shared.amp()
    name: str | None = runtime(
        None,
        help="Run name (default: the style run's name, else TRANSLATOR__k1, or "
        "TRANSLATOR__default-style for methods with style codes).",
    )
    shard: str | None = runtime(
        None,
        help="Translate only every n-th source case from i (0-based), e.g. "
        "${SLURM_ARRAY_TASK_ID}/8, into NAME__shard-i-of-n: a complete store each (pass them "
        "all to segment-train --translated).",
    )
    batch_size: int = runtime(16, help="Slices per forward pass.", low=1)
    device: str = shared.device()
    threads: int | None = shared.threads()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.shard = parse_shard(self.shard)  # type: ignore[assignment]
