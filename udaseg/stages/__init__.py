"""One module per stage, each a function ``run(config, work, *, force=False, progress=None)``.

:data:`STAGES` maps the words after ``udaseg`` to the module that runs them and its config class,
in pipeline order. The command line builds its stage commands from it and ``udaseg run`` calls
stages through it, so both see the same options. Modules are imported on first use: ``udaseg
--help`` must not pay for torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from udaseg.config.adapt import AdaptConfig
from udaseg.config.cluster_styles import ClusterStylesConfig
from udaseg.config.evaluate import EvaluateConfig
from udaseg.config.export_nnunet import ExportNnunetConfig
from udaseg.config.phantom import PhantomConfig
from udaseg.config.predict import PredictConfig
from udaseg.config.preprocess import PreprocessConfig
from udaseg.config.pseudo_label import PseudoLabelConfig
from udaseg.config.report import ReportConfig
from udaseg.config.segment_train import SegmentTrainConfig
from udaseg.config.translate_apply import TranslateApplyConfig
from udaseg.config.translate_train import TranslateTrainConfig


@dataclass(frozen=True)
class StageEntry:
    """One stage: its config class (from the light ``udaseg.config.<stage>``, no torch) names the
    command, ``udaseg.stages.<stage>.run`` does the work."""

    config_class: type
    takes_work: bool = True
    # training stages: the module's ``show_defaults(config)`` resolves their hyperparameters
    shows_defaults: bool = False

    @property
    def command(self) -> str:
        return self.config_class.COMMAND

    @property
    def module(self) -> Any:
        stage = self.config_class.__module__.rsplit(".", 1)[1]
        return importlib.import_module(f"udaseg.stages.{stage}")

    def run(self, config: Any, work: Any, *, force: bool = False, progress: Any = None) -> Any:
        """Run the stage: a :class:`~udaseg.artifacts.Manifest`, a list of them (one per
        domain for preprocess) or, for the phantom, a summary dict."""
        return self.module.run(config, work, force=force, progress=progress)


STAGES = {
    entry.command: entry
    for entry in (
        StageEntry(PhantomConfig, takes_work=False),
        StageEntry(PreprocessConfig),
        StageEntry(TranslateTrainConfig, shows_defaults=True),
        StageEntry(ClusterStylesConfig),
        StageEntry(TranslateApplyConfig),
        StageEntry(SegmentTrainConfig, shows_defaults=True),
        StageEntry(AdaptConfig, shows_defaults=True),
        StageEntry(PseudoLabelConfig),
        StageEntry(PredictConfig),
        StageEntry(ExportNnunetConfig),
        StageEntry(EvaluateConfig),
        StageEntry(ReportConfig),
    )
}
