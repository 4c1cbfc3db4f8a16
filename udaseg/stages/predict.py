"""``udaseg predict``: segment scans with a trained model, writing label maps on the original grid.

Inputs:

* ``model_dir``: a model directory (``segment-train`` / ``adapt`` output: ``model.json`` and
  ``checkpoint_{best,final,latest}.pt``, see :mod:`udaseg.training.checkpoint`);
* ``data``, either
  1. a preprocessed store: a ``preprocess`` artifact folder holding ``store.h5``, or a ``store.h5``
     file (an artifact when its folder has a manifest). Every case is predicted on the stored,
     processed grid; the geometry records in each case's meta take the result back; or
  2. a raw dataset folder, with ``dataset`` (manifest name or YAML) and ``domain``: the domain's
     ``images`` pattern finds the cases and each image is preprocessed in memory exactly as
     ``udaseg preprocess`` did for the model's training data
     (:func:`~udaseg.data.pipeline.preprocess_case`, labels not read): with the resolved settings
     (spacing, crop, size, normalisation, orientation rule, ``--set`` overrides included) that
     model.json records for that domain (:mod:`~udaseg.inference.preprocessing`). A manifest of
     another dataset whose settings differ from the record is refused; a model without a record
     gets the manifest's own settings and a warning. The run's config records the settings used.

The model's classes and view must be the data's (store attributes, or the manifest's). Inputs in
unfinished (``.partial``) or replaced (``.old``) folders are refused, and so is a shard that would
take no case; case ids must be plain file names.

Output: ``W/predict/<run>/`` with ``<case_id>.nii.gz`` for every case, on the ORIGINAL image's grid
(its size, spacing, origin and direction, so it overlays the source file voxel by voxel; voxels
preprocessing cropped away are background), holding (``label_values``,
:mod:`udaseg.data.label_values`):

* ``dataset-codes`` (default): the dataset's own label code of each class in the predicted domain,
  as its ground-truth files have them (abdominal-normalized CT: liver 6, right kidney 2, left
  kidney 3, spleen 1; MR: 1, 2, 3, 4); the smallest code where several map to one class;
  background 0; uint8, or uint16 when a code exceeds 255 (MM-WHS). The codes come from the
  dataset manifest: ``--dataset`` for raw data, the one a ``preprocess`` artifact's manifest
  records for a store, else the one the model's ``model.json`` records for the store's dataset.
  Where none is known, or the domain has no codes (an unlabelled domain whose labelled domains
  disagree, CHAOS's grey-level PNG ranges), class ids are written, with a one-line notice;
* ``class-ids``: uint8 ids 0..C in the order of the model's ``classes``.

Beside them ``labels.itksnap.txt`` (ITK-SNAP label descriptions) and ``labels.ctbl`` (a 3D Slicer
colour table) name background and each class with the value written and give each class one
colour (:mod:`udaseg.inference.label_tables`); ``manifest.json`` (inputs: the model directory when
it is an artifact and the data when it is one; summary: cases, seconds, seconds per case, and
``label_values``, ``label_source`` and ``label_table`` (class -> value), from which ``udaseg
evaluate`` reads the maps back; the same under ``written`` in the config, so the choice is part of
the config hash). ``<run>`` defaults to
``<model folder>__<data name>``, the data name being the store's folder (``<dataset>__<domain>``
for a ``preprocess`` artifact) or ``<dataset>__<domain>`` for raw data. With ``shard=(i, n)`` only
every n-th case from i on is predicted, into ``<run>__shard-i-of-n/``; ``merge_shards`` copies the
n finished shards' files into ``<run>/``. (``udaseg evaluate`` reads any folder of case files, so a
shard can also be evaluated alone with ``--cases``.)

Inference itself (windows, padding, Gaussian weighting, flips) is :mod:`udaseg.inference`, which
also reads the model directory (:mod:`~udaseg.inference.models`) and the data
(:mod:`~udaseg.inference.sources`) and picks the cases (:mod:`~udaseg.inference.cases`).
"""

from __future__ import annotations

import functools
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from udaseg import artifacts, layout
from udaseg.config import result_config
from udaseg.config.predict import STAGE, PredictConfig
from udaseg.config.values import CLASS_IDS
from udaseg.data.label_values import (
    BACKGROUND,
    LabelValues,
    class_ids,
    dataset_codes,
    from_record,
)
from udaseg.device import apply_threads, precision_record, resolve_device
from udaseg.errors import UdasegError
from udaseg.inference.cases import select_cases
from udaseg.inference.label_tables import write_label_tables
from udaseg.inference.models import (
    ModelSource,
    input_channels,
    model_dims,
    require_model,
    resolve_model,
)
from udaseg.inference.options import inference_options
from udaseg.inference.sources import (
    CaseInput,
    DataSource,
    check_compatible,
    dataset_manifest,
    input_records,
    preprocess_like,
    resolve_data,
    safe_name,
)
from udaseg.progress import NullProgress, Progress

