"""Options of ``udaseg preprocess`` (see :mod:`udaseg.stages.preprocess`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from udaseg.config import StageConfig, parse_kv, result, runtime, shared
from udaseg.config.values import parse_shard

STAGE = "preprocess"


@dataclass
class PreprocessConfig(StageConfig):
    """One preprocess run (see the module docstring).

    ``domain`` also takes one name; ``overrides`` also takes ``["key=value", ...]`` (values read
    as YAML); ``shard`` is ``"i/n"`` text or ``(i, n)``, and holds ``(i, n)`` or None once built.
    """

    STAGE: ClassVar[str] = STAGE
    COMMAND: ClassVar[str] = "preprocess"

    dataset: str = result(
        help="Built-in dataset (mmwhs, chaos, btcv, abdominal-normalized, sifa-tfrecords, brats, "
        "crossmoda, mscmrseg, custom) or the path of a manifest YAML.",
        argument=True,
    )
    raw: Path | None = result(
        None, help="The downloaded dataset folder (layout as the manifest says)."
    )
    domain: list[str] = result(factory=list, help="Only this domain (repeatable; default all).")
    overrides: dict[str, Any] = result(
        factory=dict,
        help="Override a manifest key, e.g. --set geometry.inplane_mm=2.0 (repeatable).",
    )
    shard: str | None = runtime(
        None,
        help="Process only shard i of n (0-based), e.g. ${SLURM_ARRAY_TASK_ID}/8; merge with "
        "--merge-shards.",
    )
    merge_shards: bool = runtime(False, help="Join finished shards into one store.")
    workers: int = shared.workers()

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.domain, str):
            self.domain = [self.domain]
        elif self.domain is None:
            self.domain = []
        if isinstance(self.overrides, list | tuple):
            self.overrides = parse_kv(list(self.overrides), "--set")
        self.shard = parse_shard(self.shard)  # type: ignore[assignment]
