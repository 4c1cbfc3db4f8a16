"""``udaseg preprocess``: raw scans -> normalised volumes + slice index, one HDF5 store per domain.

Output, one artifact per domain: ``W/preprocessed/<dataset>__<domain>/`` holding ``store.h5`` (see
``udaseg.data.store``), ``fingerprint.json`` (spacings, shapes, intensity and class statistics),
``splits.json`` and ``manifest.json``. With ``shard=(i, n)`` only every n-th case starting at i is
processed into ``<dataset>__<domain>__shard-<i>-of-<n>/``; ``merge_shards`` then joins the n shard
artifacts into the plain one.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from udaseg import artifacts, layout
from udaseg.config import result_config
from udaseg.config.preprocess import STAGE, PreprocessConfig
from udaseg.data.manifest import DatasetManifest, Domain, load_manifest
from udaseg.data.pipeline import PIPELINE_VERSION, source_fingerprint, write_store
from udaseg.data.readers import CaseFiles, find_cases
from udaseg.data.splits import make_splits
from udaseg.data.store import merge_stores
from udaseg.errors import UdasegError
from udaseg.progress import NullProgress, Progress


def output_dir(work: Path, dataset: str, domain: str, shard: tuple[int, int] | None = None) -> Path:
    name = layout.joined(dataset, domain)
    if shard is not None:
        name += f"__shard-{shard[0]}-of-{shard[1]}"
    return layout.run_dir(work, layout.PREPROCESSED, name)


def run(
    config: PreprocessConfig,
    work: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> list[artifacts.Manifest]:
    """Preprocess each requested domain; returns one manifest per domain (its summary inside).

    A domain whose artifact is complete and was built from the same manifest, options and raw
    files is skipped (its summary says ``"skipped": true``) unless ``force``.
    """
    progress = progress or NullProgress()
    manifest = load_manifest(config.dataset, config.overrides)
    domains = config.domain or list(manifest.domains)
    results = []
    for name in domains:
        domain = manifest.domain(name)
        if config.merge_shards:
            results.append(_merge(manifest, domain, config, Path(work), force, progress))
        else:
            results.append(_run_domain(manifest, domain, config, Path(work), force, progress))
    return results


def _stage_config(
    manifest: DatasetManifest, domain: Domain, config: PreprocessConfig, cases: list[CaseFiles]
) -> dict:
    return result_config(
        config,
        dataset=manifest.name,
        domain=domain.name,
        manifest=manifest.raw,
        raw_fingerprint=artifacts.config_hash({"files": source_fingerprint(cases, config.raw)}),
        pipeline_version=PIPELINE_VERSION,
    )


def _run_domain(manifest, domain, config, work, force, progress) -> artifacts.Manifest:
    if config.raw is None:
        raise UdasegError("preprocess needs --raw (the downloaded data folder)", exit_code=2)
    all_cases = find_cases(domain, config.raw)
    cases = _shard(all_cases, config.shard)
    out = output_dir(work, manifest.name, domain.name, config.shard)
    stage_config = _stage_config(manifest, domain, config, cases)
    done = artifacts.reuse_if_current(out, stage_config, {}, progress.log, force=force)
    if done:
        return done
    started = time.perf_counter()
    # nothing to resume: a failure leaves no half-written artifact behind
    with artifacts.building(out, discard_on_error=True) as tmp:
        stats = write_store(manifest, domain, cases, tmp / layout.STORE, config.workers, progress)
        splits = make_splits(manifest, domain, [c.case_id for c in all_cases])
        _write_json(tmp / layout.SPLITS, splits)
        _write_json(tmp / layout.FINGERPRINT, fingerprint(manifest, domain, stats))
        summary = {
            "dataset": manifest.name,
            "domain": domain.name,
            "output": str(out),
            "cases": len(cases),
            "slices": int(sum(s["processed"]["size"][2] for s in stats)),
            "split_sizes": {k: len(splits[k]) for k in ("train", "val", "test")},
            "seconds": round(time.perf_counter() - started, 2),
            "skipped": False,
        }
        return artifacts.publish(tmp, out, stage=STAGE, config=stage_config, summary=summary)


def _shard(cases: list[CaseFiles], shard: tuple[int, int] | None) -> list[CaseFiles]:
    if shard is None:
        return cases
    index, count = shard
    if not 0 <= index < count:
        raise UdasegError(
            f"--shard {index}/{count}: the index must be in 0..{count - 1}",
            hint="SLURM: --shard ${SLURM_ARRAY_TASK_ID}/N with --array=0-(N-1)",
            exit_code=2,
        )
    return cases[index::count]


def fingerprint(manifest: DatasetManifest, domain: Domain, metas: list[dict]) -> dict:
    """Dataset statistics of one domain: spacings, shapes, orientations, intensities, classes."""

    def summary(values) -> dict:
        values = np.asarray(values, dtype=float)
        return {
            "min": values.min(0).tolist(),
            "median": np.median(values, 0).tolist(),
            "max": values.max(0).tolist(),
        }

    orientations: dict[str, int] = {}
    for meta in metas:
        code = meta["original"]["orientation"]
        orientations[code] = orientations.get(code, 0) + 1
    class_voxels = [m["class_voxels"] for m in metas if m["class_voxels"] is not None]
    return {
        "dataset": manifest.name,
        "domain": domain.name,
        "modality": domain.modality,
        "view": manifest.view,
        "classes": list(manifest.classes),
        "cases": len(metas),
        "original_spacing_xyz_mm": summary([m["original"]["spacing"] for m in metas]),
        "original_size_xyz": summary([m["original"]["size"] for m in metas]),
        "original_orientations": orientations,
        "processed_spacing_xyz_mm": summary([m["processed"]["spacing"] for m in metas]),
        "processed_size_xyz": summary([m["processed"]["size"] for m in metas]),
        "intensity_raw": {
            key: summary([m["intensity"][key] for m in metas]) for key in metas[0]["intensity"]
        }
        if metas
        else {},
        "class_voxels_total": np.sum(class_voxels, axis=0).tolist() if class_voxels else None,
        "seconds_per_case": summary([[m["seconds"]] for m in metas]),
    }


def _merge(manifest, domain, config, work, force, progress) -> artifacts.Manifest:
    """Join the n shards of a domain into the artifact one unsharded run would have written (its
    config and inputs too, so that run finds it current)."""
    parent = layout.stage_dir(work, layout.PREPROCESSED)
    prefix = layout.joined(manifest.name, domain.name, "shard-")
    shards = sorted(parent.glob(prefix + "*-of-*"), key=lambda p: p.name)
    shards = [s for s in shards if not s.name.endswith(artifacts.PARTIAL_SUFFIX)]
    if not shards:
        raise UdasegError(
            f"no shards {prefix}*-of-* under {parent}",
            hint="run `udaseg preprocess ... --shard i/n` for every i first",
        )
    count = int(shards[0].name.rsplit("-of-", 1)[1])
    expected = {f"{prefix}{i}-of-{count}" for i in range(count)}
    missing = sorted(expected - {s.name for s in shards})
    if missing:
        raise UdasegError(
            f"cannot merge {manifest.name}/{domain.name}: shards missing: {', '.join(missing)}",
            hint="rerun those shards, then merge again",
        )
    shards = [parent / name for name in sorted(expected)]
    for shard in shards:  # each shard complete and unmodified
        artifacts.require_input(
            shard, stage=STAGE, rerun=f"udaseg preprocess {manifest.name} --shard i/{count}"
        )
    if config.raw is None:
        raise UdasegError("--merge-shards needs --raw (as the shards had)", exit_code=2)
    all_cases = find_cases(domain, config.raw)
    # shards are a runtime option: this is the config of the unsharded run over all cases
    whole = _stage_config(manifest, domain, config, all_cases)
    from udaseg.data.store import Store

    held = sorted(c for s in shards for c in Store(s / layout.STORE).case_ids)
    if held != sorted(c.case_id for c in all_cases):
        raise UdasegError(
            f"cannot merge {manifest.name}/{domain.name}: the shards hold {len(held)} cases, "
            f"{config.raw} has {len(all_cases)}",
            hint="rerun the shards on the current raw data, then merge again",
        )
    out = output_dir(work, manifest.name, domain.name)
    done = artifacts.reuse_if_current(out, whole, {}, progress.log, force=force)
    if done:
        return done
    with artifacts.building(out) as tmp:
        merge_stores([s / layout.STORE for s in shards], tmp / layout.STORE)
        shutil.copy(shards[0] / layout.SPLITS, tmp / layout.SPLITS)
        metas = _metas(tmp / layout.STORE)
        _write_json(tmp / layout.FINGERPRINT, fingerprint(manifest, domain, metas))
        summary = {
            "dataset": manifest.name,
            "domain": domain.name,
            "output": str(out),
            "cases": len(metas),
            "merged_shards": count,
            "skipped": False,
        }
        progress.log(f"merged {count} shards into {out}")
        return artifacts.publish(tmp, out, stage=STAGE, config=whole, summary=summary)


def _metas(store_path: Path) -> list[dict]:
    from udaseg.data.store import Store

    store = Store(store_path)
    try:
        return [store.meta(c) for c in store.case_ids]
    finally:
        store.close()


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