SUFFIX = ".nii.gz"

Segmenter = Callable[[np.ndarray], np.ndarray]


# --- writing results -----------------------------------------------------------------------------


def write_label(
    path: Path, label: np.ndarray, meta: dict[str, Any], values: LabelValues | None = None
) -> None:
    """Write an (S, H, W) class-id map on the processed grid as NIfTI on the original image's
    grid, its ids turned into ``values`` (default: class ids, uint8)."""
    import SimpleITK as sitk

    from udaseg.data.geometry import restore_label

    image = restore_label(label, meta["processed"], meta["original"], meta.get("assumed_direction"))
    if values is not None and not values.is_class_ids:
        # codes after the resampling, which keeps uint8 ids (nearest neighbour: no new values)
        coded = sitk.GetImageFromArray(values.encode(sitk.GetArrayFromImage(image)))
        coded.CopyInformation(image)
        image = coded
    sitk.WriteImage(image, str(path), useCompression=True)


def label_values(
    config: PredictConfig,
    models: list[ModelSource],
    data: DataSource,
    log: Callable[[str], None],
) -> LabelValues:
    """What the written maps hold: ``config.label_values``; dataset codes fall back to class ids,
    with one line to ``log`` saying why, where the data's manifest or its codes are unknown."""
    ids = class_ids(data.classes, data.dataset)
    if config.label_values == CLASS_IDS:
        return ids
    manifest = dataset_manifest(data, models)
    if manifest is None:
        why = f"no dataset manifest is recorded for --data {config.data}"
    else:
        try:
            return dataset_codes(manifest, data.domain)
        except UdasegError as exc:
            why = exc.message
    log(
        f"predictions hold class ids ({ids.describe()}), not {data.dataset}/{data.domain}'s "
        f"label codes: {why}"
    )
    return ids


def predict_cases(
    cases: Iterable[CaseInput],
    segment: Segmenter,
    folder: Path,
    progress: Progress | None = None,
    total: int | None = None,
    values: LabelValues | None = None,
) -> dict[str, float]:
    """Segment each case with ``segment`` ((S, H, W) float32 -> (S, H, W) class ids) and write
    ``folder/<case_id>.nii.gz`` on its original grid, as ``values`` (default: class ids); returns
    the seconds per case (reading or preprocessing, inference and writing).

    The stage calls it with a model's :func:`udaseg.inference.segment_volume`; any function of the
    volume will do (tests feed the stored label through a one-hot "model" to check geometry).
    """
    progress = progress or NullProgress()
    task = progress.task("predict", total)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for case in cases:
        label = np.asarray(segment(case.image))
        if label.shape != case.image.shape:
            raise UdasegError(
                f"case {case.case_id}: the segmenter returned shape {label.shape} for an image "
                f"of shape {case.image.shape}"
            )
        write_label(Path(folder) / f"{case.case_id}{SUFFIX}", label, case.meta, values)
        now = time.perf_counter()
        seconds[case.case_id] = round(now - started, 3)
        started = now
        progress.advance(task, case=case.case_id)
    return seconds


def _run_options(info: dict[str, Any], config: PredictConfig, device: str) -> dict:
    """:func:`inference_options` with a predict run's options."""
    return inference_options(
        info,
        device,
        batch_size=config.batch_size,
        amp=config.amp,
        stride=config.stride,
        gaussian=config.gaussian,
        tta=config.tta,
    )


def model_segmenter(model, info: dict[str, Any], config: PredictConfig, device: str) -> Segmenter:
    """:func:`udaseg.inference.segment_volume` with the model's layout and the run's options."""
    from udaseg.inference import keep_largest_component, segment_volume

    segment = functools.partial(segment_volume, model, **_run_options(info, config, device))
    if not config.largest_component:
        return segment
    return lambda volume: keep_largest_component(segment(volume))


