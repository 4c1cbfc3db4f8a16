"""``udaseg translate --translator RUN --styles K``: cluster-styles, then translate apply."""

from __future__ import annotations

from pathlib import Path

from udaseg.artifacts import Manifest
from udaseg.progress import Progress


def render_in_styles(
    translator: Path,
    work: Path,
    *,
    styles: int | None = None,
    pick: str = "nearest",
    embedding: str = "tsne",
    seed: int = 0,
    batch_size: int = 16,
    device: str = "auto",
    amp: bool = True,
    force: bool = False,
    progress: Progress | None = None,
) -> list[Manifest]:
    """Render the translator's source store in K target styles.

    A translator with style codes gets a ``cluster-styles`` run first (K = ``styles``, default 5)
    whose representative styles ``translate apply`` then uses; a fixed-style translator is
    applied once (K = 1). Returns the manifests of the runs, in order.
    """
    from udaseg.stages import STAGES
    from udaseg.translation.io import open_run

    cluster, apply = STAGES["cluster-styles"], STAGES["translate apply"]
    shared = {"translator": translator, "batch_size": batch_size, "device": device, "amp": amp}
    manifests = []
    style_run = None
    if open_run(translator, force=force).has_style_codes:
        config = cluster.config_class(
            **shared, styles=styles or 5, pick=pick, embedding=embedding, seed=seed
        )
        manifests.append(cluster.run(config, work, force=force, progress=progress))
        style_run = Path(manifests[-1].summary["output"])
    config = apply.config_class(**shared, styles=styles, style_run=style_run)
    manifests.append(apply.run(config, work, force=force, progress=progress))
    return manifests
