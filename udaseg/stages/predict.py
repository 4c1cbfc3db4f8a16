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
     ``udaseg preprocess`` would (:func:`~udaseg.data.pipeline.preprocess_case`, labels not read).

The model's classes and view must be the data's (store attributes, or the manifest's).

Output: ``W/predict/<run>/`` with ``<case_id>.nii.gz`` for every case: uint8 class ids 0..C (ids in
the order of the model's ``classes``) on the ORIGINAL image's grid (its size, spacing, origin and
direction, so it overlays the source file voxel by voxel; voxels preprocessing cropped away are
background), and ``manifest.json`` (inputs: the model directory when it is an artifact and the data
when it is one; summary: cases, seconds, seconds per case). ``<run>`` defaults to
``<model folder>__<data name>``, the data name being the store's folder (``<dataset>__<domain>``
for a ``preprocess`` artifact) or ``<dataset>__<domain>`` for raw data. With ``shard=(i, n)`` only
every n-th case from i on is predicted, into ``<run>__shard-i-of-n/``; ``merge_shards`` copies the
n finished shards' files into ``<run>/``. (``udaseg evaluate`` reads any folder of case files, so a
shard can also be evaluated alone with ``--cases``.)

Inference itself (windows, padding, Gaussian weighting, flips) is :mod:`udaseg.inference`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from udaseg import artifacts
from udaseg.errors import UdasegError, look_up_option
from udaseg.progress import NullProgress, Progress

STAGE = "predict"
# bump when the same model, data and options would give different label maps
PREDICT_VERSION = 1
CHECKPOINTS = ("best", "final", "latest")
STORE_NAME = "store.h5"
SUFFIX = ".nii.gz"

Segmenter = Callable[[np.ndarray], np.ndarray]


@dataclass
class PredictConfig:
    """Options of one predict run.

    model_dir: the model directory. data: store artifact / store file / raw dataset folder.
    dataset, domain: the manifest and domain of raw ``data`` (unused for a store).
    name: run name (default ``<model folder>__<data name>``). checkpoint: best, final or latest
    (``load_model`` falls back to final, then latest, when it is absent).
    ensemble: more model directories (same classes, view and layout) whose class probabilities
    are averaged with ``model_dir``'s before the argmax (their ``checkpoint`` too).
    tta: flip test-time augmentation (2D: H and W axes, 4 passes; 3D: all three axes, 8 passes).
    gaussian: Gaussian window weighting (else uniform). stride: None (half the window), a fraction
    of the window, or voxels per window axis. amp: bfloat16 autocast on CUDA.
    largest_component: keep only the largest connected component of each class
    (:func:`udaseg.inference.keep_largest_component`).
    cases: predict only these ids (None = all); split: or only the cases of these splits
    ("val" or "val,test") of a store artifact's splits.json. shard: (i, n) or None;
    merge_shards: join the shards instead. batch_size (windows per forward pass) and device are
    runtime-only.
    """

    model_dir: Path
    data: Path
    ensemble: list[Path] = field(default_factory=list)
    dataset: str | None = None
    domain: str | None = None
    name: str | None = None
    checkpoint: str = "best"
    tta: bool = False
    gaussian: bool = True
    stride: float | tuple[int, ...] | None = None
    amp: bool = False
    largest_component: bool = False
    cases: list[str] | None = None
    split: str | None = None
    shard: tuple[int, int] | None = None
    merge_shards: bool = False
    batch_size: int = 8
    device: str = "auto"


@dataclass
class CaseInput:
    """One case to segment: ``image`` (S, H, W) float32 on the processed grid, and its store meta
    record (``original``, ``processed`` geometry and ``assumed_direction``)."""

    case_id: str
    image: np.ndarray
    meta: dict[str, Any]


@dataclass
class ModelSource:
    """A model directory: its model.json, the checkpoint file ``load_model`` will read, and
    whether the directory is an artifact (has a manifest)."""

    directory: Path
    info: dict[str, Any]
    checkpoint: Path
    artifact: bool

    def record(self) -> dict[str, Any]:
        files = None if self.artifact else [self.directory / "model.json", self.checkpoint]
        return {
            "path": str(self.directory.resolve()),
            "name": self.info.get("name"),
            "checkpoint": self.checkpoint.name,
            "fingerprint": _fingerprint(files) if files else None,
        }


