"""``udaseg cluster-styles``: K representative target styles of a translator with style codes.

As DAR-UNet does: the style code of every slice in the middle two thirds of each target volume
(the ends are mostly air and scanner table) is encoded with the trained translator's
``encode_style``; scikit-learn's KMeans (fixed seed) clusters the codes into K groups and one member
per cluster is kept, the one nearest the cluster centre (``pick="nearest"``) or a random one
(``pick="random"``, the paper's choice). ``udaseg translate apply`` renders the source in those K
styles. Methods without style codes (one fixed style) are refused.

Output ``W/styles/<run>/`` (``<run>`` defaults to ``<translate run>__k<K>``, plus ``__random``
for random picks)::

    centroids.npy   (K, style_dim) float32: the chosen member codes, row k = style k
    codes.npy       (N, style_dim) float32: every encoded target slice code, in members.json order
    members.json    {"slices": [{"case", "slice", "cluster", "distance"} per code row],
                     "chosen": [{"style", "cluster", "index", "case", "slice", "distance"}],
                     "cluster_sizes", "cluster_centres" (KMeans means), "method", "pick", ...};
                     distance: Euclidean, code to its cluster's centre
    styles.png      left: a 2D embedding (t-SNE or PCA) of all codes coloured by cluster, the chosen
                    ones marked with numbered triangles and the mean code with a star; right: one
                    source slice and its rendering in each chosen style
    manifest.json   stage "cluster-styles"; inputs: the translate run and the target store
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from udaseg import artifacts, layout
from udaseg.config import result_config
from udaseg.config.cluster_styles import EMBEDDINGS, PICKS, STAGE, ClusterStylesConfig
from udaseg.data.sampling import middle_slices, split_cases, store_path
from udaseg.data.store import Store
from udaseg.device import apply_threads, precision_record, resolve_device
from udaseg.errors import UdasegError, look_up_option
from udaseg.progress import NullProgress, Progress
from udaseg.translation.io import CHECKPOINTS


def run_name(config: ClusterStylesConfig, translate_run: str) -> str:
    if config.name:
        return artifacts.check_run_name(config.name)
    random = ["random"] if config.pick == "random" else []
    return layout.joined(translate_run, f"k{config.styles}", *random)


def run(
    config: ClusterStylesConfig,
    work: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> artifacts.Manifest:
    """Encode, cluster and pick K styles; publish ``W/styles/<run>/`` and return its manifest.

    Skipped (summary ``skipped: true``) when current, unless ``force``.

    Raises:
        UdasegError: the method has no style codes (exit code 2), bad options, a stale or
            unfinished translate run or target store, fewer target slices than K.
    """
    from udaseg.translation.io import open_run
    from udaseg.translation.registry import require_style_codes

    progress = progress or NullProgress()
    _check_options(config)
    apply_threads(config.threads)
    translate = open_run(
        artifacts.check_finished(Path(config.translator), "--translator"), force=force
    )
    require_style_codes(translate.method)
    target_dir = artifacts.check_finished(Path(config.target or translate.target), "--target")
    target_manifest = artifacts.require_input(
        target_dir, stage="preprocess", rerun="udaseg preprocess", force=force
    )
    inputs = {
        "translator": translate.record(),
        "target": artifacts.input_record(target_dir, target_manifest),
    }
    out = layout.run_dir(work, layout.STYLES, run_name(config, translate.name))
    device = resolve_device(config.device)
    stage_config = _stage_config(config, translate, target_dir, device)
    done = artifacts.reuse_if_current(out, stage_config, inputs, progress.log, force=force)
    if done:
        return done
    with artifacts.building(out) as tmp:
        started = time.perf_counter()
        summary = _cluster(config, translate, target_dir, tmp, device, progress)
        summary.update(output=str(out), seconds=round(time.perf_counter() - started, 2))
        return artifacts.publish(
            tmp, out, stage=STAGE, config=stage_config, inputs=inputs, summary=summary
        )


def _check_options(config: ClusterStylesConfig) -> None:
    look_up_option(config.pick, PICKS, what="--pick")
    look_up_option(config.embedding, EMBEDDINGS, what="--embedding")
    look_up_option(config.checkpoint, CHECKPOINTS, what="--checkpoint")
    if config.styles < 1:
        raise UdasegError(f"--styles {config.styles}: need at least 1", exit_code=2)
    if config.batch_size < 1:
        raise UdasegError(f"--batch-size {config.batch_size}: need >= 1", exit_code=2)


def _stage_config(config, translate, target_dir: Path, device: str) -> dict[str, Any]:
    return result_config(
        config,
        translator=translate.directory,
        method=translate.method,
        target=target_dir,
        # what --amp resolved to here: on a CPU without native bf16, --amp and --no-amp agree
        **precision_record(device, config.amp),
    )


def _cluster(config, translate, target_dir, tmp: Path, device, progress) -> dict[str, Any]:
    from udaseg.translation.io import load_translator

    translator, _ = load_translator(translate.directory, config.checkpoint, device)
    target = Store(store_path(target_dir))
    _check_view(translate, target)
    slices, codes = encode_target_styles(
        translator, target, split_cases(target_dir, config.split, target), config, device, progress
    )
    if len(codes) < config.styles:
        raise UdasegError(
            f"only {len(codes)} target slices to cluster into {config.styles} styles",
            hint="lower --styles, or encode more cases (--split all)",
            exit_code=2,
        )
    clusters, centres, distances = kmeans(codes, config.styles, config.seed)
    chosen = pick_members(clusters, distances, config.pick, config.seed)
    np.save(tmp / layout.CODES, codes)
    np.save(tmp / layout.CENTROIDS, codes[chosen])
    members = _members(config, translate, slices, clusters, centres, distances, chosen)
    (tmp / layout.MEMBERS).write_text(json.dumps(members, indent=1) + "\n")
    _picture(
        config, translate, translator, codes, clusters, chosen, tmp / layout.STYLES_PICTURE, device
    )
    return {
        "translator": translate.name,
        "method": translate.method,
        "styles": config.styles,
        "codes": len(codes),
        "style_dim": int(codes.shape[1]),
        "cluster_sizes": members["cluster_sizes"],
        "chosen": members["chosen"],
        "device": device,
        "skipped": False,
    }


def _check_view(translate, target: Store) -> None:
    trained = translate.info.get("target", {})
    if trained.get("view") not in (None, target.view):
        raise UdasegError(
            f"translator {translate.directory} was trained on {trained['view']} slices, "
            f"target store {target.path} is {target.view}",
            hint="pass a target store preprocessed with the translator's view",
        )


def encode_target_styles(
    translator, store: Store, cases: list[str], config, device: str, progress: Progress
) -> tuple[list[tuple[str, int]], np.ndarray]:
    """Style codes of the middle-two-thirds slices of ``cases``, batched.

    Returns:
        [(case, slice number)] and codes (N, style_dim) float32 in the same order.
    """
    from udaseg.translation.io import encode_styles

    if not cases:
        raise UdasegError(
            f"no '{config.split}' cases in target store {store.path}",
            hint="choose another --split (train, val, test or all)",
            exit_code=2,
        )
    task = progress.task("encode target styles", len(cases))
    slices, codes = [], []
    for case in cases:
        volume = store.image(case)
        ks = middle_slices(len(volume))
        codes.append(
            encode_styles(
                translator, volume[ks.start : ks.stop], config.batch_size, device, config.amp
            )
        )
        slices += [(case, k) for k in ks]
        progress.advance(task, case=case)
    return slices, np.concatenate(codes)


def kmeans(codes: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KMeans of ``codes`` (N, D) into ``k`` clusters (10 seeded restarts).

    Returns:
        cluster of each code (N,) int, cluster centres (k, D) float32, and each code's Euclidean
        distance to its own centre (N,) float32.
    """
    from sklearn.cluster import KMeans

    fitted = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(codes.astype(np.float64))
    clusters = fitted.labels_.astype(np.int64)
    centres = fitted.cluster_centers_.astype(np.float32)
    distances = np.linalg.norm(codes - centres[clusters], axis=1).astype(np.float32)
    return clusters, centres, distances


