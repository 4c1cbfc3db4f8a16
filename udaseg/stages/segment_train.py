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

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udaseg import artifacts, layout
from udaseg.config import result_config, values
from udaseg.config.segment_train import HPARAM_KEYS, STAGE, TRAIN_ON, SegmentTrainConfig
from udaseg.data.augment import check_ipa
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
    if not config.augment and (config.flip or config.location_scale > 0):
        raise UdasegError(
            "--flip and --location-scale are part of the augmentation, which --no-augment "
            "turns off",
            hint="drop --no-augment, or the --flip / --location-scale options",
            exit_code=2,
        )
    check_ipa(config.ipa, config.intensity_net)
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
    if config.context_slices and dims != 2:
        raise UdasegError(
            f"--context-slices {config.context_slices}: {config.model} is a {dims}D model, which "
            "sees the neighbouring slices already (2.5D input is for 2D models)",
            hint="leave --context-slices at 0 for 3D models, or train a 2D model",
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
    # 2.5D: the slice and its context_slices neighbours on each side are the input channels
    in_channels = 2 * config.context_slices + 1
    kwargs = {"in_channels": in_channels, "num_classes": len(classes) + 1, **model_kwargs}
    model = loop.prepare_model(create_model(config.model, **kwargs), runtime, spec.dims)
    state = _state(config, hparams, model, kwargs, runtime)
    if config.ema > 0:
        # the average is what validation picks and predict loads, under the usual name
        average = copy.deepcopy(loop.unwrap(model)).requires_grad_(False)
        state.modules = {"model": average, ONLINE: model}
        model = average
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
        context_slices=config.context_slices,
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
    batch = int(hparams["batch_size"])

    def sampler(bank: VolumeBank, n: int) -> SliceSampler | PatchSampler:
        if dims == 3:
            return PatchSampler(bank, patch, n, rng, config.foreground_fraction)
        return SliceSampler(
            bank, patch, n, rng, config.foreground_fraction, context_slices=config.context_slices
        )

    if not config.balance_stores or len(sources) == 1:
        return sampler(VolumeBank(sources, need_labels=True), batch)
    shares = [batch // len(sources) + (i < batch % len(sources)) for i in range(len(sources))]
    return BalancedSampler(
        [
            sampler(VolumeBank([source], need_labels=True), n)
            for source, n in zip(sources, shares, strict=True)
        ]
    )


def _step_fn(sampler, criterion, config, dims, runtime):
    from udaseg.data.augment import AugmentConfig, augment, rerender

    augment_config = None
    if config.augment:
        augment_config = AugmentConfig(
            # elastic deformation for volumes, as DAR-UNet trains its 3D network
            elastic_alpha=2.0 if dims == 3 else 0.0,
            flip_axes=(-2, -1) if config.flip else (),
            intensity_net=config.intensity_net,
            ipa=config.ipa,
            location_scale=config.location_scale,
        )
    fmt = loop.memory_format(runtime, dims)
    trained = ONLINE if config.ema > 0 else "model"

    def step(state: loop.TrainState) -> dict[str, float]:
        images, labels = sampler()
        images, labels = torch.from_numpy(images), torch.from_numpy(labels)
        # 2.5D stacks (B, 2K+1, H, W) go through as volumes (B, 1, 2K+1, H, W): every slice of a
        # stack then gets one spatial transform, one tone mapping and one rendering, as the
        # slices of one scan would, and the label (the centre slice's) follows them
        stacked = dims == 2 and images.shape[1] > 1
        if stacked:
            depth = images.shape[1]
            images, labels = images.unsqueeze(1), labels.unsqueeze(1).expand(-1, depth, -1, -1)
        if augment_config is not None:
            images, labels = augment(images, labels, augment_config, state.torch_gen)
        elif config.intensity_net > 0:  # --no-augment keeps the re-rendering alone
            images = rerender(images, config.intensity_net, state.torch_gen, ipa=config.ipa)
        if stacked:
            images, labels = images.squeeze(1), labels[:, depth // 2]
        images = images.to(runtime.device, memory_format=fmt, non_blocking=True)
        labels = labels.to(runtime.device, non_blocking=True)
        model, optimizer = state.modules[trained], state.optimizers["model"]
        model.train()
        with loop.autocast(runtime):
            outputs = model(images)
        total, parts = criterion(outputs, labels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if config.ema > 0:
            update_ema(state.modules["model"], loop.unwrap(model), config.ema, state.step)
        return parts

    return step


# with --ema the network the optimiser trains; "model" (validated, checkpointed, published) is
# then its running average
ONLINE = "online"


@torch.no_grad()
def update_ema(average: torch.nn.Module, online: torch.nn.Module, decay: float, step: int) -> None:
    """``average = d * average + (1 - d) * online`` over the parameters, buffers (norms'
    running statistics) copied; ``d`` ramps up to ``decay`` as ``(1 + step) / (10 + step)``
    over the first steps, so the average is not dominated by the random initial weights."""
    d = min(decay, (1 + step) / (10 + step))
    for mine, theirs in zip(average.parameters(), online.parameters(), strict=True):
        mine.lerp_(theirs.detach(), 1 - d)
    for mine, theirs in zip(average.buffers(), online.buffers(), strict=True):
        mine.copy_(theirs)


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
        k = config.context_slices
        result = dice_on(model, val_store, cases, dims, hparams, runtime, k)
        for path, store in monitors:
            chosen = split_cases(path, config.monitor_split, store)
            result[f"monitor:{store.dataset}/{store.domain}"] = dice_on(
                model, store, chosen, dims, hparams, runtime, k
            )
        return result

    return validate