@dataclass
class DataSource:
    """What ``data`` is: a store (``path`` = the .h5 file) or raw folder (``files`` per case)."""

    kind: str  # "store" or "raw"
    path: Path
    artifact: Path | None  # the preprocess artifact folder, when it is one
    name: str
    dataset: str
    domain: str
    classes: list[str]
    view: str
    case_ids: list[str]
    manifest: Any = None  # DatasetManifest of raw data
    domain_spec: Any = None  # its Domain, with labels switched off
    files: dict[str, Any] = field(default_factory=dict)  # raw: case id -> CaseFiles

    def record(self, ids: list[str]) -> dict[str, Any]:
        """What identifies the data in the run's config (artifacts are tracked by their manifest
        hash in ``inputs`` instead of a file fingerprint)."""
        record: dict[str, Any] = {
            "kind": self.kind,
            "path": str(self.path.resolve()),
            "dataset": self.dataset,
            "domain": self.domain,
        }
        if self.kind == "raw":
            from udaseg.data.pipeline import source_fingerprint
            from udaseg.stages.preprocess import PIPELINE_VERSION

            rows = source_fingerprint([self.files[i] for i in ids])
            record.update(
                manifest=self.manifest.raw,
                pipeline_version=PIPELINE_VERSION,
                fingerprint=artifacts.config_hash({"files": rows}),
            )
        elif self.artifact is None:
            record["fingerprint"] = _fingerprint([self.path])
        return record

    def cases(self, ids: list[str]) -> Iterator[CaseInput]:
        if self.kind == "store":
            return store_cases(self.path, ids)
        return raw_cases(self.manifest, self.domain_spec, [self.files[i] for i in ids])


# --- reading cases -------------------------------------------------------------------------------


def store_cases(path: Path, ids: Iterable[str]) -> Iterator[CaseInput]:
    """The cases ``ids`` of the store at ``path``, read one at a time."""
    from udaseg.data.store import Store

    store = Store(path)
    try:
        for case_id in ids:
            yield CaseInput(case_id, store.image(case_id), store.meta(case_id))
    finally:
        store.close()


def raw_cases(manifest, domain, files: Iterable) -> Iterator[CaseInput]:
    """Raw images preprocessed in memory exactly as ``udaseg preprocess`` does (labels unread)."""
    from udaseg.data.pipeline import preprocess_case
    from udaseg.data.readers import CaseFiles

    for case in files:
        processed = preprocess_case(manifest, domain, CaseFiles(case.case_id, case.image, None))
        yield CaseInput(case.case_id, processed.image, processed.meta)


# --- writing results -----------------------------------------------------------------------------


def write_label(path: Path, label: np.ndarray, meta: dict[str, Any]) -> None:
    """Write an (S, H, W) label map on the processed grid as NIfTI on the original image's grid."""
    import SimpleITK as sitk

    from udaseg.data.geometry import restore_label

    image = restore_label(label, meta["processed"], meta["original"], meta.get("assumed_direction"))
    sitk.WriteImage(image, str(path), useCompression=True)


def predict_cases(
    cases: Iterable[CaseInput],
    segment: Segmenter,
    folder: Path,
    progress: Progress | None = None,
    total: int | None = None,
) -> dict[str, float]:
    """Segment each case with ``segment`` ((S, H, W) float32 -> (S, H, W) class ids) and write
    ``folder/<case_id>.nii.gz`` on its original grid; returns the seconds per case (reading or
    preprocessing, inference and writing).

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
        write_label(Path(folder) / f"{case.case_id}{SUFFIX}", label, case.meta)
        now = time.perf_counter()
        seconds[case.case_id] = round(now - started, 3)
        started = now
        progress.advance(task, case=case.case_id)
    return seconds


def inference_options(
    info: dict[str, Any],
    device: str,
    *,
    batch_size: int,
    amp: bool,
    stride: float | tuple[int, ...] | None = None,
    gaussian: bool = True,
    tta: bool = False,
) -> dict:
    """Keyword arguments of :func:`udaseg.inference.predict_volume` / ``segment_volume`` for a
    model of layout ``info`` (model.json): its dimensions, window and input channels, with the
    run's options (``tta``: the flips of :func:`tta_axes`)."""
    dims = model_dims(info)
    return dict(
        dims=dims,
        patch_size=info.get("patch_size"),
        batch_size=batch_size,
        stride=stride,
        gaussian=gaussian,
        tta_flips=tta_axes(dims) if tta else (),
        device=device,
        amp=amp,
        in_channels=int(info.get("in_channels", 1)),
    )


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


def tta_axes(dims: int) -> tuple[int, ...]:
    """Volume axes flipped by ``--tta``: in-plane (H, W) for 2D models, all three for 3D."""
    return (1, 2) if dims == 2 else (0, 1, 2)