def ensemble_segmenter(
    models: list[tuple[Any, dict[str, Any]]], config: PredictConfig, device: str
) -> Segmenter:
    """Like :func:`model_segmenter` for several (model, model.json info) pairs of one layout: the
    argmax of their mean class probabilities, each model with its own window."""
    from udaseg.inference import keep_largest_component, predict_volume

    options = [_run_options(info, config, device) for _, info in models]

    def segment(volume: np.ndarray) -> np.ndarray:
        # the sum has the mean's argmax; one (C, S, H, W) buffer at a time
        total = predict_volume(models[0][0], volume, **options[0])
        for (model, _), kwargs in zip(models[1:], options[1:], strict=True):
            total += predict_volume(model, volume, **kwargs)
        label = total.argmax(0).astype(np.uint8)
        return keep_largest_component(label) if config.largest_component else label

    return segment


def run_name(config: PredictConfig, model: ModelSource, data: DataSource) -> str:
    """``config.name``, or ``<model folder>__<data name>``."""
    if config.name is None:
        return safe_name(layout.joined(model.directory.resolve().name, data.name))
    return artifacts.check_run_name(config.name)


def output_dir(work: Path, name: str, shard: tuple[int, int] | None = None) -> Path:
    if shard is not None:
        name += f"__shard-{shard[0]}-of-{shard[1]}"
    return layout.run_dir(work, layout.PREDICT, name)


def _trained_with_flips(model: ModelSource) -> bool:
    """Whether the model's run flipped its training samples (``segment-train --flip``); a bare
    model folder, without a manifest to say so, counts as not."""
    config = artifacts.load_manifest(model.directory).config if model.artifact else {}
    return bool(config.get("flip", False))


def _check_stride(stride: Any, dims: int) -> None:
    if stride is None:
        return
    if isinstance(stride, int | float):
        if not 0 < stride <= 1:
            raise UdasegError(f"--stride {stride}: a fraction must be in (0, 1]", exit_code=2)
        return
    stride = tuple(stride)
    if isinstance(stride, tuple) and (len(stride) != dims or min(stride) < 1):
        raise UdasegError(
            f"--stride {','.join(map(str, stride))}: this {dims}D model needs {dims} positive "
            f"voxel counts ({'H,W' if dims == 2 else 'D,H,W'})",
            exit_code=2,
        )


# --- the stage -----------------------------------------------------------------------------------


def _stage_config(
    config: PredictConfig,
    model: ModelSource,
    data: DataSource,
    ids: list[str],
    device: str,
    members: list[ModelSource],
    values: LabelValues,
) -> dict[str, Any]:
    return result_config(
        config,
        # what was written for each class: the request, resolved (codes, or ids as a fallback)
        written=values.record(),
        model=model.record(),
        ensemble=[m.record() for m in members],
        data=data.record(ids),
        cases=ids,
        dims=model_dims(model.info),
        patch_size=model.info.get("patch_size"),
        in_channels=input_channels(model.info),
        # what --amp resolved to here: on a CPU without native bf16, --amp and --no-amp agree
        **precision_record(device, config.amp),
    )


