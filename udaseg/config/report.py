"""Options of ``udaseg report`` (see :mod:`udaseg.stages.report`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from udaseg.config import StageConfig


@dataclass
class ReportConfig(StageConfig):
    """A report has no options: it shows whatever the workspace holds."""

    STAGE: ClassVar[str] = "report"
    COMMAND: ClassVar[str] = "report"