def model_dims(info: dict[str, Any]) -> int:
    if "dims" in info:
        return int(info["dims"])
    from udaseg.models.registry import model_spec

    return model_spec(info["name"]).dims


# --- resolving the inputs ------------------------------------------------------------------------


def resolve_model(directory: Path, which: str) -> ModelSource:
    """The model directory's model.json and the checkpoint ``load_model(directory, which)`` reads.

    Raises:
        UdasegError: unknown checkpoint name (exit code 2), no model.json, or no checkpoint.
    """
    from udaseg.training.checkpoint import find_checkpoint, read_model_json

    look_up_option(which, CHECKPOINTS, what="checkpoint")
    directory = Path(directory)
    if not directory.is_dir():
        raise UdasegError(
            f"model directory {directory} does not exist",
            hint="pass the output directory of `udaseg segment-train` or `udaseg adapt`",
            path=directory,
        )
    info = read_model_json(directory)
    # the same fallback as load_model: the requested checkpoint, then final, then latest
    path = find_checkpoint(directory, which)
    artifact = (directory / artifacts.MANIFEST_NAME).is_file()
    return ModelSource(directory, info, path, artifact)


def resolve_data(config: PredictConfig, force: bool) -> DataSource:
    """Recognise ``config.data`` as a store (artifact folder or .h5 file) or a raw folder.

    An artifact is checked (complete, unmodified, current) before it is opened.
    """
    data = Path(config.data)
    if data.is_file() or (data / STORE_NAME).is_file():
        return store_source(data, force)
    if not data.is_dir():
        raise UdasegError(
            f"--data {data} does not exist",
            hint="pass a `udaseg preprocess` output folder, its store.h5, or a raw dataset folder",
            path=data,
        )
    return _raw_source(data, config)


def store_source(data: Path, force: bool) -> DataSource:
    from udaseg.data.store import Store

    if data.is_dir():  # an artifact folder: it must be a complete, current preprocess artifact
        path, artifact = data / STORE_NAME, data
    else:
        path = data
        artifact = data.parent if (data.parent / artifacts.MANIFEST_NAME).is_file() else None
    if artifact is not None:
        artifacts.require_input(
            artifact, stage="preprocess", rerun="udaseg preprocess", force=force
        )
    store = Store(path)
    try:
        name = path.parent.name if path.name == STORE_NAME else path.stem
        return DataSource(
            "store",
            path,
            artifact,
            _safe(name),
            store.dataset,
            store.domain,
            list(store.classes),
            store.view,
            list(store.case_ids),
        )
    finally:
        store.close()


def _raw_source(data: Path, config: PredictConfig) -> DataSource:
    from udaseg.data.manifest import load_manifest
    from udaseg.data.readers import find_cases

    if config.dataset is None or config.domain is None:
        raise UdasegError(
            f"--data {data} is not a preprocessed store (no {STORE_NAME}), so it is read as a "
            "raw dataset folder, which needs --dataset and --domain",
            hint="pass e.g. --dataset mmwhs --domain ct, or a `udaseg preprocess` output folder",
            exit_code=2,
        )
    manifest = load_manifest(config.dataset)
    # images only: prediction neither needs nor reads labels, so their absence is no error
    domain = dataclasses.replace(manifest.domain(config.domain), labels=None)
    found = find_cases(domain, data)
    return DataSource(
        "raw",
        data,
        None,
        _safe(f"{manifest.name}__{domain.name}"),
        manifest.name,
        domain.name,
        list(manifest.classes),
        manifest.view,
        [c.case_id for c in found],
        manifest,
        domain,
        {c.case_id: c for c in found},
    )


def check_compatible(model: ModelSource, data: DataSource) -> None:
    """The model must have been trained for the data's classes (same names, same order) and view.

    Raises:
        UdasegError: naming both sides.
    """
    where = f"{data.path} ({data.dataset}/{data.domain})"
    classes = list(model.info.get("classes") or [])
    if classes != data.classes:
        raise UdasegError(
            f"model {model.directory} predicts classes {classes} but data {where} has classes "
            f"{data.classes}",
            hint="use a model trained on this dataset's classes, or preprocess the data with the "
            "manifest the model was trained with",
        )
    view = model.info.get("view")
    if view is not None and view != data.view:
        raise UdasegError(
            f"model {model.directory} was trained on {view} slices but data {where} is stored "
            f"{data.view}",
            hint=f"preprocess the data with view: {view} (the manifest's view key)",
        )


