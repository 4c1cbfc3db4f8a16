"""``udaseg pseudo-label``: label the unlabelled target cases with an adapted model (self-training).

An adapted model (any ``segment-train`` or ``adapt`` model directory) segments the target store's
training cases; what it is sure of becomes their label, the rest is left unlabelled, and
``segment-train --train-on pseudo`` then trains a fresh segmenter on those target slices (with
the labelled source slices beside them). This is class-agnostic confidence-thresholded
self-training (Zou et al., ECCV 2018; the refinement step of most CrossMoDA entries), not a method
of the five papers: it distils the adapted model into one trained on the target's own images, and
with ``largest_component`` it also teaches the student that detached islands (organs "seen" in
the thorax or pelvis of a CT whose source MR never showed them) are background.

Per voxel of each case, on the store's processed grid (the model's own sliding-window inference):

1. class probabilities p (C, S, H, W) and their argmax y;
2. with ``largest_component``: each class of y cut to its largest 26-connected body; the voxels
   cut away become background *with* a label (they are what self-training should unlearn);
3. every other voxel whose top probability is below its class's threshold gets ``IGNORE_LABEL``
   (255): no loss is computed there (class borders and doubtful regions). The threshold is
   ``threshold`` for every class, or with ``portion`` (class-balanced self-training, CBST: Zou et
   al., ECCV 2018) one per class: the confidence above which the top ``portion`` of the voxels
   predicted as that class lie, over all cases labelled. One global threshold lets through the
   voxels of an organ that a cross-modality model *confidently* calls background (its
   probabilities rarely pass 0.99, so 0.9 is not strict for the class that covers 90% of a
   volume), and the student learns to under-segment; a per-class rank keeps only the surest half
   of the background, and those organ remnants are left unlabelled instead.

Target labels are never read: the store's label datasets (when present) are not opened, so
running this on a labelled target store keeps the dev cases' labels for evaluation only.

Output ``W/pseudo/<run>/``::

    store.h5       the target's dataset, domain, modality, view and classes; labelled;
                   /cases/<case>/image   the target image, unchanged
                   /cases/<case>/label   (S, H, W) uint8 pseudo-labels, 255 = not labelled
                   meta: the case's meta plus "pseudo_label": {model, checkpoint, threshold,
                   largest_component, kept (fraction of voxels with a label), voxels per class}
    splits.json    every pseudo-labelled case in "train"; "val" and "test" empty (validate on the
                   source, or the target's real dev cases with segment-train --val)
    manifest.json  stage "pseudo-label"; inputs: the model and the target store
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from udaseg import artifacts, layout
from udaseg.config import result_config
from udaseg.config.pseudo_label import STAGE, PseudoLabelConfig
from udaseg.data.sampling import split_cases, store_path
from udaseg.data.store import IGNORE_LABEL, Store, StoreWriter
from udaseg.device import apply_threads, precision_record, resolve_device
from udaseg.errors import UdasegError
from udaseg.inference.models import require_model, resolve_model
from udaseg.inference.options import inference_options
from udaseg.inference.sources import check_compatible, input_records, store_source
from udaseg.progress import NullProgress, Progress

# confidences are binned this finely to find the class-balanced thresholds (one pass, no sort of
# tens of millions of values)
_BINS = 10_000


def pseudo_label(
    probabilities: np.ndarray, threshold: float | np.ndarray, largest_component: bool = True
) -> np.ndarray:
    """(S, H, W) uint8 pseudo-labels from (C, S, H, W) class probabilities (see the module doc).

    ``threshold``: one probability, or one per class (C,). Voxels below their predicted class's
    threshold get ``IGNORE_LABEL``, except those ``largest_component`` turned into background,
    which keep label 0 whatever their probability.
    """
    label, confidence = argmax_and_confidence(probabilities, largest_component)
    return select(label, confidence, threshold)


def argmax_and_confidence(
    probabilities: np.ndarray, largest_component: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The (S, H, W) uint8 argmax of (C, S, H, W) probabilities and its (S, H, W) float32
    confidence (top probability). With ``largest_component`` each class is cut to its largest
    body; the voxels cut away become background with confidence +inf, so any threshold keeps them.
    """
    from udaseg.inference import keep_largest_component

    if probabilities.ndim != 4:
        raise ValueError(f"probabilities must be (C, S, H, W), got {probabilities.shape}")
    label = probabilities.argmax(0).astype(np.uint8)
    confidence = probabilities.max(0).astype(np.float32)
    if largest_component:
        kept = keep_largest_component(label)
        confidence[kept != label] = np.inf
        label = kept
    return label, confidence


