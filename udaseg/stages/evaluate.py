"""``udaseg evaluate``: score predicted label maps against reference labels, per case and class.

Inputs, matched by case id:

* predictions (``pred``): a folder of ``<case_id>.nii.gz`` (or ``.nii``) label maps, what
  ``udaseg predict`` writes on the original scan grid; or an HDF5 store (``store.h5``, or an
  artifact folder holding one) whose cases have labels (class ids). A folder's maps hold the
  dataset's label codes or class ids (:mod:`udaseg.data.label_values`): a predict run's manifest
  records which (and the value of each class; older runs, recording none, hold class ids); any other
  folder is read as ``pred_values`` says (required), the codes being those of ``domain`` (or,
  without it, of a raw ``ref``'s domain, or the ones the labelled domains share). Codes are mapped
  back to class ids; a value that is none of them is an error naming the file and the value;
* reference (``ref``), recognised in this order:
  1. a store (``*.h5`` file, or a folder holding ``store.h5``): class ids already, geometry from
     each case's ``meta["processed"]``;
  2. the raw dataset folder, when the ``labels`` pattern of the dataset manifest's domain finds
     files in it: cases come from :func:`udaseg.data.readers.find_cases`, raw label codes are
     mapped to class ids with the domain's ``label_map`` (unknown codes are an error);
  3. a folder of ``<case_id>.nii.gz`` class-id maps.

Every pair must share its grid (size, spacing, origin, direction within tolerance), and every
label map must hold class ids 0..C of the manifest's classes once read. Classes are evaluated as the
manifest's :meth:`~udaseg.data.manifest.DatasetManifest.evaluation_classes` (BraTS: regions WT, TC,
ET). Arrays are (S, H, W) = (z, y, x) as ``sitk.GetArrayFromImage`` gives them, so the spacing
handed to the metrics is the SimpleITK (x, y, z) spacing reversed.

Sources, loading and the grid check live in :mod:`udaseg.evaluation` (the report reads cases
through them too).

Output: ``W/evaluate/<run>/`` with ``per_case.csv`` (one row per case and class), ``summary.json``
(statistics per class and over classes, options and definitions; see
:mod:`udaseg.metrics.tables`), ``table.md`` (the paper-style table) and ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from udaseg import artifacts, layout
from udaseg.config import result_config
from udaseg.config.evaluate import STAGE, EvaluateConfig
from udaseg.data.manifest import DatasetManifest, Domain, load_manifest
from udaseg.errors import UdasegError, look_up_option
from udaseg.evaluation.labels import Item, case_item, check_pair, load_labels
from udaseg.evaluation.sources import Source, match_cases, resolve_pred, resolve_ref
from udaseg.metrics import tables
from udaseg.metrics.case import EMPTY_DISTANCE_POLICIES, METRICS, UNITS, evaluate_case
from udaseg.metrics.surface import ASSD_MODES, HD95_MODES
from udaseg.progress import NullProgress, Progress


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """``"hd95, dice"`` or ``["hd95", "dice"]`` -> ``["dice", "hd95"]`` (table order).

    Raises:
        UdasegError: an unknown metric (with a "did you mean") or none at all; exit code 2.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [item.strip().lower() for item in items if item.strip()]
    if not names:
        raise UdasegError("no metric given", hint=f"e.g. --metric {','.join(METRICS)}", exit_code=2)
    for name in names:
        look_up_option(name, METRICS, what="metric")
    return tables.ordered_metrics(names)


def _check_options(config: EvaluateConfig) -> list[str]:
    metrics = parse_metrics(config.metric)
    look_up_option(config.unit, UNITS, what="--unit")
    look_up_option(config.hd95, HD95_MODES, what="--hd95 definition")
    look_up_option(config.assd, ASSD_MODES, what="--assd definition")
    look_up_option(config.empty_distance, EMPTY_DISTANCE_POLICIES, what="--empty-distance policy")
    if config.connectivity not in (1, 2, 3):
        raise UdasegError(
            f"--connectivity {config.connectivity} is not 1, 2 or 3",
            hint="1: face neighbours (medpy's default), 2: + edges, 3: + corners",
            exit_code=2,
        )
    if config.workers < 1:
        raise UdasegError(f"--workers {config.workers} must be at least 1", exit_code=2)
    return metrics


# --- one case -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    case_id: str
    pred: Item
    ref: Item
    manifest: DatasetManifest
    domain: Domain | None
    options: dict[str, Any]


