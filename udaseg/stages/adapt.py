"""``udaseg adapt``: train a segmenter with a registered adaptation method.

Inputs are store artifacts: a labelled ``source`` (a preprocessed store, or a translated one from
``translate apply`` when the method trains on translated images, as AttENT and GLUA do) and the
unlabelled ``target`` (its ``train`` split; labels in it are never read for training). Methods
that translate online (BiGL) also take a translate-train run (``--translator``). ``--init`` warm
starts the segmenter from a model directory (usually the source-only ``segment-train`` run), the
way the papers start from a source-trained network.

The output ``W/adapt/<run>/`` is a model directory like segment-train's (``model.json``,
``checkpoint_{latest,final}.pt``, ``metrics.jsonl``, ``manifest.json``) that ``udaseg predict``
loads unchanged, plus what the method writes for inspection (``extras/``).

Target labels: when the target store has a ``val`` split with labels, Dice on those cases is
logged every ``val_every`` steps for information only. No checkpoint is chosen with it (there is
no ``checkpoint_best.pt``): picking a model on target labels is exactly what an unsupervised
method cannot do, so the final weights are the result.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udaseg import artifacts, layout
from udaseg.config import result_config, values
from udaseg.config.adapt import STAGE, AdaptConfig
from udaseg.data.augment import check_ipa
from udaseg.data.sampling import SliceSampler, Source, VolumeBank, split_cases, store_path
from udaseg.data.store import Store
from udaseg.device import apply_threads, precision_record, resolve_device
from udaseg.errors import UdasegError
from udaseg.inference.models import context_slices
from udaseg.inference.preprocessing import record_preprocessing
from udaseg.progress import NullProgress, Progress
from udaseg.training import loop
from udaseg.training.checkpoint import MODEL_STAGES, model_info
from udaseg.training.validation import dice_on

# a labelled source may come from these stages (translated stores carry the source labels)
SOURCE_STAGES = {"preprocess": "preprocess", "translate-apply": "translate apply"}


def split_overrides(config: AdaptConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hparams, rest)``: the method's hparams (over the shared defaults) with the run's
    ``--set`` overrides, and the overrides that are not hparams keys (constructor arguments of
    the segmenter, checked once the segmenter is known)."""
    from udaseg.adaptation.registry import COMMON_DEFAULTS, method_spec

    hparams = {**COMMON_DEFAULTS, **method_spec(config.method).hparams}
    return values.split_overrides(config.hparams, hparams, keys=hparams)


def resolved_hparams(config: AdaptConfig) -> dict[str, Any]:
    """The method's hparams with the run's overrides (constructor arguments left out)."""
    return split_overrides(config)[0]


def show_defaults(config: AdaptConfig) -> dict[str, Any]:
    """What ``--show-defaults`` prints: the method's resolved hparams and, for the segmenter it
    would train (``--model``, else the ``--init`` model's, else the method's), its constructor
    arguments from ``--set``."""
    from udaseg.training.checkpoint import read_model_json

    hparams, rest = split_overrides(config)
    init_name = read_model_json(config.init)["name"] if config.init else None
    model = config.model or init_name or hparams["model"]
    return {
        "method": config.method,
        "hparams": hparams,
        "model": model,
        "model_kwargs": _model_overrides(model, hparams, rest),
    }


def _model_overrides(model: str, hparams: dict, rest: dict[str, Any]) -> dict[str, Any]:
    """``rest`` checked against the segmenter's constructor: an unknown key is refused with the
    keys that exist (hparams and constructor arguments)."""
    from udaseg.models.registry import model_keywords

    return values.split_overrides(rest, hparams, keys=hparams, accepted=model_keywords(model))[1]


