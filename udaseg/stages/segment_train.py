"""``udaseg segment-train``: train a registered segmenter on source, target, translated or
pseudo-labelled target data.

Trains on the ``train`` split of one or more stores (preprocessed, translated: every style copy
of a translated store is a case, or pseudo-labelled by ``udaseg pseudo-label``, whose unlabelled
voxels take no part in the loss), validates on the ``val`` split of the first store (or of
``--val``) with Dice per class, and writes a model directory ``W/segment/<run>/``:
``checkpoint_{latest,best,final}.pt``, ``model.json``, ``metrics.jsonl``, ``manifest.json``.

Validation never uses target labels unless you train on the target (the supervised bound):
``checkpoint_best.pt`` is chosen on the training domain's own validation cases. ``--monitor``
adds Dice on another store's cases to the log for information only; it never selects a model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udaseg import artifacts, layout
from udaseg.config import result_config, values
from udaseg.config.segment_train import HPARAM_KEYS, STAGE, TRAIN_ON, SegmentTrainConfig
from udaseg.data.sampling import (
    BalancedSampler,
    PatchSampler,
    SliceSampler,
    Source,
    VolumeBank,
    split_cases,
    store_path,
)
from udaseg.data.store import Store
from udaseg.device import apply_threads, precision_record, resolve_device
from udaseg.errors import UdasegError, look_up_option
from udaseg.inference.preprocessing import record_preprocessing
from udaseg.progress import NullProgress, Progress
from udaseg.training import loop
from udaseg.training.checkpoint import model_info, write_model_json
from udaseg.training.validation import dice_on

STORE_STAGES = layout.STORE_STAGES


def resolved_hparams(config: SegmentTrainConfig) -> dict[str, Any]:
    """The model's hparams with the run's overrides applied (constructor arguments left out)."""
    return split_overrides(config)[0]


def split_overrides(config: SegmentTrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hparams, model_kwargs)``: the model's hparams with the run's ``--set`` overrides, and
    the overrides that are constructor arguments of the model; any other key is refused."""
    from udaseg.models.registry import model_keywords, model_spec

    return values.split_overrides(
        config.hparams,
        model_spec(config.model).hparams,
        keys=HPARAM_KEYS,
        accepted=model_keywords(config.model),
    )


def show_defaults(config: SegmentTrainConfig) -> dict[str, Any]:
    """What ``--show-defaults`` prints: the resolved hparams and the constructor arguments."""
    hparams, kwargs = split_overrides(config)
    return {"model": config.model, "hparams": hparams, "model_kwargs": kwargs}


def run_name(config: SegmentTrainConfig, store: Store) -> str:
    if config.name:
        return artifacts.check_run_name(config.name)
    return layout.joined(config.model, config.train_on, store.dataset, store.domain)


def run(
    config: SegmentTrainConfig, work: Path, *, force: bool = False, progress: Progress | None = None
) -> artifacts.Manifest:
    """Train and publish the model directory; skip when it is complete and current."""
    progress = progress or NullProgress()
    look_up_option(config.train_on, TRAIN_ON, what="--train-on")
    if not config.train:
        raise UdasegError(
            f"--train-on {config.train_on} needs --{config.train_on}",
            hint=f"pass the {config.train_on} store artifact",
            exit_code=2,
        )
    apply_threads(config.threads)
    inputs, stores = _inputs(config, force)
    hparams, model_kwargs = split_overrides(config)
    _check(config, hparams, stores)  # usage errors before any folder is made
    out = layout.run_dir(work, layout.SEGMENT, run_name(config, stores[0]))
    stage_config = result_config(
        config,
        hparams=hparams,
        model_kwargs=model_kwargs,
        **precision_record(resolve_device(config.device), config.amp),
        **loop.batch_record(hparams["batch_size"]),
    )
    done = artifacts.reuse_if_current(
        out, stage_config, inputs, progress.log, force=force, redo="use --force to retrain"
    )
    if done:
        return done
    runtime = loop.setup_runtime(config.device, config.amp, config.channels_last, config.compile)
    key = loop.resume_key(artifacts.run_hash(stage_config, out), inputs)
    with loop.building(out, runtime) as tmp:
        loop.prepare_resume(tmp, key, config.resume, progress, runtime)
        summary = _train(config, hparams, model_kwargs, stores, tmp, runtime, progress, key)
        if not runtime.is_main:
            return artifacts.Manifest(stage=STAGE, config={}, config_hash="")
        summary["output"] = str(out)
        return artifacts.publish(
            tmp, out, stage=STAGE, config=stage_config, inputs=inputs, summary=summary
        )