def run(
    config: PredictConfig,
    work: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> artifacts.Manifest:
    """Predict the data's cases with the model; returns the artifact's manifest.

    The summary holds ``run``, ``output``, ``cases`` (count), ``case_ids``, ``seconds``,
    ``seconds_per_case`` ({case: s}), ``device``, ``checkpoint``, ``label_values``,
    ``label_source``, ``label_table`` ({class: value written}, background first) and
    ``skipped``. An artifact built from the same model, data and options is left as it is
    (``skipped: true``) unless ``force``.

    Raises:
        UdasegError: bad options, unknown checkpoint name, missing model or checkpoint, stale
            input artifacts (unless ``force``), unfinished input folders, classes or view that
            differ between model and data, raw data whose manifest contradicts the model's
            recorded preprocessing, unknown or non-plain case ids, an empty shard, unreadable
            scans. All before anything is written.
    """
    progress = progress or NullProgress()
    apply_threads(config.threads)
    model = resolve_model(config.model_dir, config.checkpoint)
    _check_stride(config.stride, model_dims(model.info))
    if config.tta and not _trained_with_flips(model):
        # measured: BiGL + GIN on real abdominal MR fell from 0.73 to 0.05 mean Dice with --tta
        warnings.warn(
            f"--tta averages over flipped copies of each scan; {config.model_dir} was trained "
            "without flips (`segment-train --flip`), so a model that has not seen flipped "
            "anatomy usually gets worse, often much worse. Compare with and without "
            "--tta on labelled source cases before relying on it.",
            UserWarning,
            stacklevel=2,
        )
    if config.batch_size < 1:
        raise UdasegError(f"--batch-size {config.batch_size}: need >= 1", exit_code=2)
    require_model(model, force)
    members = _ensemble(config, model, force)
    data = resolve_data(config.data, force, config.dataset, config.domain)
    data = preprocess_like([model, *members], data, progress.log)
    for member in (model, *members):
        check_compatible(member, data)
    name = run_name(config, model, data)
    ids = select_cases(data.case_ids, _wanted(config, data), config.shard)
    for case_id in ids:  # each becomes <case>.nii.gz in the run folder
        layout.check_name(case_id, f"case id in --data {config.data}")
    device = resolve_device(config.device)
    values = label_values(config, [model, *members], data, progress.log)
    if config.merge_shards:
        # the merged artifact records what one unsharded run would have (shards are runtime
        # options), so that run (e.g. a later `udaseg run`) finds it current instead of
        # predicting everything again
        merged_config = _stage_config(config, model, data, ids, device, members, values)
        merged_inputs = _ensemble_inputs(input_records(model, data), members)
        return merge_shards(
            work, name, merged_config, merged_inputs, force=force, progress=progress
        )
    out = output_dir(work, name, config.shard)
    stage_config = _stage_config(config, model, data, ids, device, members, values)
    inputs = _ensemble_inputs(input_records(model, data), members)
    done = artifacts.reuse_if_current(out, stage_config, inputs, progress.log, force=force)
    if done:
        return done
    return _predict(config, model, data, ids, device, out, stage_config, inputs, progress, values)


def _ensemble(config: PredictConfig, model: ModelSource, force: bool) -> list[ModelSource]:
    """The --ensemble model directories, checked: current, and the same layout as the first."""
    members = []
    for directory in config.ensemble:
        member = resolve_model(directory, config.checkpoint, "--ensemble")
        require_model(member, force)
        for what, aspect in (
            ("classes", lambda info: info.get("classes")),
            ("view", lambda info: info.get("view")),
            ("dimensions", model_dims),
            ("input channels", input_channels),
        ):
            if aspect(member.info) != aspect(model.info):
                raise UdasegError(
                    f"--ensemble {directory}: its {what} ({aspect(member.info)}) differ from "
                    f"--model-dir {config.model_dir}'s ({aspect(model.info)})",
                    hint="ensemble models trained for the same classes, view and input layout",
                    path=directory,
                    exit_code=2,
                )
        members.append(member)
    return members


def _ensemble_inputs(inputs: dict, members: list[ModelSource]) -> dict:
    """``inputs`` with the ensemble members that are artifacts as ``ensemble0``, ``ensemble1``..."""
    for i, member in enumerate(members):
        if member.artifact:
            manifest = artifacts.load_manifest(member.directory)
            inputs[f"ensemble{i}"] = artifacts.input_record(member.directory, manifest)
    return inputs


def _wanted(config: PredictConfig, data: DataSource) -> list[str] | None:
    """The case ids asked for with --cases or --split (None: all)."""
    if config.split is None:
        return config.cases
    if config.cases is not None:
        raise UdasegError("give --cases or --split, not both", exit_code=2)
    if data.artifact is None:
        raise UdasegError(
            f"--split {config.split} needs a preprocessed store artifact (it reads splits.json), "
            f"but --data {config.data} is not one",
            hint="pass the `udaseg preprocess` output folder, or list the cases with --cases",
            exit_code=2,
        )
    from udaseg.data.sampling import split_cases

    cases = split_cases(data.artifact, config.split, data)
    if not cases:
        raise UdasegError(
            f"split '{config.split}' of {data.artifact} holds no cases",
            hint="choose another split (train, val, test, all); see its splits.json",
            path=data.artifact,
            exit_code=2,
        )
    return cases


def _predict(config, model, data, ids, device, out, stage_config, inputs, progress, values):
    from udaseg.training.checkpoint import load_model

    started = time.perf_counter()
    network, info = load_model(model.directory, config.checkpoint, device)
    if config.ensemble:
        members = [
            (network, info),
            *(load_model(d, config.checkpoint, device) for d in config.ensemble),
        ]
        segment = ensemble_segmenter(members, config, device)
    else:
        segment = model_segmenter(network, info, config, device)
    # nothing to resume: a failure leaves no half-written artifact behind
    with artifacts.building(out, discard_on_error=True) as tmp:
        seconds = predict_cases(data.cases(ids), segment, tmp, progress, len(ids), values)
        write_label_tables(tmp, values, f"udaseg predict {out.name}: {data.dataset}/{data.domain}")
        summary = {
            "run": out.name,
            "output": str(out),
            "model": str(model.directory),
            "checkpoint": model.checkpoint.name,
            "data": str(data.path),
            "dataset": data.dataset,
            "domain": data.domain,
            "cases": len(ids),
            "case_ids": ids,
            "seconds": round(time.perf_counter() - started, 2),
            "seconds_per_case": seconds,
            "device": device,
            "batch_size": config.batch_size,
            **values.record(),
            "skipped": False,
        }
        return artifacts.publish(
            tmp, out, stage=STAGE, config=stage_config, inputs=inputs, summary=summary
        )


def _write_tables(folder: Path, written: dict[str, Any], title: str) -> None:
    """The label description files of a run's recorded values (:meth:`LabelValues.record`)."""
    classes = [c for c in written["label_table"] if c != BACKGROUND]
    values = from_record(written, classes, title)
    assert values is not None  # a record made by LabelValues.record
    write_label_tables(folder, values, title)


def merge_shards(
    work: Path,
    name: str,
    config: dict[str, Any],
    inputs: dict[str, dict],
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> artifacts.Manifest:
    """Copy the case files of the n finished shards ``<name>__shard-i-of-n`` into ``<name>/``,
    with the label description files of their values.

    ``config`` and ``inputs`` are those of the equivalent unsharded run, recorded in the merged
    manifest; the shards must hold exactly its cases, written as its label values.

    Raises:
        UdasegError: no shards, missing shards, stale shards (unless ``force``), a case in two,
            shards made for other cases than ``config["cases"]`` or written as other values.
    """
    progress = progress or NullProgress()
    parent = layout.stage_dir(work, layout.PREDICT)
    prefix = f"{name}__shard-"
    found = [
        p for p in parent.glob(prefix + "*-of-*") if not p.name.endswith(layout.PARTIAL_SUFFIX)
    ]
    if not found:
        raise UdasegError(
            f"no shards {prefix}*-of-* under {parent}",
            hint="run `udaseg predict ... --shard i/n` for every i first",
        )
    count = int(found[0].name.rsplit("-of-", 1)[1])
    expected = [f"{prefix}{i}-of-{count}" for i in range(count)]
    missing = [e for e in expected if not (parent / e).is_dir()]
    if missing:
        raise UdasegError(
            f"cannot merge {name}: shards missing: {', '.join(missing)}",
            hint="rerun those shards, then merge again",
        )
    shards = [parent / e for e in expected]
    manifests = [
        artifacts.require_input(
            s, stage=STAGE, rerun=f"udaseg predict ... --shard i/{count}", force=force
        )
        for s in shards
    ]
    ids = [c for m in manifests for c in m.config["cases"]]
    if len(set(ids)) != len(ids):
        raise UdasegError(f"cannot merge {name}: a case appears in two shards")
    if set(ids) != set(config["cases"]):
        raise UdasegError(
            f"cannot merge {name}: the shards hold {len(ids)} cases, this command selects "
            f"{len(config['cases'])}",
            hint="merge with the same --data, --cases/--split and model as the shards",
        )
    written = [m.config.get("written") for m in manifests]
    if any(w != config["written"] for w in written):
        raise UdasegError(
            f"cannot merge {name}: the shards hold other label values than this command writes "
            f"({config['written']['label_values']}: {config['written']['label_table']})",
            hint="merge with the same --label-values as the shards (or rerun them)",
        )
    out = output_dir(work, name)
    done = artifacts.reuse_if_current(out, config, inputs, progress.log, force=force)
    if done:
        return done
    with artifacts.building(out) as tmp:
        seconds: dict[str, float] = {}
        for shard, manifest in zip(shards, manifests, strict=True):
            for case_id in manifest.config["cases"]:
                shutil.copy2(shard / f"{case_id}{SUFFIX}", tmp / f"{case_id}{SUFFIX}")
            seconds.update(manifest.summary.get("seconds_per_case", {}))
        _write_tables(tmp, config["written"], f"udaseg predict {name} ({count} shards merged)")
        summary = {
            **{
                k: manifests[0].summary.get(k)
                for k in ("model", "checkpoint", "data", "dataset", "domain", "device")
            },
            **config["written"],
            "run": name,
            "output": str(out),
            "cases": len(ids),
            "case_ids": config["cases"],
            "merged_shards": count,
            "seconds": round(sum(m.summary.get("seconds", 0) for m in manifests), 2),
            "seconds_per_case": seconds,
            "skipped": False,
        }
        progress.log(f"merged {count} shards into {out}")
        return artifacts.publish(
            tmp, out, stage=STAGE, config=config, inputs=inputs, summary=summary
        )