def run(
    config: AdaptConfig, work: Path, *, force: bool = False, progress: Progress | None = None
) -> artifacts.Manifest:
    """Adapt and publish the model directory; skip when it is complete and current."""
    from udaseg.adaptation.registry import method_spec

    progress = progress or NullProgress()
    if config.source is None or config.target is None:
        raise UdasegError(
            "adapt needs --source and --target",
            hint="pass the labelled source store and the target store",
            exit_code=2,
        )
    spec = method_spec(config.method)
    apply_threads(config.threads)
    inputs, source, target, translator_direction = _inputs(config, spec, force)
    init = _init_model(config) if config.init else None
    hparams, rest = split_overrides(config)
    model, model_kwargs = _segmenter(config, spec, hparams, rest, init, source)
    if len(hparams["patch_size"]) != 2:  # refused before any folder is made
        raise UdasegError(
            f"patch size {list(hparams['patch_size'])}: adaptation trains on 2D slices",
            hint="give 2 numbers, e.g. --set patch_size=256,256",
            exit_code=2,
        )
    out = layout.run_dir(work, layout.ADAPT, _run_name(config, source, target))
    stage_config = result_config(
        config,
        hparams=hparams,
        model=model,
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
    job = _Job(
        config,
        spec,
        hparams,
        model,
        model_kwargs,
        source,
        target,
        init,
        runtime,
        translator_direction,
    )
    digest = loop.resume_key(artifacts.run_hash(stage_config, out), inputs)
    with loop.building(out, runtime) as tmp:
        loop.prepare_resume(tmp, digest, config.resume, progress, runtime)
        summary = _train(job, tmp, digest, progress)
        if not runtime.is_main:
            return artifacts.Manifest(stage=STAGE, config={}, config_hash="")
        summary["output"] = str(out)
        return artifacts.publish(
            tmp, out, stage=STAGE, config=stage_config, inputs=inputs, summary=summary
        )


@dataclass
class _Job:
    config: AdaptConfig
    spec: Any
    hparams: dict[str, Any]
    model: str
    model_kwargs: dict[str, Any]
    source: Store
    target: Store
    init: tuple[dict, dict] | None
    runtime: loop.Runtime
    # how the --translator run maps source -> target (udaseg.translation.io.orientation): a
    # run trained target -> source is used reversed
    translator_direction: str | None


def _run_name(config: AdaptConfig, source: Store, target: Store) -> str:
    if config.name:
        return artifacts.check_run_name(config.name)
    return layout.joined(config.method, source.dataset, f"{source.domain}-to-{target.domain}")


def _inputs(config: AdaptConfig, spec, force: bool) -> tuple[dict, Store, Store, str | None]:
    """Check every input artifact is complete and current; return their records, the stores
    and how the --translator run maps source -> target (None without one)."""
    inputs: dict[str, Any] = {}
    source_dir = artifacts.check_finished(Path(config.source), "--source")
    target_dir = artifacts.check_finished(Path(config.target), "--target")
    manifest = artifacts.require_input_from(
        source_dir,
        {stage: f"udaseg {command}" for stage, command in SOURCE_STAGES.items()},
        option="--source",
        what="a store artifact",
        hint="pass a preprocessed store or a translated store from `udaseg translate apply`",
        force=force,
    )
    inputs["source"] = artifacts.input_record(source_dir, manifest)
    _check_translation(spec, manifest.stage, manifest, source_dir)
    target_manifest = artifacts.require_input(
        target_dir, stage="preprocess", force=force, rerun="udaseg preprocess"
    )
    inputs["target"] = artifacts.input_record(target_dir, target_manifest)
    source, target = Store(store_path(source_dir)), Store(store_path(target_dir))
    if source.classes != target.classes or source.view != target.view:
        raise UdasegError(
            f"source {source_dir} has classes {list(source.classes)} ({source.view}) but target "
            f"{target_dir} has {list(target.classes)} ({target.view})",
            hint="preprocess both domains with the same dataset manifest",
            exit_code=2,
        )
    remaps = {"--intensity-net": config.intensity_net, "--location-scale": config.location_scale}
    given = [option for option, value in remaps.items() if value > 0]
    if given and not spec.rerenders_source:
        raise UdasegError(
            f"{spec.name} does not take {' or '.join(given)}: its own generator translates the "
            "source images, and re-mapped ones would teach it random contrasts",
            hint=f"leave {' and '.join(given)} at 0 for this method",
            exit_code=2,
        )
    check_ipa(config.ipa, config.intensity_net)
    if spec.needs_translator and config.translator is None:
        raise UdasegError(
            f"{spec.name} translates online and needs --translator",
            hint="pass a run of `udaseg translate train` trained on these two domains",
            exit_code=2,
        )
    direction = None
    if config.translator is not None:
        from udaseg.translation.io import open_run, orientation

        translator = open_run(
            artifacts.check_finished(Path(config.translator), "--translator"), force=force
        )
        inputs["translator"] = translator.record()
        direction = orientation(translator.info, source, target)
    if config.init is not None:
        init_dir = artifacts.check_finished(Path(config.init), "--init")
        manifest = artifacts.require_input_from(
            init_dir,
            {stage: f"udaseg {stage}" for stage in MODEL_STAGES},
            option="--init",
            what="a model directory",
            hint="pass a run of `udaseg segment-train` (or `udaseg adapt`)",
            force=force,
        )
        inputs["init"] = artifacts.input_record(init_dir, manifest)
    return inputs, source, target, direction


def _check_translation(spec, stage: str, manifest: artifacts.Manifest, path: Path) -> None:
    """Warn when a method's paper trains on another translator's images than the source's."""
    if spec.source_translator is None:
        return
    made_with = manifest.summary.get("method") if stage == "translate-apply" else None
    if made_with != spec.source_translator:
        warnings.warn(
            f"{spec.name} trains on source slices translated by {spec.source_translator}, but "
            f"--source {path} is "
            + (f"translated by {made_with}" if made_with else "untranslated")
            + "; the run is not the paper's method",
            stacklevel=3,
        )


def _init_model(config: AdaptConfig) -> tuple[dict, dict]:
    """(model.json, checkpoint) of the ``--init`` model directory (its final weights).

    Raises:
        UdasegError (exit code 2): a 2.5D model (``segment-train --context-slices`` K > 0):
            adaptation methods feed, translate and discriminate single slices.
    """
    from udaseg.training.checkpoint import find_checkpoint, load_checkpoint, read_model_json

    info = read_model_json(config.init)
    k = context_slices(info)
    if k:
        raise UdasegError(
            f"--init {config.init}: the model was trained with --context-slices {k} (2.5D "
            f"input of {2 * k + 1} slices), but adaptation methods train on single 2D slices",
            hint="warm-start from a model trained with `udaseg segment-train --context-slices 0` "
            "(the default), or adapt without --init",
            path=config.init,
            exit_code=2,
        )
    checkpoint = load_checkpoint(find_checkpoint(config.init, "final", ("latest",)))
    return info, checkpoint


def _segmenter(config, spec, hparams, rest, init, source: Store) -> tuple[str, dict[str, Any]]:
    """The segmenter's registered name and constructor kwargs.

    Order of precedence: --model, else the init model's, else the method's hparams; kwargs from
    --set over the init model's (when the same model) over the defaults."""
    from udaseg.models.registry import model_spec

    init_spec = init[1]["model"] if init else None
    name = config.model or (init_spec["name"] if init_spec else None) or hparams["model"]
    if spec.models is not None and name not in spec.models:
        raise UdasegError(
            f"{spec.name} trains {', '.join(spec.models)}, not {name}",
            hint=f"pass --model {spec.models[0]} (and an --init model of that kind)",
            exit_code=2,
        )
    if model_spec(name).dims != 2:
        raise UdasegError(
            f"adaptation methods train 2D slice segmenters; {name} is 3D",
            hint="adapt a 2D model, or train the 3D model on translated stores with "
            "`udaseg segment-train --train-on translated` (DAR-UNet's pipeline)",
            exit_code=2,
        )
    kwargs = {"in_channels": 1, "num_classes": len(source.classes) + 1}
    # a method's architecture choices per segmenter (GLUA: DeepLab with a ResNet-50)
    kwargs.update(hparams.get("model_kwargs", {}).get(name, {}))
    if init_spec:
        kwargs.update({k: v for k, v in init_spec["kwargs"].items() if k not in kwargs})
    kwargs.update(_model_overrides(name, hparams, rest))
    if kwargs["num_classes"] != len(source.classes) + 1:
        raise UdasegError(
            f"the --init model has {kwargs['num_classes'] - 1} classes, the stores "
            f"{len(source.classes)}",
            exit_code=2,
        )
    return name, kwargs


def _train(job: _Job, tmp: Path, digest: str, progress: Progress) -> dict[str, Any]:
    from udaseg.adaptation.base import AdaptContext
    from udaseg.training.checkpoint import write_model_json

    config, hparams, runtime = job.config, job.hparams, job.runtime
    loop.seed_everything(config.seed, runtime.rank)
    generator = torch.Generator().manual_seed(config.seed + 1)
    translator = None
    if config.translator is not None:
        from udaseg.translation.io import load_translator

        reverse = job.translator_direction == "reversed"
        translator, _ = load_translator(config.translator, "final", runtime.device, reverse=reverse)
        translator.requires_grad_(False)
    ctx = AdaptContext(
        job.model, job.model_kwargs, job.model_kwargs["num_classes"], hparams, runtime, generator
    )
    ctx.translator = translator
    method = job.spec.builder(ctx)
    if job.init is not None:
        _load_init(loop.unwrap(method.modules["model"]), job, progress)
    state = loop.TrainState(
        method.modules,
        method.optimizers,
        method.schedulers,
        np.random.default_rng([config.seed, runtime.rank]),
        generator,
        {"name": job.model, "kwargs": job.model_kwargs},
    )
    state.extra["config_hash"] = digest
    if loop.resume_from(state, tmp):
        progress.log(f"resumed from step {state.step}")
    banks = _banks(job)
    samplers = _samplers(job, banks, state.numpy_rng)
    step_fn = _step_fn(samplers, method, job)
    validate = _validator(job, method.modules["model"])
    if runtime.is_main:
        write_model_json(tmp, _model_info(job))
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
        description=f"adapt {config.method}",
        select_best=False,
    )
    if method.extras is not None:
        _write_extras(method, job, banks, tmp / layout.EXTRAS)
    return {
        "method": config.method,
        "model": job.model,
        "steps": state.step,
        "last_validation": last,
        "init": str(config.init) if config.init else None,
        "translator_direction": job.translator_direction,
        "skipped": False,
    }


