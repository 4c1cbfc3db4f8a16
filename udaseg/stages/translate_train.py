"""``udaseg translate train``: train a registered image-to-image translator, source <-> target.

Every step draws an unpaired batch: random 2D slices of the source store's ``source_split`` cases
and, independently, of the target store's ``target_split`` cases (cropped or padded to the hparams'
``patch_size``; no labels are read), and calls the method's ``train_step`` (see
:mod:`udaseg.translation.registry`). The shared loop (:mod:`udaseg.training.loop`) does the rest:
``metrics.jsonl`` (every loss the method reports), ``checkpoint_latest.pt`` every
``checkpoint_every`` steps, ``checkpoint_final.pt``, and exact resume (step count, optimiser and
scheduler states, random generators).

Output ``W/translate/<run>/`` (``<run>`` defaults to
``<method>__<source dataset>_<source domain>__to__<target domain>``)::

    checkpoint_latest.pt checkpoint_final.pt   the translator in state "model"; its kwargs include
                                               the hparams' loss weights the constructor takes
    model.json           name, kwargs, has_style_codes, patch_size, hparams, and the identity of
                         both stores (dataset, domain, modality, classes, view)
    metrics.jsonl        {"step", "lr", <each loss>, "total", "seconds"} per log_every steps
    samples/step_<N>.png every sample_every steps (N zero-padded to 6 digits): the same seeded
                         sample slices each time; rows source, translated, reconstructed, target,
                         any other panel the method shows, and for methods with style codes one
                         row per style encoded from a few (seeded) random target slices
    manifest.json        stage "translate-train"; inputs: the source and target stores (and
                         the semantic segmenter's run when there is one)

``semantic_segmenter`` (opt-in, CycleGAN-family methods; see :mod:`udaseg.translation.cyclegan`):
a segment-train run on the source labels, frozen, whose reading of the translated slices keeps the
anatomy (CyCADA's semantic consistency). The source slices are then drawn with their labels; the
target's labels are still never read, and a segmenter trained on the target's own labels is
refused (that would no longer be unsupervised adaptation).

There is no validation (no labels), so no ``checkpoint_best.pt``: later stages use the final one.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udaseg import artifacts, layout
from udaseg.config import result_config, values
from udaseg.config.translate_train import HPARAM_KEYS, STAGE, TranslateTrainConfig
from udaseg.data.sampling import (
    SliceSampler,
    Source,
    VolumeBank,
    fit,
    middle_slices,
    split_cases,
    store_path,
)
from udaseg.data.store import Store
from udaseg.device import apply_threads, precision_record, resolve_device
from udaseg.errors import UdasegError
from udaseg.inference.models import context_slices
from udaseg.progress import NullProgress, Progress
from udaseg.registry import accepted_kwargs
from udaseg.training import loop
from udaseg.training.checkpoint import write_model_json
from udaseg.translation.registry import constructor_kwargs, recorded_value

PANELS = ("source", "translated", "reconstructed", "target")
# seeds the fixed sample slices and the random sample styles apart from the training draws
SAMPLE_SEED = 7919
# CyCADA's weight of the semantic-consistency term, used when --semantic-segmenter is given alone
SEMANTIC_WEIGHT = 1.0


def split_overrides(config: TranslateTrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hparams, constructor overrides)`` from the run's ``--set`` keys: a key of the method's
    hparams (or a shared one, :data:`HPARAM_KEYS`) overrides the hparams (None values ignored);
    else a keyword the translator's constructor takes becomes a constructor argument; any other
    key is refused with a "did you mean". ``patch_size`` comes out as a list of ints."""
    from udaseg.translation.registry import translator_spec

    spec = translator_spec(config.method)
    return values.split_overrides(
        config.hparams,
        spec.hparams,
        keys={*HPARAM_KEYS, *spec.hparams},
        accepted=accepted_kwargs(spec.builder),
    )


def resolved_hparams(config: TranslateTrainConfig) -> dict[str, Any]:
    """The method's hparams with the run's overrides (constructor-only arguments left out)."""
    return split_overrides(config)[0]


