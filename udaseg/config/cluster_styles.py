"""Options of ``udaseg cluster-styles`` (see :mod:`udaseg.stages.cluster_styles`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from udaseg.config import StageConfig, result, runtime, shared

STAGE = "cluster-styles"
PICKS = ("nearest", "random")
EMBEDDINGS = ("tsne", "pca")


@dataclass
class ClusterStylesConfig(StageConfig):
    """One clustering run (see the module docstring)."""

    STAGE: ClassVar[str] = STAGE
    COMMAND: ClassVar[str] = "cluster-styles"

    translator: Path = result(
        help="Translate run folder (output of `udaseg translate train`, WORK/translate/RUN)."
    )
    styles: int = result(5, help="K clusters = styles kept.", low=1)
    target: Path | None = result(
        None, help="Target store artifact (default: the one the translator was trained on)."
    )
    split: str = result("train", help="Target cases to encode: train, val, test or all.")
    pick: str = result(
        "nearest",
        help="Member kept per cluster: nearest (to the cluster centre) or random (seeded; "
        "DAR-UNet's choice).",
    )
    embedding: str = result("tsne", help="2D embedding in styles.png: tsne or pca.")
    seed: int = result(0, help="Random seed of KMeans, random picks and t-SNE.")
    checkpoint: str = result("final", help="final or latest.")
    amp: bool = shared.amp()
    name: str | None = runtime(None, help="Run name (default TRANSLATOR__kK).")
    batch_size: int = runtime(32, help="Slices per forward pass.", low=1)
    device: str = shared.device()
    threads: int | None = shared.threads()