def pick_members(clusters: np.ndarray, distances: np.ndarray, pick: str, seed: int) -> list[int]:
    """One code index per cluster 0..k-1: the nearest to its centre, or a seeded random one."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(int(clusters.max()) + 1):
        members = np.flatnonzero(clusters == c)
        if pick == "nearest":
            chosen.append(int(members[np.argmin(distances[members])]))
        else:
            chosen.append(int(rng.choice(members)))
    return chosen


def embed(codes: np.ndarray, method: str, seed: int) -> np.ndarray:
    """A 2D embedding (N, 2) of ``codes`` (N, D) for the picture: t-SNE or PCA (seeded)."""
    n, dim = codes.shape
    if n < 3 or dim == 1:  # nothing to reduce (or too few points for t-SNE): plot as is
        return np.pad(codes[:, :2], ((0, 0), (0, max(0, 2 - dim)))).astype(np.float32)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(codes).astype(np.float32)
    from sklearn.manifold import TSNE

    # perplexity must stay below the number of points; 30 is the usual value for many
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(codes).astype(np.float32)


def _members(config, translate, slices, clusters, centres, distances, chosen) -> dict[str, Any]:
    rows = [
        {"case": case, "slice": k, "cluster": int(c), "distance": round(float(d), 6)}
        for (case, k), c, d in zip(slices, clusters, distances, strict=True)
    ]
    return {
        "translator": translate.name,
        "method": translate.method,
        "styles": config.styles,
        "pick": config.pick,
        "seed": config.seed,
        "split": config.split,
        "slices": rows,
        "chosen": [{"style": s, "index": i, **rows[i]} for s, i in enumerate(chosen)],
        "cluster_sizes": np.bincount(clusters, minlength=config.styles).tolist(),
        "cluster_centres": centres.round(6).tolist(),
    }


def preview_slice(source_dir: Path) -> tuple[str, int, np.ndarray]:
    """A source slice to show the styles on: the one with the most labelled voxels of the first
    training case (the middle slice when unlabelled). Returns (case, slice number, (H, W))."""
    store = Store(store_path(source_dir))
    try:
        cases = split_cases(source_dir, "train", store) or list(store.case_ids)
        case = cases[0]
        foreground = store.file["cases"][case]["foreground"][()]
        k = int(np.argmax(foreground)) if foreground.max() > 0 else len(foreground) // 2
        return case, k, store.slice(case, k)[0]
    finally:
        store.close()


def _picture(config, translate, translator, codes, clusters, chosen, path, device) -> None:
    import torch

    from udaseg.translation.io import (
        PAD_MULTIPLE,
        inference_autocast,
        pad_to_multiple,
        save_styles_figure,
    )

    case, k, image = preview_slice(translate.source)
    padded, window = pad_to_multiple(image[None], PAD_MULTIPLE)
    batch = torch.from_numpy(padded)[:, None].to(device).expand(len(chosen), -1, -1, -1)
    styles = torch.from_numpy(codes[chosen]).to(device)
    with torch.no_grad(), inference_autocast(device, config.amp):
        rendered = translator.translate(batch, styles).float().cpu().numpy()[:, 0]
    renders = [(f"source {case}:{k}", image)]
    renders += [(f"style {j}", rendered[j][window]) for j in range(len(chosen))]
    save_styles_figure(
        path,
        embed(codes, config.embedding, config.seed),
        clusters,
        chosen,
        renders,
        method=translate.method,
        title=f"{translate.name}: {config.styles} styles ({config.pick} member per cluster, "
        f"{config.embedding})",
    )