def select_cases(
    available: list[str], wanted: list[str] | None, shard: tuple[int, int] | None
) -> list[str]:
    """The requested case ids (in the data's order), then every n-th from i for ``shard=(i, n)``."""
    ids = list(available)
    if wanted is not None:
        missing = [c for c in wanted if c not in ids]
        if missing:
            raise UdasegError(
                f"--cases: {', '.join(missing)} not in the data",
                hint=f"the data holds {len(ids)} cases: {', '.join(ids[:10])}"
                + (" ..." if len(ids) > 10 else ""),
                exit_code=2,
            )
        ids = [c for c in ids if c in set(wanted)]
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise UdasegError(f"--shard {index}/{count}: need 0 <= i < n", exit_code=2)
        ids = ids[index::count]
    return ids


def run_name(config: PredictConfig, model: ModelSource, data: DataSource) -> str:
    """``config.name``, or ``<model folder>__<data name>``."""
    if config.name is None:
        return _safe(f"{model.directory.resolve().name}__{data.name}")
    return artifacts.check_run_name(config.name)


def output_dir(work: Path, name: str, shard: tuple[int, int] | None = None) -> Path:
    if shard is not None:
        name += f"__shard-{shard[0]}-of-{shard[1]}"
    return Path(work) / STAGE / name


