"""``udaseg translate apply``: render every source volume in K target styles, labels kept.

Each source volume is translated slice by slice (batches of ``batch_size`` slices, each padded
with its background to a multiple of 32 and cut back) once per style: the K codes chosen by a
``cluster-styles`` run (``style_run``), or, with no style run, the method's default style (K = 1;
the only choice for methods without style codes). The result is a store in the preprocessing
format (:mod:`udaseg.data.store`) that ``segment-train --train-on translated`` reads.

Output ``W/translated/<run>/`` (``<run>`` defaults to the style run's folder name, else
``<translate run>__k1`` for fixed-style methods or ``<translate run>__default-style``; with
``shard=(i, n)`` only every n-th source case from i on, into ``<run>__shard-i-of-n/``)::

    store.h5       attrs: the source's dataset, view, classes and labelled; domain
                   "<source domain>-to-<target domain>"; modality: the target's
                   /cases/<source case>__style<k>/image   (S, H, W) float32, the translated volume
                   /cases/<source case>__style<k>/label   the source label, copied unchanged
                   meta: the source case's meta (geometry, provenance) plus "style_index": k,
                   "source_case", "translator" (translate run name), "style_run" (name or null)
    splits.json    the source's splits with every case replaced by its K copies (so "train"
                   holds all K styles of each training case); "test_absent" kept as it was
    manifest.json  stage "translate-apply"; inputs: the translate run, the source store and the
                   style run (when used)

Every shard is a complete store artifact on its own; ``segment-train`` takes several
``--translated`` stores, so shards need no merging.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from udaseg import artifacts, layout
from udaseg.config import result_config
from udaseg.config.translate_apply import STAGE, TranslateApplyConfig
from udaseg.data.sampling import store_path
from udaseg.data.store import Store, StoreWriter
from udaseg.device import apply_threads, precision_record, resolve_device
from udaseg.errors import UdasegError, look_up_option
from udaseg.inference.cases import select_cases
from udaseg.progress import NullProgress, Progress
from udaseg.translation.io import CHECKPOINTS, render_volume


@dataclass
class Styles:
    """The K styles to render: ``codes`` (K, style_dim) float32, or None for the method's
    default style (K = 1); ``run``: the cluster-styles artifact they came from, if any."""

    codes: np.ndarray | None
    run: Path | None = None
    manifest: artifacts.Manifest | None = None

    @property
    def count(self) -> int:
        return 1 if self.codes is None else len(self.codes)


def resolve_styles(config: TranslateApplyConfig, translate, force: bool = False) -> Styles:
    """The styles to render with ``translate`` (a :class:`~udaseg.translation.io.TranslateRun`).

    Raises:
        UdasegError (exit code 2): a style run for a method without style codes, K > 1 without a
            style run, a style run of another translator (or of an older build of it), or a K
            that differs from the style run's.
    """
    if not translate.has_style_codes:
        return _fixed_style(config, translate)
    if config.style_run is None:
        if config.styles not in (None, 1):
            raise UdasegError(
                f"--styles {config.styles} needs the styles of a cluster-styles run",
                hint=f"run `udaseg cluster-styles --styles {config.styles} --translator "
                f"{translate.directory}` and pass its folder as --style-run (or use "
                "`udaseg translate --styles K` to do both)",
                exit_code=2,
            )
        return Styles(None)
    run = artifacts.check_finished(Path(config.style_run), "--style-run")
    manifest = artifacts.require_input(
        run, stage="cluster-styles", rerun="udaseg cluster-styles", force=force
    )
    made_by = manifest.inputs.get("translator", {})
    if made_by.get("manifest_hash") != translate.record()["manifest_hash"] and not force:
        raise UdasegError(
            f"style run {run} was clustered with another translator (or an older build of "
            f"{translate.directory})",
            hint=f"rerun `udaseg cluster-styles --translator {translate.directory}`",
            exit_code=2,
        )
    codes = np.load(run / layout.CENTROIDS).astype(np.float32)
    if config.styles not in (None, len(codes)):
        raise UdasegError(
            f"--styles {config.styles}, but style run {run} holds {len(codes)} styles",
            hint=f"drop --styles, or cluster again with --styles {config.styles}",
            exit_code=2,
        )
    return Styles(codes, run, manifest)


def _fixed_style(config: TranslateApplyConfig, translate) -> Styles:
    if config.style_run is not None or config.styles not in (None, 1):
        from udaseg.translation.registry import require_style_codes

        try:
            require_style_codes(translate.method)
        except UdasegError as exc:
            raise UdasegError(
                f"{exc.message}: it renders one fixed style, so --styles must be 1 and "
                "--style-run cannot be used",
                hint=exc.hint,
                exit_code=2,
            ) from exc
    return Styles(None)


def run_name(config: TranslateApplyConfig, translate, styles: Styles) -> str:
    if config.name:
        return artifacts.check_run_name(config.name)
    if styles.run is not None:
        return styles.run.resolve().name
    return layout.joined(translate.name, "default-style" if translate.has_style_codes else "k1")


def output_dir(work: Path, name: str, shard: tuple[int, int] | None = None) -> Path:
    if shard is not None:
        name += f"__shard-{shard[0]}-of-{shard[1]}"
    return layout.run_dir(work, layout.TRANSLATED, name)


def copy_id(case: str, style: int) -> str:
    """The translated store's case id of ``case`` rendered in style ``style``."""
    return f"{case}__style{style}"


