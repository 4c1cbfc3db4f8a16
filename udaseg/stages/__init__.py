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

from udaseg.errors import look_up_option


@dataclass(frozen=True)
class StageEntry:
    """One stage command: ``udaseg <command>`` runs ``udaseg.stages.<module>.run``."""

    command: str
    module_name: str
    config_name: str
    takes_work: bool = True
    # training stages: the module's ``show_defaults(config)`` resolves their hyperparameters
    shows_defaults: bool = False

    @property
    def module(self) -> Any:
        return importlib.import_module(f"udaseg.stages.{self.module_name}")

    @property
    def config_class(self) -> type:
        """The config class, from the light ``udaseg.config.<module>`` (no torch import)."""
        module = importlib.import_module(f"udaseg.config.{self.module_name}")
        return getattr(module, self.config_name)

    def run(self, config: Any, work: Any, *, force: bool = False, progress: Any = None) -> Any:
        """Run the stage: a :class:`~udaseg.artifacts.Manifest`, a list of them (one per
        domain for preprocess) or, for the phantom, a summary dict."""
        return self.module.run(config, work, force=force, progress=progress)


STAGES = {
    entry.command: entry
    for entry in (
        StageEntry("phantom", "phantom", "PhantomConfig", takes_work=False),
        StageEntry("preprocess", "preprocess", "PreprocessConfig"),
        StageEntry(
            "translate train", "translate_train", "TranslateTrainConfig", shows_defaults=True
        ),
        StageEntry("cluster-styles", "cluster_styles", "ClusterStylesConfig"),
        StageEntry("translate apply", "translate_apply", "TranslateApplyConfig"),
        StageEntry("segment-train", "segment_train", "SegmentTrainConfig", shows_defaults=True),
        StageEntry("adapt", "adapt", "AdaptConfig", shows_defaults=True),
        StageEntry("pseudo-label", "pseudo_label", "PseudoLabelConfig"),
        StageEntry("predict", "predict", "PredictConfig"),
        StageEntry("evaluate", "evaluate", "EvaluateConfig"),
        StageEntry("report", "report", "ReportConfig"),
    )
}


def stage_entry(command: str) -> StageEntry:
    """The stage that ``udaseg <command>`` runs (an unknown command gets a "did you mean")."""
    return STAGES[look_up_option(command, list(STAGES), what="udaseg command")]