def _inputs(config: SegmentTrainConfig, force: bool) -> tuple[dict, list[Store]]:
    """Check the store artifacts are current; return their manifest records and the stores."""
    inputs, stores = {}, []
    given = [("--source", config.source), ("--target", config.target), ("--pseudo", config.pseudo)]
    given += [("--val", config.val), *(("--translated", p) for p in config.translated)]
    for option, path in [*given, *(("--monitor", p) for p in config.monitor)]:
        if path is not None:
            artifacts.check_finished(Path(path), option)
    paths = [*config.train, *([config.val] if config.val else [])]
    for i, path in enumerate(paths):
        path = Path(path)
        if path.is_dir():
            stage = artifacts.load_manifest(path).stage
            if stage not in STORE_STAGES:
                raise UdasegError(
                    f"{path} was made by '{stage}', not a stage that writes stores",
                    hint="pass a preprocessed or translated store",
                    path=path,
                    exit_code=2,
                )
            manifest = artifacts.require_input(
                path, stage=stage, force=force, rerun=f"udaseg {STORE_STAGES[stage]}"
            )
            inputs[f"store{i}"] = artifacts.input_record(path, manifest)
        stores.append(Store(store_path(path)))
    return inputs, stores


def _check(config: SegmentTrainConfig, hparams: dict[str, Any], stores: list[Store]) -> None:
    """Refuse stores that do not go together and a batch the model or the stores cannot take.

    Raises:
        UdasegError (exit code 2): naming the store or the option.
    """
    from udaseg.models.registry import model_spec

    first = stores[0]
    for store in stores[1:]:
        if store.classes != first.classes or store.view != first.view:
            raise UdasegError(
                f"store {store.path} has classes {store.classes} ({store.view}), "
                f"but {first.path} has {first.classes} ({first.view})",
                hint="train on stores preprocessed with the same dataset manifest",
                exit_code=2,
            )
    dims = model_spec(config.model).dims
    if len(hparams["patch_size"]) != dims:
        raise UdasegError(
            f"patch size {list(hparams['patch_size'])} does not fit a {dims}D model",
            hint=f"give {dims} numbers: --set patch_size=" + ",".join(["128"] * dims),
            exit_code=2,
        )
    batch, stores_trained = int(hparams["batch_size"]), len(config.train)
    if config.balance_stores and stores_trained > 1 and batch < stores_trained:
        raise UdasegError(
            f"--balance-stores: a batch of {batch} cannot take a share from each of "
            f"{stores_trained} training stores",
            hint=f"use --set batch_size={stores_trained} or more",
            exit_code=2,
        )


def _train(
    config, hparams, model_kwargs, stores, tmp, runtime, progress, config_hash
) -> dict[str, Any]:
    from udaseg.losses import create_loss
    from udaseg.models.registry import create_model, model_spec

    spec = model_spec(config.model)
    classes = stores[0].classes
    loop.seed_everything(config.seed, runtime.rank)
    kwargs = {"in_channels": 1, "num_classes": len(classes) + 1, **model_kwargs}
    model = loop.prepare_model(create_model(config.model, **kwargs), runtime, spec.dims)
    state = _state(config, hparams, model, kwargs, runtime)
    state.extra["config_hash"] = config_hash
    if loop.resume_from(state, tmp):
        progress.log(f"resumed from step {state.step}")
    sampler = _sampler(config, hparams, spec.dims, stores, state.numpy_rng)
    criterion = create_loss(
        hparams["loss"], len(classes) + 1, aux_weight=float(hparams.get("aux_weight", 0.0))
    )
    step_fn = _step_fn(sampler, criterion, config, spec.dims, runtime)
    validate = _validator(config, hparams, spec.dims, stores, model, runtime)
    # every store trained or validated on, for predict to preprocess raw scans the same way
    trained_on = {f"train{i}": path for i, path in enumerate(config.train)}
    trained_on.update({"val": config.val} if config.val else {})
    info = model_info(
        config.model,
        kwargs,
        spec.dims,
        hparams,
        stores[0],
        config.train_on,
        preprocessing=record_preprocessing(trained_on),
    )
    if runtime.is_main:
        write_model_json(tmp, info)
    schedule = loop.LoopSchedule(
        int(hparams["steps"]), config.checkpoint_every, config.val_every, config.log_every
    )
    last = loop.run_loop(
        state,
        tmp,
        schedule,
        step_fn,
        validate_fn=validate,
        runtime=runtime,
        progress=progress,
        description=f"segment-train {config.model}",
    )
    return {
        "steps": state.step,
        "best": state.best,
        "last_validation": last,
        "model": config.model,
        "train_on": config.train_on,
        "skipped": False,
    }