def resolve(config: TranslateTrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hparams, kwargs)``: the resolved hparams, and the translator's constructor arguments
    (the hparams keys it takes, e.g. the loss weights, then the constructor-only ``--set`` keys,
    with the semantic-consistency weight settled by :func:`semantic_overrides`)."""
    hparams, overrides = split_overrides(config)
    kwargs = constructor_kwargs(config.method, hparams, semantic_overrides(config, overrides))
    return hparams, kwargs


def show_defaults(config: TranslateTrainConfig) -> dict[str, Any]:
    """What ``--show-defaults`` prints: the resolved hparams and the constructor arguments."""
    hparams, kwargs = resolve(config)
    return {"hparams": hparams, "kwargs": kwargs}


def semantic_overrides(
    config: TranslateTrainConfig, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The constructor overrides (``--set`` keys that are constructor arguments only; by default
    those of ``config``) with the semantic-consistency weight settled: 1 (CyCADA's) when a
    segmenter is given without a weight; refused where the method has no such term, or where a
    positive weight comes without a segmenter."""
    from udaseg.translation.registry import list_translators, translator_spec

    def has_term(name: str) -> bool:
        return "lambda_semantic" in accepted_kwargs(translator_spec(name).builder)

    overrides = dict(split_overrides(config)[1] if overrides is None else overrides)
    weight = float(overrides.get("lambda_semantic", 0.0))
    if config.semantic_segmenter is None:
        if weight > 0:
            raise UdasegError(
                f"--set lambda_semantic={weight:g} needs a frozen segmenter",
                hint="pass --semantic-segmenter W/segment/<run> (trained on the source labels)",
                exit_code=2,
            )
        return overrides
    if not has_term(config.method):
        with_term = [name for name in list_translators() if has_term(name)]
        raise UdasegError(
            f"{config.method} has no semantic-consistency term, so --semantic-segmenter does "
            "not apply",
            hint=f"use one of {', '.join(with_term)}, or drop --semantic-segmenter",
            exit_code=2,
        )
    if weight <= 0:
        if "lambda_semantic" in overrides:
            raise UdasegError(
                f"--semantic-segmenter is given but --set lambda_semantic={weight:g}",
                hint="give the term a positive weight, or drop --semantic-segmenter",
                exit_code=2,
            )
        overrides["lambda_semantic"] = SEMANTIC_WEIGHT
    return overrides


def run_name(config: TranslateTrainConfig, source: Store, target: Store) -> str:
    if config.name:
        return artifacts.check_run_name(config.name)
    return f"{config.method}__{source.dataset}_{source.domain}__to__{target.domain}"


def store_identity(store: Store) -> dict[str, Any]:
    """What model.json records of a store, so later stages can check what they are given."""
    return {
        "dataset": store.dataset,
        "domain": store.domain,
        "modality": store.modality,
        "classes": list(store.classes),
        "view": store.view,
        "labelled": store.labelled,
    }