def _write_extras(method, job: _Job, banks, directory: Path) -> None:
    """The method's pictures of one fixed batch (its own generator, so the training draws do not
    shift). Every rank runs it with the same batch because wrapped (DDP) networks may talk to the
    other ranks in their forward; only rank 0 keeps the files."""
    import tempfile

    batch = _batch(_samplers(job, banks, np.random.default_rng(job.config.seed + 7)), job, None)
    with contextlib.ExitStack() as stack:
        if not job.runtime.is_main:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        directory.mkdir(exist_ok=True)
        with torch.no_grad():
            method.extras(directory, batch)


def _load_init(model: torch.nn.Module, job: _Job, progress) -> None:
    """Warm start: load the init model's weights; a model that only adds modules to the init
    one's (dual-attention-unet.v1 over unet2d.v1) keeps its new modules as initialised."""
    path, checkpoint = job.config.init, job.init[1]
    same = checkpoint["model"]["name"] == job.model
    try:
        missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UdasegError(
            f"--init {path}: its weights do not fit this segmenter ({exc})",
            hint="use an init model of the same architecture and width (or drop the --set "
            "constructor arguments)",
            path=path,
            exit_code=2,
        ) from exc
    if unexpected or (same and missing):
        raise UdasegError(
            f"--init {path} does not match the segmenter: "
            f"{len(unexpected)} unexpected and {len(missing)} missing weights "
            f"(e.g. {(unexpected or missing)[0]})",
            hint="use an init model of the same architecture",
            path=path,
            exit_code=2,
        )
    if missing:
        progress.log(f"--init {path}: {len(missing)} new weights start from scratch")