def _state(config, hparams, model, kwargs, runtime) -> loop.TrainState:
    from udaseg.training.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(model.parameters(), hparams)
    scheduler = build_scheduler(optimizer, hparams, int(hparams["steps"]))
    generator = torch.Generator().manual_seed(config.seed + 1)
    numpy_rng = np.random.default_rng([config.seed, runtime.rank])
    return loop.TrainState(
        {"model": model},
        {"model": optimizer},
        {"model": scheduler},
        numpy_rng,
        generator,
        {"name": config.model, "kwargs": kwargs},
    )


def _sources(paths: list[Path], stores: list[Store], split: str) -> list[Source]:
    return [
        Source(store, tuple(split_cases(path, split, store)))
        for path, store in zip(paths, stores, strict=True)
    ]


def _sampler(config, hparams, dims, stores, rng):
    sources = _sources(config.train, stores[: len(config.train)], config.train_split)
    patch = tuple(int(s) for s in hparams["patch_size"])
    cls = SliceSampler if dims == 2 else PatchSampler
    batch = int(hparams["batch_size"])
    if not config.balance_stores or len(sources) == 1:
        bank = VolumeBank(sources, need_labels=True)
        return cls(bank, patch, batch, rng, config.foreground_fraction)
    shares = [batch // len(sources) + (i < batch % len(sources)) for i in range(len(sources))]
    return BalancedSampler(
        [
            cls(VolumeBank([source], need_labels=True), patch, n, rng, config.foreground_fraction)
            for source, n in zip(sources, shares, strict=True)
        ]
    )


def _step_fn(sampler, criterion, config, dims, runtime):
    from udaseg.data.augment import AugmentConfig, augment, rerender

    # elastic deformation for volumes, as DAR-UNet trains its 3D network; 2D keeps the affine set
    augment_config = None
    if config.augment:
        augment_config = AugmentConfig(
            elastic_alpha=2.0 if dims == 3 else 0.0, intensity_net=config.intensity_net
        )
    fmt = loop.memory_format(runtime, dims)

    def step(state: loop.TrainState) -> dict[str, float]:
        images, labels = sampler()
        images, labels = torch.from_numpy(images), torch.from_numpy(labels)
        if augment_config is not None:
            images, labels = augment(images, labels, augment_config, state.torch_gen)
        elif config.intensity_net > 0:  # --no-augment keeps the re-rendering alone
            images = rerender(images, config.intensity_net, state.torch_gen)
        images = images.to(runtime.device, memory_format=fmt, non_blocking=True)
        labels = labels.to(runtime.device, non_blocking=True)
        model, optimizer = state.modules["model"], state.optimizers["model"]
        model.train()
        with loop.autocast(runtime):
            outputs = model(images)
        total, parts = criterion(outputs, labels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return parts

    return step


def _validator(config, hparams, dims, stores, model, runtime):
    val_path = config.val or config.train[0]
    val_store = stores[-1] if config.val else stores[0]
    cases = split_cases(val_path, config.val_split, val_store)
    if not cases:
        warnings.warn(
            f"no '{config.val_split}' cases in {val_path}: no validation, "
            "checkpoint_best.pt is not written",
            stacklevel=2,
        )
        return None
    monitors = [(Path(p), Store(store_path(p))) for p in config.monitor]

    def validate() -> dict[str, Any]:
        result = dice_on(model, val_store, cases, dims, hparams, runtime)
        for path, store in monitors:
            chosen = split_cases(path, config.monitor_split, store)
            result[f"monitor:{store.dataset}/{store.domain}"] = dice_on(
                model, store, chosen, dims, hparams, runtime
            )
        return result

    return validate