@dataclass(frozen=True)
class _Failure:
    """A UdasegError carried back from a worker (its hint and exit code survive pickling)."""

    message: str
    hint: str | None
    path: str | None
    exit_code: int

    def error(self) -> UdasegError:
        return UdasegError(self.message, hint=self.hint, path=self.path, exit_code=self.exit_code)


def evaluate_job(job: _Job) -> dict[str, dict[str, float]] | _Failure:
    """Load, check and score one case (runs in worker processes; errors come back as values)."""
    try:
        pred = load_labels(job.pred, job.manifest, job.domain)
        ref = load_labels(job.ref, job.manifest, job.domain)
        check_pair(job.case_id, pred, ref)
        spacing_zyx = ref.geometry["spacing"][::-1]
        return evaluate_case(
            pred.array,
            ref.array,
            job.manifest.evaluation_classes(),
            spacing_mm=spacing_zyx,
            **job.options,
        )
    except UdasegError as exc:
        path = str(exc.path) if exc.path is not None else None
        return _Failure(exc.message, exc.hint, path, exc.exit_code)


def _outcomes(jobs: list[_Job], workers: int) -> Iterator[dict | _Failure]:
    """Results in job order, computed in ``workers`` processes (identical to serial)."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(evaluate_job, jobs)
        return
    # spawn, not fork: SimpleITK's and h5py's threads and handles do not survive a fork safely
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(evaluate_job, job) for job in jobs]
        try:
            for future in futures:
                yield future.result()
        finally:  # an error in one case stops the queued ones instead of computing them
            for future in futures:
                future.cancel()


def evaluate_all(jobs: list[_Job], workers: int, progress: Progress) -> dict[str, dict]:
    """``{case_id: {class: {metric: value}}}``; the first failing case (in case order) raises."""
    task = progress.task("evaluate", len(jobs))
    results = {}
    # closing() shuts the pool down at the first failure, not when the traceback is collected
    with contextlib.closing(_outcomes(jobs, workers)) as outcomes:
        for job, outcome in zip(jobs, outcomes, strict=False):
            if isinstance(outcome, _Failure):
                raise outcome.error()
            results[job.case_id] = outcome
            progress.advance(task, case=job.case_id)
    return results


# --- the stage ----------------------------------------------------------------------------------


def output_dir(work: Path, name: str) -> Path:
    return layout.run_dir(work, layout.EVALUATE, name)


def run_name(config: EvaluateConfig) -> str:
    """``config.name``, or the prediction folder's name (the store's folder for a store file)."""
    if config.name is not None:
        return artifacts.check_run_name(config.name)
    pred = Path(config.pred).resolve()
    base = pred.parent.name if pred.is_file() else pred.name
    return re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip("._-") or "run"


def _fingerprint(source: Source, ids: list[str]) -> str | None:
    """Hash of the content of what is read (names relative to the folder), for inputs that are
    not artifacts (those are tracked through their manifest hash instead)."""
    if source.artifact is not None:
        return None
    if source.kind == "store":
        return artifacts.config_hash({"files": artifacts.files_fingerprint([source.path])})
    if source.kind == "raw":
        paths = [source.files[i].label for i in ids]
    else:
        paths = [source.files[i] for i in ids]
    return artifacts.config_hash({"files": artifacts.files_fingerprint(paths, source.path)})


def _options(config: EvaluateConfig, metrics: list[str]) -> dict[str, Any]:
    """Keyword arguments of :func:`evaluate_case` for every case."""
    return {
        "metrics": metrics,
        "unit": config.unit,
        "hd95_mode": config.hd95,
        "assd_mode": config.assd,
        "connectivity": config.connectivity,
        "empty_distance": config.empty_distance,
    }


def _stage_config(config, manifest, pred, ref, ids, options) -> dict[str, Any]:
    return result_config(
        config,
        dataset=manifest.name,
        manifest=manifest.raw,
        domain=ref.domain.name if ref.domain else config.domain,
        pred={**pred.record(), "fingerprint": _fingerprint(pred, ids)},
        ref={**ref.record(), "fingerprint": _fingerprint(ref, ids)},
        cases=ids,
        # checked and in table order, so "hd95,dice" and "dice,hd95" are one result
        metric=options["metrics"],
    )


def _inputs(pred: Source, ref: Source, force: bool) -> dict[str, dict[str, str]]:
    """Manifest records of the inputs that are artifacts; stale ones are refused here."""
    inputs = {}
    for key, source in (("pred", pred), ("ref", ref)):
        if source.artifact is None:
            continue
        found = artifacts.load_manifest(source.artifact)
        # preprocess takes the dataset as an argument; predict records dataset None when it
        # read a store, which is no argument to repeat
        dataset = found.config.get("dataset")
        rerun = f"udaseg {found.stage}" + (f" {dataset}" if dataset else "")
        checked = artifacts.require_input(
            source.artifact, stage=found.stage, rerun=rerun, force=force
        )
        inputs[key] = artifacts.input_record(source.artifact, checked)
    return inputs


def run(
    config: EvaluateConfig,
    work: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> artifacts.Manifest:
    """Evaluate ``config.pred`` against ``config.ref``; returns the artifact's manifest.

    The summary holds summary.json's content plus ``skipped`` and ``seconds``. An artifact
    built from the same inputs and options is left as it is (``skipped: true``) unless ``force``.

    Raises:
        UdasegError: bad options, a --pred folder of unknown values (no predict run, no
            ``pred_values``), unmatched cases, grid mismatches, values that are neither the class
            ids nor the codes the predictions should hold, unreadable files, or stale input
            artifacts; each naming the case and files.
    """
    progress = progress or NullProgress()
    metrics = _check_options(config)
    manifest = load_manifest(config.dataset)
    domain = manifest.domain(config.domain) if config.domain else None
    pred_path = artifacts.check_finished(Path(config.pred), "--pred")
    ref = resolve_ref(artifacts.check_finished(Path(config.ref), "--ref"), manifest, domain)
    pred = resolve_pred(pred_path, manifest, config.pred_values, domain or ref.domain)
    inputs = _inputs(pred, ref, force)
    wanted = config.cases
    if config.predicted_only:
        if config.cases:
            raise UdasegError("give --cases or --predicted-only, not both", exit_code=2)
        wanted = list(pred.ids)
    ids = match_cases(pred, ref, wanted)
    options = _options(config, metrics)
    out = output_dir(work, run_name(config))
    stage_config = _stage_config(config, manifest, pred, ref, ids, options)
    done = artifacts.reuse_if_current(out, stage_config, inputs, progress.log, force=force)
    if done:
        return done
    started = time.perf_counter()
    jobs = [
        _Job(
            i,
            case_item(pred, "prediction", i),
            case_item(ref, "reference", i),
            manifest,
            ref.domain,
            options,
        )
        for i in ids
    ]
    per_case = evaluate_all(jobs, config.workers, progress)
    summary = build_summary(per_case, manifest, config, pred, ref, options, out)
    with artifacts.building(out) as tmp:
        write_per_case(tmp / layout.PER_CASE, per_case, metrics)
        # explicit UTF-8: the table holds "±" and "—", and the locale may be ASCII (LANG=C)
        recorded = artifacts.portable(summary, out)  # paths in W as <work>/..., see artifacts
        text = json.dumps(recorded, indent=2, ensure_ascii=False) + "\n"
        (tmp / layout.SUMMARY).write_text(text, encoding="utf-8")
        (tmp / layout.TABLE).write_text(tables.markdown_table(summary), encoding="utf-8")
        seconds = round(time.perf_counter() - started, 2)
        return artifacts.publish(
            tmp,
            out,
            stage=STAGE,
            config=stage_config,
            inputs=inputs,
            summary={**summary, "skipped": False, "seconds": seconds},
        )


def build_summary(per_case, manifest, config, pred, ref, options, out) -> dict[str, Any]:
    """The content of summary.json (see :mod:`udaseg.metrics.tables` for the statistics)."""
    classes = manifest.evaluation_classes()
    metrics = options["metrics"]
    shown = {
        "metrics": metrics,
        "unit": options["unit"],
        "hd95": options["hd95_mode"],
        "assd": options["assd_mode"],
        "connectivity": options["connectivity"],
        "empty_distance": options["empty_distance"],
    }
    return {
        "run": out.name,
        "output": str(Path(out).resolve()),
        "dataset": manifest.name,
        "domain": ref.domain.name if ref.domain else config.domain,
        "pred": pred.record(),
        "ref": ref.record(),
        "n_cases": len(per_case),
        "cases": list(per_case),
        "class_labels": {name: list(ids) for name, ids in classes.items()},
        "metrics": metrics,
        "options": shown,
        "definitions": tables.metric_definitions(shown),
        "caption": tables.definitions_line(shown),
        **tables.aggregate(per_case, list(classes), metrics),
    }


def write_per_case(path: Path, per_case: dict, metrics: list[str]) -> None:
    """One row per case and class: ``case, class, <metric>...``; values with full precision
    (``repr``), a missing value as ``nan``."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "class", *metrics])
        for case, scores in per_case.items():
            for name, values in scores.items():
                writer.writerow([case, name, *(repr(float(values[m])) for m in metrics)])