def _banks(job: _Job) -> tuple[VolumeBank, VolumeBank]:
    """The source (with labels) and target (without) volumes to draw slices from, read once."""
    config = job.config
    source_cases = split_cases(config.source, config.source_split, job.source)
    target_cases = split_cases(config.target, config.target_split, job.target)
    for what, cases, path, split in (
        ("source", source_cases, config.source, config.source_split),
        ("target", target_cases, config.target, config.target_split),
    ):
        if not cases:
            raise UdasegError(
                f"no '{split}' cases in {what} store {path}",
                hint="check the store's splits.json",
                path=path,
            )
    source_bank = VolumeBank([Source(job.source, tuple(source_cases))], need_labels=True)
    # the target is read without labels: adaptation never sees target annotations
    target_bank = VolumeBank([Source(job.target, tuple(target_cases))], need_labels=False)
    return source_bank, target_bank


def _samplers(
    job: _Job, banks: tuple[VolumeBank, VolumeBank], rng: np.random.Generator
) -> tuple[SliceSampler, SliceSampler]:
    patch = tuple(int(s) for s in job.hparams["patch_size"])
    batch_size = int(job.hparams["batch_size"])
    source_bank, target_bank = banks
    return (
        SliceSampler(source_bank, patch, batch_size, rng, job.config.foreground_fraction),
        SliceSampler(target_bank, patch, batch_size, rng, foreground_fraction=0.0, skip_empty=True),
    )