def run(
    config: TranslateApplyConfig,
    work: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> artifacts.Manifest:
    """Translate the source cases and publish the translated store artifact.

    Skipped (summary ``skipped: true``) when current, unless ``force``. The summary holds
    ``run``, ``output``, ``cases``, ``copies``, ``styles``, ``slices``, ``seconds``,
    ``slices_per_second``, ``device`` and ``skipped``.

    Raises:
        UdasegError: see :func:`resolve_styles`; stale or unfinished inputs (unless ``force``),
            a source store of another view or classes than the translator's, a bad shard.
    """
    from udaseg.translation.io import open_run

    progress = progress or NullProgress()
    if config.batch_size < 1:
        raise UdasegError(f"--batch-size {config.batch_size}: need >= 1", exit_code=2)
    look_up_option(config.checkpoint, CHECKPOINTS, what="--checkpoint")
    apply_threads(config.threads)
    translate = open_run(
        artifacts.check_finished(Path(config.translator), "--translator"), force=force
    )
    styles = resolve_styles(config, translate, force)
    source_dir = artifacts.check_finished(Path(config.source or translate.source), "--source")
    source_manifest = artifacts.require_input(
        source_dir, stage="preprocess", rerun="udaseg preprocess", force=force
    )
    source = Store(store_path(source_dir))
    _check_source(translate, source)
    ids = select_cases(list(source.case_ids), None, config.shard)
    device = resolve_device(config.device)
    inputs = {
        "translator": translate.record(),
        "source": artifacts.input_record(source_dir, source_manifest),
    }
    if styles.run is not None:
        inputs["styles"] = artifacts.input_record(styles.run, styles.manifest)
    out = output_dir(work, run_name(config, translate, styles), config.shard)
    stage_config = _stage_config(config, translate, styles, source_dir, ids, device)
    done = artifacts.reuse_if_current(out, stage_config, inputs, progress.log, force=force)
    if done:
        return done
    job = _Job(config, translate, styles, source, source_dir, ids, device)
    return _apply(job, out, stage_config, inputs, progress)


def _check_source(translate, source: Store) -> None:
    trained = translate.info.get("source", {})
    for key, have in (("view", source.view), ("classes", list(source.classes))):
        if trained.get(key) not in (None, have):
            raise UdasegError(
                f"translator {translate.directory} was trained on a source store with {key} "
                f"{trained[key]}, but {source.path} has {have}",
                hint="pass the source store the translator was trained on (or one preprocessed "
                "with the same manifest)",
                exit_code=2,
            )


def _stage_config(config, translate, styles, source_dir, ids, device) -> dict[str, Any]:
    from udaseg.translation.io import PAD_MULTIPLE

    return result_config(
        config,
        translator=translate.directory,
        method=translate.method,
        source=source_dir,
        styles=styles.count,
        style_run=styles.run,
        cases=ids,
        # what --amp resolved to here: on a CPU without native bf16, --amp and --no-amp agree
        **precision_record(device, config.amp),
        pad_multiple=PAD_MULTIPLE,
    )


@dataclass
class _Job:
    config: TranslateApplyConfig
    translate: Any
    styles: Styles
    source: Store
    source_dir: Path
    ids: list[str]
    device: str


def _apply(job: _Job, out: Path, stage_config, inputs, progress) -> artifacts.Manifest:
    from udaseg.translation.io import load_translator

    started = time.perf_counter()
    translator, _ = load_translator(job.translate.directory, job.config.checkpoint, job.device)
    # nothing to resume: a failure leaves no half-written artifact behind
    with artifacts.building(out, discard_on_error=True) as tmp:
        slices = _write_store(job, translator, tmp / layout.STORE, progress)
        splits = map_splits(_read_splits(job.source_dir), job.ids, job.styles.count)
        (tmp / layout.SPLITS).write_text(json.dumps(splits, indent=2) + "\n")
        seconds = time.perf_counter() - started
        summary = {
            "run": out.name,
            "output": str(out),
            "translator": job.translate.name,
            "method": job.translate.method,
            "style_run": str(job.styles.run) if job.styles.run else None,
            "styles": job.styles.count,
            "cases": len(job.ids),
            "copies": len(job.ids) * job.styles.count,
            "slices": slices,
            "seconds": round(seconds, 2),
            "slices_per_second": round(slices / max(seconds, 1e-9), 2),
            "device": job.device,
            "batch_size": job.config.batch_size,
            "shard": list(job.config.shard) if job.config.shard else None,
            "skipped": False,
        }
        return artifacts.publish(
            tmp, out, stage=STAGE, config=stage_config, inputs=inputs, summary=summary
        )


def _write_store(job: _Job, translator, path: Path, progress: Progress) -> int:
    """Write every (case, style) copy; returns the number of slices translated."""
    source, info = job.source, job.translate.info
    target = info.get("target", {})
    task = progress.task(f"translate apply {job.translate.method}", len(job.ids) * job.styles.count)
    slices = 0
    with StoreWriter(
        path,
        dataset=source.dataset,
        domain=f"{source.domain}-to-{target.get('domain', 'target')}",
        modality=str(target.get("modality", source.modality)),
        view=source.view,
        classes=source.classes,
        labelled=source.labelled,
    ) as writer:
        for case in job.ids:
            image, label, meta = source.image(case), source.label(case), source.meta(case)
            for k in range(job.styles.count):
                style = None if job.styles.codes is None else job.styles.codes[k]
                translated = render_volume(
                    translator, image, style, job.config.batch_size, job.device, job.config.amp
                )
                extra = {
                    "style_index": k,
                    "source_case": case,
                    "translator": job.translate.name,
                    "style_run": job.styles.run.resolve().name if job.styles.run else None,
                }
                writer.add_case(copy_id(case, k), translated, label, {**meta, **extra})
                slices += len(image)
                progress.advance(task, case=copy_id(case, k))
    return slices


def _read_splits(source_dir: Path) -> dict[str, Any]:
    path = Path(source_dir) / layout.SPLITS
    if not path.is_file():
        raise UdasegError(f"source store {source_dir} has no {layout.SPLITS}", path=path)
    return json.loads(path.read_text(encoding="utf-8"))


def map_splits(splits: dict[str, Any], cases: list[str], styles: int) -> dict[str, Any]:
    """The source's splits with each of ``cases`` replaced by its ``styles`` copies (cases not
    translated here, e.g. other shards', dropped); non-list entries and ``test_absent`` kept."""
    present = set(cases)
    mapped = {}
    for key, value in splits.items():
        if isinstance(value, list) and key != "test_absent":
            value = [copy_id(c, k) for c in value if c in present for k in range(styles)]
        mapped[key] = value
    mapped["styles"] = styles
    return mapped