def run(
    config: TranslateTrainConfig,
    work: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> artifacts.Manifest:
    """Train the translator and publish ``W/translate/<run>/``; returns its manifest.

    A run that is complete and was built from the same options and stores is skipped (summary
    ``skipped: true``) unless ``force``. An interrupted run leaves ``<run>.partial/``;
    rerunning continues it from its last checkpoint when it was started with the same options
    and inputs (else it starts over); ``resume=True`` insists on continuing.

    Raises:
        UdasegError: unknown method or hparams option, stale or unsuitable stores, torchrun with
            more than one process, resuming a run started with other options.
    """
    progress = progress or NullProgress()
    apply_threads(config.threads)
    inputs, source, target = _inputs(config, force)
    hparams, kwargs = resolve(config)
    _patch_size(hparams)  # refuse a bad size before any folder is made
    out = layout.run_dir(work, layout.TRANSLATE, run_name(config, source, target))
    precision = precision_record(resolve_device(config.device), config.amp)
    stage_config = result_config(config, hparams=hparams, kwargs=kwargs, **precision)
    done = artifacts.reuse_if_current(
        out, stage_config, inputs, progress.log, force=force, redo="use --force to retrain"
    )
    if done:
        return done
    runtime = _runtime(config)
    key = loop.resume_key(artifacts.run_hash(stage_config, out), inputs)
    with loop.building(out, runtime) as tmp:
        loop.prepare_resume(tmp, key, config.resume, progress, runtime)
        started = time.perf_counter()
        summary = _train(config, hparams, kwargs, (source, target), tmp, runtime, progress, key)
        summary.update(output=str(out), seconds=round(time.perf_counter() - started, 2))
        return artifacts.publish(
            tmp, out, stage=STAGE, config=stage_config, inputs=inputs, summary=summary
        )


def _runtime(config: TranslateTrainConfig) -> loop.Runtime:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a translator's train_step updates several networks in its own order, which
        # DistributedDataParallel (gradient sync inside forward) does not fit
        raise UdasegError(
            "translate train runs in one process (one GPU); it was started by torchrun with "
            f"{os.environ['WORLD_SIZE']} processes",
            hint="run plain `udaseg translate train` (2D translators train fast on one GPU)",
            exit_code=2,
        )
    return loop.setup_runtime(config.device, config.amp, config.channels_last, compile=False)


def _inputs(config: TranslateTrainConfig, force: bool) -> tuple[dict, Store, Store]:
    """Check both store artifacts are current preprocess outputs; open them."""
    inputs, stores = {}, []
    for role, path in (("source", config.source), ("target", config.target)):
        path = artifacts.check_finished(Path(path), f"--{role}")
        if not path.is_dir():
            raise UdasegError(
                f"--{role} {path} is not a store artifact folder",
                hint="pass a `udaseg preprocess` output folder, e.g. W/preprocessed/mmwhs__mr",
                path=path,
                exit_code=2,
            )
        manifest = artifacts.require_input(
            path, stage="preprocess", force=force, rerun="udaseg preprocess"
        )
        inputs[role] = artifacts.input_record(path, manifest)
        stores.append(Store(store_path(path)))
    source, target = stores
    if source.view != target.view:
        raise UdasegError(
            f"the source store slices {source.view} but the target store {target.view}",
            hint="preprocess both domains with the same view (the manifests' view key)",
            exit_code=2,
        )
    if config.semantic_segmenter is not None:
        inputs["semantic_segmenter"] = _segmenter_input(
            artifacts.check_finished(Path(config.semantic_segmenter), "--semantic-segmenter"),
            source,
            target,
            force,
        )
    return inputs, source, target


def _segmenter_input(path: Path, source: Store, target: Store, force: bool) -> dict:
    """Check --semantic-segmenter: a current 2D model directory over the source's classes that
    was not trained on the target's own labels; its input record for the manifest."""
    from udaseg.training.checkpoint import MODEL_STAGES, read_model_json

    manifest = artifacts.require_input_from(
        path,
        {stage: f"udaseg {stage}" for stage in MODEL_STAGES},
        option="--semantic-segmenter",
        what="a model directory",
        hint="pass a run of `udaseg segment-train` on the source store, ideally trained "
        "with --intensity-net so it also reads the target modality",
        force=force,
    )
    info = read_model_json(path)
    problem = None
    if int(info.get("dims", 2)) != 2:
        problem = f"it is a {info['dims']}D model; translators work on 2D slices"
    elif context_slices(info):
        problem = (
            f"it was trained with --context-slices {context_slices(info)} (2.5D input), but the "
            "semantic loss feeds it single translated slices"
        )
    elif list(info.get("classes", [])) != list(source.classes):
        problem = f"its classes {info.get('classes')} are not the source's {list(source.classes)}"
    elif (info.get("dataset"), info.get("domain")) == (target.dataset, target.domain):
        problem = (
            f"it was trained on {target.dataset} {target.domain}, the target's own labels, "
            "which unsupervised adaptation never reads"
        )
    if problem:
        raise UdasegError(
            f"--semantic-segmenter {path}: {problem}",
            hint="train one with `udaseg segment-train` on the source store",
            path=path,
            exit_code=2,
        )
    return artifacts.input_record(path, manifest)


# --- training ------------------------------------------------------------------------------------


def _train(config, hparams, kwargs, stores, tmp, runtime, progress, key) -> dict:
    from udaseg.translation.registry import create_translator, translator_spec

    spec = translator_spec(config.method)
    loop.seed_everything(config.seed, runtime.rank)
    fmt = loop.memory_format(runtime, 2, instance_norm=True)
    translator = create_translator(config.method, **kwargs).to(runtime.device, memory_format=fmt)
    if config.semantic_segmenter is not None:
        from udaseg.training.checkpoint import load_model

        # not part of the state: a resumed run attaches the same frozen weights again
        segmenter, _ = load_model(Path(config.semantic_segmenter), "final", runtime.device)
        translator.use_semantic_model(segmenter.to(memory_format=loop.memory_format(runtime, 2)))
    labelled = bool(getattr(translator, "needs_source_labels", False))
    state = _state(config, hparams, translator, kwargs, runtime)
    state.extra["config_hash"] = key
    if loop.resume_from(state, tmp):
        progress.log(f"resumed from step {state.step}")
    patch = _patch_size(hparams)
    samplers = [
        _sampler(path, split, store, patch, int(hparams["batch_size"]), state.numpy_rng, labels)
        for path, split, store, labels in zip(
            (config.source, config.target),
            (config.source_split, config.target_split),
            stores,
            (labelled, False),  # the target's labels are never read
            strict=True,
        )
    ]
    write = _sample_writer(config, spec.has_style_codes, samplers, tmp / layout.SAMPLES, runtime)
    step_fn = _with_samples(
        _step_fn(samplers, runtime, labelled), write, config.sample_every, int(hparams["steps"])
    )
    write_model_json(tmp, _model_info(config, hparams, kwargs, spec, stores))
    schedule = loop.LoopSchedule(
        int(hparams["steps"]), config.checkpoint_every, val_every=0, log_every=config.log_every
    )
    loop.run_loop(
        state,
        tmp,
        schedule,
        step_fn,
        runtime=runtime,
        progress=progress,
        description=f"translate train {config.method}",
    )
    return {
        "method": config.method,
        "steps": state.step,
        "has_style_codes": spec.has_style_codes,
        "last_losses": _last_losses(tmp / layout.METRICS),
        "samples": len(list((tmp / layout.SAMPLES).glob("*.png"))),
        "skipped": False,
    }


def _state(config, hparams, translator, kwargs, runtime) -> loop.TrainState:
    from udaseg.training.optim import build_scheduler

    optimizers = translator.optimizers(hparams)
    steps = int(hparams["steps"])
    schedulers = {name: build_scheduler(o, hparams, steps) for name, o in optimizers.items()}
    return loop.TrainState(
        {"model": translator},
        optimizers,
        schedulers,
        np.random.default_rng([config.seed, runtime.rank]),
        torch.Generator().manual_seed(config.seed + 1),
        {"name": config.method, "kwargs": kwargs},
    )


def _patch_size(hparams: dict[str, Any]) -> tuple[int, int]:
    patch = tuple(int(s) for s in hparams["patch_size"])
    if len(patch) != 2:
        raise UdasegError(
            f"patch size {list(patch)}: translators work on 2D slices",
            hint="give two numbers, e.g. --set patch_size=256,256",
            exit_code=2,
        )
    return patch


def _sampler(path, split, store, patch, batch_size, rng, labels=False) -> SliceSampler:
    """Random (B, 1, H, W) slices of the split's cases, no foreground preference; with their
    (B, H, W) labels only when ``labels`` (the semantic-consistency term's source batch)."""
    cases = tuple(split_cases(path, split, store))
    bank = VolumeBank([Source(store, cases)], need_labels=labels)
    # empty (constant) slices would send instance-norm gradients to inf (see sampling)
    return SliceSampler(bank, patch, batch_size, rng, foreground_fraction=0.0, skip_empty=True)


def _step_fn(samplers: list[SliceSampler], runtime: loop.Runtime, labelled: bool = False):
    fmt = loop.memory_format(runtime, 2, instance_norm=True)
    # the translator contract: a zero-argument callable giving a fresh context per update
    autocast = functools.partial(loop.autocast, runtime)

    def batch(sampler: SliceSampler) -> tuple[torch.Tensor, torch.Tensor | None]:
        images, labels = sampler()
        device = runtime.device
        images = torch.from_numpy(images).to(device, memory_format=fmt, non_blocking=True)
        labels = None if labels is None else torch.from_numpy(labels).to(device)
        return images, labels

    def step(state: loop.TrainState) -> dict[str, float]:
        (source, source_labels), (target, _) = batch(samplers[0]), batch(samplers[1])
        translator = state.modules["model"]
        translator.train()
        extra = {"source_labels": source_labels} if labelled else {}
        parts = translator.train_step(source, target, state.optimizers, autocast, **extra)
        # methods may report tensors; detach so float() does not warn about gradients
        parts = {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in parts.items()}
        if not all(np.isfinite(v) for v in parts.values()):
            raise UdasegError(
                f"translator losses became non-finite at step {state.step + 1}: {parts}",
                hint="lower the learning rates (--set lr_g=... --set lr_d=...) or resume from "
                "an earlier checkpoint; the run so far is kept in the .partial folder",
            )
        return parts

    return step


# --- sample grids --------------------------------------------------------------------------------


def _with_samples(step_fn, write, every: int, total: int):
    """``step_fn`` that also writes a sample grid after every ``every``-th step and the last."""

    def step(state: loop.TrainState) -> dict[str, float]:
        parts = step_fn(state)
        done = state.step + 1  # the loop counts the step after step_fn returns
        if (every and done % every == 0) or done == total:
            write(state.modules["model"], done)
        return parts

    return step


def fixed_slices(bank: VolumeBank, patch: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """``count`` slices (count, 1, H, W) drawn once with a seeded generator from the middle two
    thirds of the bank's volumes, centre-cropped/padded to ``patch``: the same every time, so
    sample grids compare over training."""
    rng = np.random.default_rng(seed)
    pool = [(i, k) for i, fg in enumerate(bank.foreground) for k in middle_slices(len(fg))]
    picks = rng.choice(len(pool), size=count, replace=len(pool) < count)
    out = []
    for j in sorted(picks.tolist()):
        i, k = pool[j]
        image, _ = bank.slices(i, k, k + 1)
        start = tuple(
            (e - s) // 2 if e > s else -((s - e) // 2)
            for e, s in zip(image.shape[1:], patch, strict=True)
        )
        out.append(fit(image, patch, start, float(image.min())))
    return np.stack(out).astype(np.float32)


def _sample_writer(config, has_style_codes, samplers, folder: Path, runtime: loop.Runtime):
    from udaseg.translation.io import display_window, save_grid

    folder.mkdir(exist_ok=True)
    patch, seed = samplers[0].patch_size, SAMPLE_SEED + config.seed
    source = fixed_slices(samplers[0].bank, patch, config.sample_count, seed)
    target = fixed_slices(samplers[1].bank, patch, config.sample_count, seed + 1)
    n_styles = config.sample_styles if has_style_codes else 0
    styles = fixed_slices(samplers[1].bank, patch, n_styles, seed + 2) if n_styles else None
    window = display_window([source, target])  # fixed over training: grids compare
    devices = [torch.device(runtime.device)] if runtime.cuda else []

    def tensor(images: np.ndarray | None) -> torch.Tensor | None:
        return None if images is None else torch.from_numpy(images).to(runtime.device)

    def write(translator, step: int) -> None:
        translator.eval()
        # a forked, fixed-seed RNG: anything random in samples() is the same in every grid, and
        # drawing it leaves the training draws (and so resume) untouched
        with torch.no_grad(), torch.random.fork_rng(devices=devices), loop.autocast(runtime):
            torch.manual_seed(seed)
            rows = _sample_rows(translator, tensor(source), tensor(target), tensor(styles))
        translator.train()
        save_grid(
            folder / f"step_{step:06d}.png",
            rows,
            title=f"{config.method} step {step}",
            window=window,
        )

    return write


def _sample_rows(translator, source, target, style_slices) -> list[tuple[str, np.ndarray]]:
    """Rows of a grid: the method's panels (source, translated, reconstructed, target first),
    then the source in the style encoded from each of ``style_slices`` (target slices; styles are
    encoded rather than drawn from N(0, I) because only encoded codes are target styles for
    every method, e.g. DAR-UNet's shared decoder)."""
    panels = translator.samples(source, target)
    missing = [p for p in PANELS if p not in panels]
    if missing:
        raise UdasegError(f"the translator's samples() lacks panels {missing} (a method bug)")
    names = [*PANELS, *(p for p in panels if p not in PANELS)]
    rows = [(name, _numpy(panels[name])) for name in names]
    if style_slices is not None:
        codes = translator.encode_style(style_slices)
        for j in range(len(codes)):
            style = codes[j].expand(len(source), -1)
            rows.append((f"target style {j}", _numpy(translator.translate(source, style))))
    return rows


def _numpy(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) tensor -> (N, H, W) float32 array."""
    return images.detach().float().cpu().numpy()[:, 0]


def _model_info(config, hparams, kwargs, spec, stores) -> dict[str, Any]:
    source, target = stores
    return {
        "name": config.method,
        "kwargs": kwargs,
        "has_style_codes": spec.has_style_codes,
        "patch_size": list(hparams["patch_size"]),
        "hparams": {k: recorded_value(v) for k, v in hparams.items()},
        "source": store_identity(source),
        "target": store_identity(target),
    }


def _last_losses(path: Path) -> dict[str, float]:
    import json

    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if not lines:
        return {}
    row = json.loads(lines[-1])
    return {k: v for k, v in row.items() if k not in ("step", "lr", "seconds")}