def _batch(samplers, job: _Job, generator: torch.Generator | None):
    from udaseg.adaptation.base import AdaptBatch
    from udaseg.data.augment import AugmentConfig, augment, rerender

    runtime = job.runtime
    fmt = loop.memory_format(runtime, 2)
    source, labels = (torch.from_numpy(a) for a in samplers[0]())
    target = torch.from_numpy(samplers[1]()[0])
    if generator is not None and job.config.augment:
        source, labels = augment(source, labels, AugmentConfig(), generator)
        target, _ = augment(target, None, AugmentConfig(), generator)
    original = None
    cfg = job.config
    if generator is not None and (cfg.intensity_net > 0 or cfg.location_scale > 0):
        original = source.to(runtime.device, memory_format=fmt)
        source = rerender(
            source,
            cfg.intensity_net,
            generator,
            ipa=cfg.ipa,
            location_scale=cfg.location_scale,
            labels=labels,
        )
    return AdaptBatch(
        source.to(runtime.device, memory_format=fmt),
        labels.to(runtime.device).long(),
        target.to(runtime.device, memory_format=fmt),
        original,
    )


def _step_fn(samplers, method, job: _Job):
    from udaseg.adaptation.base import check_finite

    def step(state: loop.TrainState) -> dict[str, float]:
        losses = method.train_step(_batch(samplers, job, state.torch_gen))
        check_finite(losses, f"{job.config.method} step {state.step + 1}")
        return losses

    return step


def _validator(job: _Job, model: torch.nn.Module):
    """Dice on the target's labelled val cases, logged for information (never selects)."""
    config = job.config
    try:
        cases = split_cases(config.target, config.val_split, job.target)
    except UdasegError:
        cases = []
    cases = [c for c in cases if job.target.label(c) is not None]
    if not cases:
        return None

    def validate() -> dict[str, Any]:
        return dice_on(model, job.target, cases, 2, job.hparams, job.runtime)

    return validate


def _model_info(job: _Job) -> dict[str, Any]:
    """model.json; its preprocessing record walks every input (the target store, the source or
    translated store, the translator's stores, the --init model's record)."""
    config = job.config
    given = {"source": config.source, "target": config.target}
    given.update({"translator": config.translator, "init": config.init})
    trained_on = {name: Path(path) for name, path in given.items() if path is not None}
    info = model_info(
        job.model,
        job.model_kwargs,
        2,
        job.hparams,
        job.target,
        "adapt",
        preprocessing=record_preprocessing(trained_on),
    )
    info["method"] = job.config.method
    info["source_domain"] = job.source.domain
    if job.translator_direction is not None:
        info["translator_direction"] = job.translator_direction
    return info