def select(label: np.ndarray, confidence: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """``label`` where ``confidence`` reaches the threshold of the voxel's class, else
    ``IGNORE_LABEL``; ``threshold`` is one value or one per class id."""
    per_class = np.asarray(threshold, dtype=np.float32)
    needed = per_class[label] if per_class.ndim else per_class
    return np.where(confidence >= needed, label, np.uint8(IGNORE_LABEL)).astype(np.uint8)


def unlabel_margin(
    selected: np.ndarray,
    label: np.ndarray,
    confidence: np.ndarray,
    spacing_shw: tuple[float, float, float],
    margin_mm: float,
) -> np.ndarray:
    """``selected`` (S, H, W) pseudo-labels with the background voxels within ``margin_mm`` (mm)
    of an organ of ``label`` (the argmax after the largest-component step, same shape) set to
    ``IGNORE_LABEL``; the voxels the largest-component step made background (``confidence``
    +inf) keep their label. ``spacing_shw``: voxel size in mm in array order.
    """
    from scipy import ndimage

    organs = label > 0
    if margin_mm <= 0 or not organs.any():
        return selected
    # the distance transform only needs the organs' bounding box grown by the margin: whole CT
    # volumes would otherwise cost a float64 map and an index map per voxel
    reach = [int(np.ceil(margin_mm / s)) + 1 for s in spacing_shw]
    where = np.nonzero(organs)
    box = tuple(
        slice(max(int(w.min()) - r, 0), min(int(w.max()) + r + 1, n))
        for w, r, n in zip(where, reach, organs.shape, strict=True)
    )
    distance = ndimage.distance_transform_edt(~organs[box], sampling=spacing_shw)
    near = (distance <= margin_mm) & (selected[box] == 0) & np.isfinite(confidence[box])
    out = selected.copy()
    out[box][near] = IGNORE_LABEL
    return out


def confidence_histogram(label: np.ndarray, confidence: np.ndarray, classes: int) -> np.ndarray:
    """(classes, _BINS) counts of the voxels predicted as each class by binned confidence; the
    voxels the largest-component step relabelled (confidence +inf) are left out."""
    finite = np.isfinite(confidence)
    bins = np.minimum((confidence[finite] * _BINS).astype(np.int64), _BINS - 1)
    flat = label[finite].astype(np.int64) * _BINS + bins
    return np.bincount(flat, minlength=classes * _BINS)[: classes * _BINS].reshape(classes, _BINS)


def class_thresholds(histogram: np.ndarray, portion: float) -> np.ndarray:
    """(C,) per-class thresholds from (C, _BINS) confidence counts: the lower edge of the bin in
    which the top ``portion`` of each class's voxels begins (CBST's k_c). A class nobody was
    predicted as gets threshold 1 (nothing to keep)."""
    thresholds = np.ones(histogram.shape[0], dtype=np.float32)
    for cls, counts in enumerate(histogram):
        total = int(counts.sum())
        if total == 0:
            continue
        # counts from the most confident bin down: the first bin that brings the kept share to
        # ``portion`` sets the threshold (ties within a bin are all kept)
        from_top = np.cumsum(counts[::-1])
        first = int(np.searchsorted(from_top, portion * total))
        thresholds[cls] = (len(counts) - 1 - min(first, len(counts) - 1)) / len(counts)
    return thresholds


def run_name(config: PseudoLabelConfig) -> str:
    if config.name:
        return artifacts.check_run_name(config.name)
    return layout.joined(Path(config.model_dir).resolve().name, config.split)


def run(
    config: PseudoLabelConfig, work: Path, *, force: bool = False, progress: Progress | None = None
) -> artifacts.Manifest:
    """Pseudo-label the target cases and publish the store artifact (skipped when current).

    The summary holds ``run``, ``output``, ``cases``, ``kept`` (fraction of voxels with a label),
    ``voxels`` per class name, ``seconds``, ``device`` and ``skipped``.

    Raises:
        UdasegError: threshold outside [0, 1], a split with no cases, a model whose classes or
            view differ from the store's, stale inputs (unless ``force``).
    """
    progress = progress or NullProgress()
    if not 0.0 <= config.threshold <= 1.0:
        raise UdasegError(
            f"--threshold {config.threshold}: need a probability in [0, 1]",
            hint="0.9 keeps the voxels the model is sure of; 0 keeps every voxel",
            exit_code=2,
        )
    if config.portion is not None and not 0.0 < config.portion <= 1.0:
        raise UdasegError(
            f"--portion {config.portion}: need a fraction in (0, 1]",
            hint="0.5 keeps the surer half of each class's voxels (CBST's largest portion)",
            exit_code=2,
        )
    if not 0.0 <= config.margin <= 100.0:
        raise UdasegError(
            f"--margin {config.margin}: need a distance in mm in [0, 100]",
            hint="10 leaves the background within 1 cm of a predicted organ unlabelled; 0 is off",
            exit_code=2,
        )
    if config.batch_size < 1:
        raise UdasegError(f"--batch-size {config.batch_size}: need >= 1", exit_code=2)
    apply_threads(config.threads)
    model = resolve_model(config.model_dir, config.checkpoint)
    require_model(model, force)
    target_dir = artifacts.check_finished(Path(config.target), "--target")
    data = store_source(target_dir, force)  # checks the artifact is complete and current
    if data.artifact is None:
        raise UdasegError(
            f"--target {target_dir} is not a preprocessed store artifact",
            hint="pass the `udaseg preprocess` output folder (its splits.json names the cases)",
            path=target_dir,
            exit_code=2,
        )
    check_compatible(model, data)
    store = Store(store_path(target_dir))
    cases = split_cases(target_dir, config.split, store)
    if not cases:
        raise UdasegError(
            f"split '{config.split}' of {target_dir} holds no cases",
            hint="pseudo-label the target's training cases (--split train); see its splits.json",
            path=target_dir,
            exit_code=2,
        )
    device = resolve_device(config.device)
    inputs = input_records(model, data)
    stage_config = result_config(
        config,
        model=model.record(),
        cases=cases,
        # what --amp resolved to here: on a CPU without native bf16, --amp and --no-amp agree
        **precision_record(device, config.amp),
    )
    out = layout.run_dir(work, layout.PSEUDO, run_name(config))
    done = artifacts.reuse_if_current(out, stage_config, inputs, progress.log, force=force)
    if done:
        return done
    return _label(config, model, store, cases, device, out, stage_config, inputs, progress)


def _label(config, model, store, cases, device, out, stage_config, inputs, progress):
    from udaseg.inference import predict_volume
    from udaseg.training.checkpoint import load_model

    started = time.perf_counter()
    network, info = load_model(model.directory, config.checkpoint, device)
    classes = list(store.classes)
    names = ["background", *classes]
    balanced = config.portion is not None
    histogram = np.zeros((len(names), _BINS), dtype=np.int64)
    counts = np.zeros(len(names), dtype=np.int64)
    total = kept_total = 0
    per_case: dict[str, float] = {}
    task = progress.task(f"pseudo-label {Path(config.model_dir).name}", len(cases))
    # nothing to resume: a failure leaves no half-written artifact behind
    with artifacts.building(out, discard_on_error=True) as tmp:
        scratch = tmp / "scratch"  # class-balanced: the predictions wait here for the thresholds

        options = inference_options(info, device, batch_size=config.batch_size, amp=config.amp)

        def predicted(case):
            probabilities = predict_volume(network, store.image(case), **options)
            return argmax_and_confidence(probabilities, config.largest_component)

        if balanced:
            # first pass: every case's prediction, and the confidences of each predicted class
            scratch.mkdir()
            first = progress.task("predict (class-balanced: thresholds over all cases)", len(cases))
            for case in cases:
                label, confidence = predicted(case)
                histogram += confidence_histogram(label, confidence, len(names))
                np.save(scratch / f"{case}.label.npy", label)
                np.save(scratch / f"{case}.confidence.npy", confidence.astype(np.float16))
                progress.advance(first, case=case)
            thresholds = class_thresholds(histogram, float(config.portion))
        else:
            thresholds = np.full(len(names), config.threshold, dtype=np.float32)
        threshold_record = dict(zip(names, [round(float(t), 4) for t in thresholds], strict=True))
        with StoreWriter(
            tmp / layout.STORE,
            dataset=store.dataset,
            domain=store.domain,
            modality=store.modality,
            view=store.view,
            classes=classes,
            labelled=True,
        ) as writer:
            for case in cases:
                if balanced:
                    label = np.load(scratch / f"{case}.label.npy")
                    confidence = np.load(scratch / f"{case}.confidence.npy").astype(np.float32)
                else:
                    label, confidence = predicted(case)
                selected = select(label, confidence, thresholds)
                if config.margin > 0:
                    spacing = store.meta(case)["processed"]["spacing"]  # (x, y, z) mm
                    selected = unlabel_margin(
                        selected, label, confidence, tuple(spacing[::-1]), config.margin
                    )
                label = selected
                # voxels per class id 0..C (the ignored ones, 255, fall outside and are dropped)
                case_counts = np.bincount(label.ravel(), minlength=256)[: len(names)]
                counts += case_counts
                total += label.size
                kept_total += int(case_counts.sum())
                per_case[case] = round(int(case_counts.sum()) / label.size, 4)
                record = {
                    "model": str(model.directory.resolve()),
                    "checkpoint": model.checkpoint.name,
                    "threshold": float(config.threshold),
                    "portion": config.portion,
                    "thresholds": threshold_record,
                    "margin_mm": float(config.margin),
                    "largest_component": bool(config.largest_component),
                    "kept": per_case[case],
                    "voxels": dict(zip(names, case_counts.tolist(), strict=True)),
                }
                writer.add_case(
                    case, store.image(case), label, {**store.meta(case), "pseudo_label": record}
                )
                progress.advance(task, case=case)
        if balanced:
            shutil.rmtree(scratch)
        splits = {"train": cases, "val": [], "test": [], "source": f"pseudo-label {out.name}"}
        (tmp / layout.SPLITS).write_text(json.dumps(splits, indent=2) + "\n")
        summary = {
            "run": out.name,
            "output": str(out),
            "model": str(model.directory),
            "cases": len(cases),
            "kept": round(kept_total / max(total, 1), 4),
            "kept_per_case": per_case,
            "thresholds": threshold_record,
            "margin_mm": float(config.margin),
            "voxels": dict(zip(names, counts.tolist(), strict=True)),
            "seconds": round(time.perf_counter() - started, 2),
            "device": device,
            "skipped": False,
        }
        return artifacts.publish(
            tmp, out, stage=STAGE, config=stage_config, inputs=inputs, summary=summary
        )