def resolve_device(name: str) -> str:
    """``auto``: ``cuda`` if a GPU is visible, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UdasegError(f'--device "{name}": use cpu, cuda, cuda:N or auto', exit_code=2)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UdasegError(
            f"--device {name}, but torch sees no CUDA GPU",
            hint="use --device cpu, or install the CUDA build of torch on a GPU machine",
            exit_code=2,
        )
    return name


def parse_stride(text: str | None) -> float | tuple[int, ...] | None:
    """``--stride``: a fraction of the window (``0.5``) or voxels per axis (``16,128,128``)."""
    if text is None:
        return None
    try:
        if "," in text:
            return tuple(int(v) for v in text.split(","))
        value = float(text)
    except ValueError as exc:
        raise UdasegError(
            f'--stride "{text}" must be a fraction like 0.5 or voxels like 16,128,128',
            exit_code=2,
        ) from exc
    if not 0 < value <= 1:
        raise UdasegError(
            f"--stride {text}: a single value is a fraction of the window, in (0, 1]",
            hint="give voxels per window axis as a list, e.g. --stride 16,128,128",
            exit_code=2,
        )
    return value


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


def _fingerprint(paths: list[Path]) -> str:
    """Hash of (file, size, mtime) of inputs that are not artifacts."""
    rows = []
    for path in paths:
        stat = Path(path).stat()
        rows.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    return artifacts.config_hash({"files": rows})


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip("._-") or "run"


# --- the stage -----------------------------------------------------------------------------------


def input_records(model: ModelSource, data: DataSource) -> dict[str, dict[str, str]]:
    """Manifest records of the inputs that are artifacts (already checked by the caller)."""
    inputs = {}
    if model.artifact:
        inputs["model"] = artifacts.input_record(
            model.directory, artifacts.load_manifest(model.directory)
        )
    if data.artifact is not None:
        inputs["data"] = artifacts.input_record(
            data.artifact, artifacts.load_manifest(data.artifact)
        )
    return inputs


def require_model(model: ModelSource, force: bool) -> None:
    """Refuse a model directory artifact that changed or whose inputs were rebuilt since."""
    if not model.artifact:
        return
    stage = artifacts.load_manifest(model.directory).stage
    artifacts.require_input(model.directory, stage=stage, rerun=f"udaseg {stage}", force=force)


def _stage_config(
    config: PredictConfig,
    model: ModelSource,
    data: DataSource,
    ids: list[str],
    device: str,
    members: list[ModelSource],
) -> dict[str, Any]:
    stride = list(config.stride) if isinstance(config.stride, tuple | list) else config.stride
    # recorded only when given, so single-model runs keep their config hash
    ensemble = {"ensemble": [m.record() for m in members]} if members else {}
    return {
        "model": model.record(),
        **ensemble,
        "data": data.record(ids),
        "cases": ids,
        "dims": model_dims(model.info),
        "patch_size": model.info.get("patch_size"),
        "in_channels": int(model.info.get("in_channels", 1)),
        "tta": config.tta,
        "gaussian": config.gaussian,
        "largest_component": config.largest_component,
        "stride": stride,
        # bfloat16 changes the numbers, but only where it is used
        "amp": bool(config.amp and device.startswith("cuda")),
        "predict_version": PREDICT_VERSION,
        "device": device,
        "shard": list(config.shard) if config.shard else None,
    }


def run(
    config: PredictConfig,
    work: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> artifacts.Manifest:
    """Predict the data's cases with the model; returns the artifact's manifest.

    The summary holds ``run``, ``output``, ``cases`` (count), ``case_ids``, ``seconds``,
    ``seconds_per_case`` ({case: s}), ``device``, ``checkpoint`` and ``skipped``. An artifact built
    from the same model, data and options is left as it is (``skipped: true``) unless ``force``.

    Raises:
        UdasegError: bad options, unknown checkpoint name, missing model or checkpoint, stale
            input artifacts (unless ``force``), classes or view that differ between model and data,
            unknown case ids, unreadable scans.
    """
    progress = progress or NullProgress()
    model = resolve_model(config.model_dir, config.checkpoint)
    _check_stride(config.stride, model_dims(model.info))
    if config.tta:
        # measured: BiGL + GIN on real abdominal MR fell from 0.73 to 0.05 mean Dice with --tta
        warnings.warn(
            f"--tta averages over flipped copies of each scan; {config.model_dir} was trained "
            "without flips (udaseg never flips: it swaps organs' sides), so a model that has not "
            "seen flipped anatomy usually gets worse, often much worse. Compare with and without "
            "--tta on labelled source cases before relying on it.",
            UserWarning,
            stacklevel=2,
        )
    if config.batch_size < 1:
        raise UdasegError(f"--batch-size {config.batch_size}: need >= 1", exit_code=2)
    require_model(model, force)
    members = _ensemble(config, model, force)
    data = resolve_data(config, force)
    for member in (model, *members):
        check_compatible(member, data)
    name = run_name(config, model, data)
    ids = select_cases(data.case_ids, _wanted(config, data), config.shard)
    device = resolve_device(config.device)
    if config.merge_shards:
        # the merged artifact records what one unsharded run would have, so that run (e.g. a
        # later `udaseg run`) finds it current instead of predicting everything again
        whole = dataclasses.replace(config, shard=None, merge_shards=False)
        merged_config = _stage_config(whole, model, data, ids, device, members)
        merged_inputs = _ensemble_inputs(input_records(model, data), members)
        return merge_shards(
            work, name, merged_config, merged_inputs, force=force, progress=progress
        )
    out = output_dir(work, name, config.shard)
    stage_config = _stage_config(config, model, data, ids, device, members)
    inputs = _ensemble_inputs(input_records(model, data), members)
    done = artifacts.reuse_if_current(out, stage_config, inputs, progress.log, force=force)
    if done:
        return done
    return _predict(config, model, data, ids, device, out, stage_config, inputs, progress)


def _ensemble(config: PredictConfig, model: ModelSource, force: bool) -> list[ModelSource]:
    """The --ensemble model directories, checked: current, and the same layout as the first."""
    members = []
    for directory in config.ensemble:
        member = resolve_model(directory, config.checkpoint)
        require_model(member, force)
        for what, layout in (
            ("classes", lambda info: info.get("classes")),
            ("view", lambda info: info.get("view")),
            ("dimensions", model_dims),
            ("input channels", lambda info: int(info.get("in_channels", 1))),
        ):
            if layout(member.info) != layout(model.info):
                raise UdasegError(
                    f"--ensemble {directory}: its {what} ({layout(member.info)}) differ from "
                    f"--model-dir {config.model_dir}'s ({layout(model.info)})",
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


def _predict(config, model, data, ids, device, out, stage_config, inputs, progress):
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
        seconds = predict_cases(data.cases(ids), segment, tmp, progress, total=len(ids))
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
            "skipped": False,
        }
        return artifacts.publish(
            tmp, out, stage=STAGE, config=stage_config, inputs=inputs, summary=summary
        )


def merge_shards(
    work: Path,
    name: str,
    config: dict[str, Any],
    inputs: dict[str, dict],
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> artifacts.Manifest:
    """Copy the case files of the n finished shards ``<name>__shard-i-of-n`` into ``<name>/``.

    ``config`` and ``inputs`` are those of the equivalent unsharded run, recorded in the merged
    manifest; the shards must hold exactly its cases.

    Raises:
        UdasegError: no shards, missing shards, stale shards (unless ``force``), a case in two,
            or shards made for other cases than ``config["cases"]``.
    """
    progress = progress or NullProgress()
    parent = Path(work) / STAGE
    prefix = f"{name}__shard-"
    found = [p for p in parent.glob(prefix + "*-of-*") if not p.name.endswith(".partial")]
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
        summary = {
            **{
                k: manifests[0].summary.get(k)
                for k in ("model", "checkpoint", "data", "dataset", "domain", "device")
            },
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
