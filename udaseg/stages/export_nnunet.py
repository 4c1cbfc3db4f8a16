"""``udaseg export nnunet``: hand labelled stores to nnU-Net v2 as a raw dataset.

The CrossMoDA winners trained nnU-Net on translated source images and on pseudo-labelled target
images. This stage writes such data, from udaseg's stores, in the folder layout nnU-Net v2 reads
(its ``documentation/dataset_format.md``), so ``nnUNetv2_plan_and_preprocess -d ID`` can start
from it. nnU-Net is not needed to export; nothing here imports it.

Inputs: one or more ``--train`` stores with labels (``translate apply``, ``pseudo-label`` or
``preprocess`` output; the cases of ``train_split``) and, optionally, a preprocessed ``--target``
store whose images (``target_split``; labels never read) go to ``imagesTs``.

Output ``W/export/nnunet/DatasetXXX_NAME/`` (XXX the three-digit ``dataset_id``)::

    dataset.json           channel_names {"0": normalization}, labels {"background": 0, <the
                           store's classes>: 1..C[, "ignore": C+1]}, numTraining, file_ending
                           ".nii.gz", name, description
    imagesTr/<case>_0000.nii.gz   (S, H, W) float32 image of each training case, as in the store
    labelsTr/<case>.nii.gz        uint8 class ids 0..C (C+1: ignored), same grid
    imagesTs/<case>_0000.nii.gz   the target cases' images (only with --target)
    splits_final.json      5 cross-validation folds (fewer with fewer than 5 patients) that keep
                           every copy of one patient in one fold; nnU-Net reads it from
                           nnUNet_preprocessed/DatasetXXX_NAME/ (copy it there)
    udaseg_cases.json      {"imagesTr": {name: {input, case, patient, ignored_voxels}},
                           "imagesTs": {name: {input, case}}}: the input each file came from
                           (``train0``, ``train1``, ..., ``target``, as in the manifest), its
                           case id there, and its patient (the fold group)
    manifest.json          stage "export-nnunet"; inputs: the stores

Choices, and why:

* **Geometry.** Every file carries its case's processed grid from the store's meta (spacing,
  origin and direction, x-y-z order), so nnU-Net's planner sees the true voxel size (it picks its
  target spacing and patch size from it) and its predictions on ``imagesTs`` overlay the
  preprocessed target store, which ``udaseg evaluate --ref`` accepts as reference.
* **Channel name.** nnU-Net picks its intensity normalisation from ``channel_names``: "CT" clips
  and standardises with foreground statistics in HU, anything else z-scores each case. The store's
  images are no longer in HU: preprocessing already normalised them as the dataset manifest says
  (percentile clipping, then min-max or z-score over the body mask), and a translator renders the
  source in that target space. So the default is ``noNorm``: nnU-Net trains on exactly the values
  udaseg's segmenters see, the body-masked statistics are kept (a whole-image z-score would
  depend on how much air the crop holds), and imagesTs, exported from the preprocessed target
  store, is normalised the same way. Its price: nnUNetv2_predict must be given images that udaseg
  exported, never raw scans. ``zscore`` re-standardises each case instead, which evens out a
  translator's global intensity offset; "CT" is refused.
* **Ignore label.** Pseudo-labelled stores mark the voxels the model was unsure of with 255
  (:data:`udaseg.data.store.IGNORE_LABEL`). nnU-Net v2 computes no loss on voxels of a label
  named "ignore" that must be the highest label value, so those voxels are written as C+1 and
  ``"ignore": C+1`` joins ``labels`` (only when some exported label holds one).
* **Case names.** With one ``--train`` store a case keeps its store id; a translated store's ids
  are already unique per style copy (``<source case>__style<k>``). With several stores each name
  is prefixed by its store's folder name (``<run>__<case>``), so a source and a target case that
  share an id (CHAOS numbers its CT and MR patients alike) cannot overwrite each other; names that
  still clash are refused. imagesTs keeps the target's case ids.
* **Folds.** nnU-Net draws its 5 folds at random over case names, which would put the K style
  copies of one patient in different folds and make its validation score optimistic;
  ``splits_final.json`` groups the cases by patient (a translated copy's ``source_case``, else the
  case id) before drawing, with nnU-Net's seed.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from udaseg import artifacts, layout
from udaseg.config import result_config
from udaseg.config.export_nnunet import NORMALIZATIONS, STAGE, ExportNnunetConfig
from udaseg.data.sampling import split_cases, store_path
from udaseg.data.store import IGNORE_LABEL, Store
from udaseg.errors import UdasegError, look_up_option
from udaseg.progress import NullProgress, Progress

# stages whose artifacts are stores with labels, and the command that rebuilds each
TRAIN_STAGES = {stage: f"udaseg {command}" for stage, command in layout.STORE_STAGES.items()}
TARGET_STAGES = {"preprocess": TRAIN_STAGES["preprocess"]}

IMAGES_TR = "imagesTr"
LABELS_TR = "labelsTr"
IMAGES_TS = "imagesTs"
DATASET_JSON = "dataset.json"
SPLITS_FINAL = "splits_final.json"
CASES_JSON = "udaseg_cases.json"
FILE_ENDING = ".nii.gz"
CHANNEL = "0000"  # the one input channel's suffix
IGNORE_NAME = "ignore"
FOLDS = 5
FOLD_SEED = 12345  # the seed nnU-Net draws its own folds with

_DATASET_NAME = re.compile(r"[A-Za-z0-9_]+")
_DATASET_FOLDER = re.compile(r"Dataset\d{3}_[A-Za-z0-9_]+")


@dataclass
class Part:
    """One input store and the cases of it to export. ``key``: its name among the manifest's
    inputs (``train0``, ``train1``, ..., ``target``); ``option``: the option that named it."""

    key: str
    option: str
    path: Path
    store: Store
    cases: list[str]
    record: dict[str, str]


def dataset_folder(dataset_id: int, name: str) -> str:
    """``Dataset501_mmwhs_ct``: the folder nnU-Net finds a dataset by (``Dataset\\d{3}_\\w+``).

    Raises:
        UdasegError (exit code 2): an id outside 1-999 or a name nnU-Net cannot take, naming the
            option.
    """
    if not 1 <= int(dataset_id) <= 999:
        raise UdasegError(
            f"--dataset-id {dataset_id}: nnU-Net dataset ids have three digits (1-999)",
            hint="custom datasets usually take 500 and up, e.g. --dataset-id 501",
            exit_code=2,
        )
    if re.fullmatch(r"Dataset\d{3}_.*", name):
        raise UdasegError(
            f'--name "{name}" is a whole nnU-Net folder name; give its name part only',
            hint=f"--dataset-id {name[7:10]} --name {name[11:] or 'NAME'}",
            exit_code=2,
        )
    if not _DATASET_NAME.fullmatch(name):
        raise UdasegError(
            f'--name "{name}" is not an nnU-Net dataset name: its folders are '
            "Dataset<3 digits>_<letters, digits and _>",
            hint=f"e.g. --name {default_name(name)}",
            exit_code=2,
        )
    return f"Dataset{int(dataset_id):03d}_{name}"


def default_name(text: str) -> str:
    """``text`` with every run of characters nnU-Net names cannot hold made one ``_``."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "udaseg"


def nnunet_labels(classes: list[str], ignore: bool) -> dict[str, int]:
    """dataset.json's ``labels``: background 0, the classes 1..C in store order and, with
    ``ignore``, "ignore" C+1 (nnU-Net requires it to be the highest value)."""
    labels = {"background": 0, **{name: i for i, name in enumerate(classes, start=1)}}
    if ignore:
        labels[IGNORE_NAME] = len(classes) + 1
    return labels


def nnunet_label(label: np.ndarray, n_classes: int, where: str) -> tuple[np.ndarray, int]:
    """An (S, H, W) uint8 store label as nnU-Net reads it: class ids 0..C kept, ``IGNORE_LABEL``
    (255) voxels set to C+1. Returns the label and the count of ignored voxels.

    Raises:
        UdasegError: a value that is neither a class id nor ``IGNORE_LABEL``, naming ``where``.
    """
    ignored = label == IGNORE_LABEL
    unknown = (label > n_classes) & ~ignored
    if unknown.any():
        values = sorted(int(v) for v in np.unique(label[unknown]))
        raise UdasegError(
            f"{where}: label values {values} are neither class ids 0..{n_classes} nor "
            f"{IGNORE_LABEL} (not labelled)",
            hint="rebuild the store with the stage that wrote it",
            exit_code=2,
        )
    out = label.astype(np.uint8, copy=True)
    out[ignored] = n_classes + 1
    return out, int(ignored.sum())


def fold_splits(groups: dict[str, str], folds: int = FOLDS, seed: int = FOLD_SEED) -> list[dict]:
    """Cross-validation folds as nnU-Net's ``splits_final.json`` holds them: a list of
    ``{"train": [...], "val": [...]}``, one per fold, from ``groups`` (exported case name ->
    patient). All cases of a patient land in the same fold; ``min(folds, patients)`` folds, none
    for fewer than two patients."""
    patients = sorted(set(groups.values()))
    n = min(folds, len(patients))
    if n < 2:
        return []
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[i]: k % n for k, i in enumerate(order)}
    names = sorted(groups)
    return [
        {
            "train": [c for c in names if fold_of[groups[c]] != k],
            "val": [c for c in names if fold_of[groups[c]] == k],
        }
        for k in range(n)
    ]


def write_case(
    array: np.ndarray, meta: dict[str, Any], path: Path, where: str, *, compression: int = 1
) -> None:
    """Write an (S, H, W) array as NIfTI on its case's processed grid (``meta["processed"]``:
    spacing in mm, origin in mm, direction; x-y-z order).

    Raises:
        UdasegError: the meta holds no processed grid, or one of another size, naming ``where``.
    """
    import SimpleITK as sitk

    from udaseg.data.geometry import array_to_image

    grid = meta.get("processed") or {}
    if not all(k in grid for k in ("spacing", "origin", "direction")):
        raise UdasegError(
            f"{where} has no processed grid in its meta (spacing, origin, direction)",
            hint="rebuild the store with this udaseg version",
            exit_code=2,
        )
    if "size" in grid and list(grid["size"]) != list(array.shape[::-1]):
        raise UdasegError(
            f"{where}: its meta's grid is {grid['size']} (x, y, z) but the array is "
            f"{list(array.shape[::-1])}",
            hint="rebuild the store with the stage that wrote it",
            exit_code=2,
        )
    image = array_to_image(array, grid["spacing"], grid["origin"], grid["direction"])
    # a fast deflate level: the files are read once by nnU-Net's preprocessing
    sitk.WriteImage(image, str(path), useCompression=True, compressionLevel=compression)


def run(
    config: ExportNnunetConfig,
    work: Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> artifacts.Manifest:
    """Export the stores as an nnU-Net v2 raw dataset and publish it (skipped when current).

    The summary holds ``run``, ``output``, ``dataset_id``, ``dataset`` (the folder name),
    ``files`` (count per folder: imagesTr, labelsTr, imagesTs), ``labels`` (dataset.json's),
    ``ignored_voxels``, ``normalization``, ``folds``, ``next`` (the nnU-Net command to run),
    ``seconds`` and ``skipped``.

    Raises:
        UdasegError (exit code 2): no --train store; an unfinished input folder or one that is
            not a store of the right stage; a --train store without labels; stores with other
            classes, or a class named background or ignore; a split without cases; a name or id
            nnU-Net cannot take; another export with the same id; case names that clash;
            normalization CT or unknown.
        StaleInputError: an input that changed since it was built (unless ``force``).
    """
    progress = progress or NullProgress()
    _check_normalization(config.normalization)
    parts = _parts(config, force)
    training = [p for p in parts if p.key != "target"]
    first = training[0].store
    name = config.name or default_name(f"{first.dataset}_{first.domain}")
    folder = dataset_folder(config.dataset_id, name)
    names = _case_names(training)
    out = layout.run_dir(work, layout.NNUNET_EXPORT, folder)
    _check_id_free(out, config.dataset_id)
    inputs = {p.key: p.record for p in parts}
    stage_config = result_config(config, name=name)
    done = artifacts.reuse_if_current(out, stage_config, inputs, progress.log, force=force)
    if done:
        return done
    return _export(config, parts, names, name, folder, out, stage_config, inputs, progress)


def _check_normalization(value: str) -> str:
    if value.upper() == "CT":
        raise UdasegError(
            "--normalization CT: nnU-Net's CT scheme clips and standardises Hounsfield units, "
            "and udaseg's stores hold images normalised already",
            hint="use noNorm (keep udaseg's normalisation) or zscore (standardise each case)",
            exit_code=2,
        )
    return look_up_option(value, NORMALIZATIONS, what="--normalization")


def _parts(config: ExportNnunetConfig, force: bool) -> list[Part]:
    """The ``--train`` stores, then the ``--target`` store if given, checked to go together.

    Raises:
        UdasegError (exit code 2): see :func:`run`.
    """
    if not config.train:
        raise UdasegError(
            "udaseg export nnunet needs at least one --train store",
            hint="e.g. --train W/translated/RUN (labelled cases become imagesTr/labelsTr)",
            exit_code=2,
        )
    parts = [
        _part(f"train{i}", "--train", path, config.train_split, TRAIN_STAGES, force)
        for i, path in enumerate(config.train)
    ]
    for part in parts:
        _check_labelled(part)
    if config.target is not None:
        parts.append(
            _part("target", "--target", config.target, config.target_split, TARGET_STAGES, force)
        )
    classes = parts[0].store.classes
    for part in parts[1:]:
        if part.store.classes != classes:
            raise UdasegError(
                f"{part.option} {part.path} has classes {part.store.classes}, but "
                f"{parts[0].path} has {classes}",
                hint="export stores of one dataset (the same classes in the same order)",
                path=part.path,
                exit_code=2,
            )
    reserved = [c for c in classes if c in ("background", IGNORE_NAME)]
    if reserved:
        raise UdasegError(
            f"{parts[0].path} has a class named {reserved[0]!r}, a label name nnU-Net reserves "
            "(background is 0; a label named ignore is its ignore label)",
            hint="rename the class in the dataset manifest and preprocess again",
            path=parts[0].path,
            exit_code=2,
        )
    return parts


def _part(
    key: str, option: str, path: Path, split: str, stages: dict[str, str], force: bool
) -> Part:
    """Check one input store artifact and pick its cases of ``split``.

    Raises:
        UdasegError (exit code 2): unfinished or not an artifact, made by another stage, or no
            cases in ``split``.
    """
    path = artifacts.check_finished(Path(path), option)
    if not (path / layout.MANIFEST).is_file():
        partial = artifacts.partial_dir(path).exists()
        raise UdasegError(
            f"{option} {path} is not a finished udaseg artifact (no {layout.MANIFEST}"
            + ("; its .partial folder says it was never finished)" if partial else ")"),
            hint="pass the output folder of "
            + " or ".join(f"`{c}`" for c in stages.values())
            + " (rerun it if it was interrupted)",
            path=path,
            exit_code=2,
        )
    manifest = artifacts.require_input_from(
        path,
        stages,
        option=option,
        what="a store " + " or ".join(f"`{c}`" for c in stages.values()) + " wrote",
        hint="pass a folder such as "
        + (
            "W/translated/RUN, W/pseudo/RUN or W/preprocessed/DATASET__DOMAIN"
            if len(stages) > 1
            else "W/preprocessed/DATASET__DOMAIN"
        ),
        force=force,
    )
    store = Store(store_path(path))
    cases = split_cases(path, split, store)
    if not cases:
        flag = "--target-split" if key == "target" else "--train-split"
        raise UdasegError(
            f"{flag} {split}: {option} {path} holds no cases in it",
            hint=f"see {path / layout.SPLITS} for its splits, or use {flag} all",
            path=path,
            exit_code=2,
        )
    return Part(key, option, path, store, cases, artifacts.input_record(path, manifest))


def _check_labelled(part: Part) -> None:
    if not part.store.labelled:
        raise UdasegError(
            f"--train {part.path} has no labels ({part.store.dataset}/{part.store.domain} is an "
            "unlabelled store), but imagesTr needs a label per image",
            hint="pseudo-label it first (`udaseg pseudo-label`) and export that, or pass it as "
            "--target for imagesTs",
            path=part.path,
            exit_code=2,
        )


def _case_names(training: list[Part]) -> dict[str, tuple[Part, str]]:
    """Exported case name -> (store, case id): the store's ids for one store, ``<store
    folder>__<case>`` for several (see the module docstring).

    Raises:
        UdasegError (exit code 2): two cases that would share a name, naming both stores.
    """
    names: dict[str, tuple[Part, str]] = {}
    for part in training:
        for case in part.cases:
            name = case if len(training) == 1 else layout.joined(part.path.resolve().name, case)
            if name in names:
                other = names[name][0]
                raise UdasegError(
                    f"--train {part.path} and --train {other.path} would both export case "
                    f'"{name}" (nnU-Net needs one name per case)',
                    hint="export stores with different folder names (rerun one with --name), "
                    "or export them separately",
                    exit_code=2,
                )
            names[name] = (part, case)
    return names


def _check_id_free(out: Path, dataset_id: int) -> None:
    """Refuse an id another export in this workspace has: nnU-Net finds datasets by id alone and
    stops when two folders of nnUNet_raw share one."""
    prefix = f"Dataset{int(dataset_id):03d}_"
    for other in sorted(out.parent.glob(prefix + "*")):
        if other == out or not other.is_dir() or not _DATASET_FOLDER.fullmatch(other.name):
            continue
        raise UdasegError(
            f"--dataset-id {dataset_id} is taken by {other} in this workspace: nnU-Net finds a "
            "dataset by its id and refuses two folders with one id",
            hint=f"choose another --dataset-id, or delete {other} if it is no longer needed",
            path=other,
            exit_code=2,
        )


def _export(config, parts, names, name, folder, out, stage_config, inputs, progress):
    started = time.perf_counter()
    training = [p for p in parts if p.key != "target"]
    target = next((p for p in parts if p.key == "target"), None)
    n_classes = len(training[0].store.classes)
    total = len(names) + (len(target.cases) if target else 0)
    task = progress.task(f"export nnunet {folder}", total)
    ignored_voxels = 0
    groups: dict[str, str] = {}
    provenance: dict[str, dict[str, dict[str, Any]]] = {IMAGES_TR: {}}
    with artifacts.building(out, discard_on_error=True) as tmp:
        for sub in (IMAGES_TR, LABELS_TR) + ((IMAGES_TS,) if target else ()):
            (tmp / sub).mkdir()
        for exported, (part, case) in names.items():
            where = f"case {case} of {part.option} {part.path}"
            meta = part.store.meta(case)
            image, label = part.store.image(case), part.store.label(case)
            if label is None:
                raise UdasegError(
                    f"{where} has no label, but imagesTr needs one per image",
                    hint="export only labelled stores as --train",
                    path=part.path,
                    exit_code=2,
                )
            label, ignored = nnunet_label(label, n_classes, where)
            ignored_voxels += ignored
            write_case(image, meta, tmp / IMAGES_TR / f"{exported}_{CHANNEL}{FILE_ENDING}", where)
            write_case(label, meta, tmp / LABELS_TR / f"{exported}{FILE_ENDING}", where)
            groups[exported] = str(meta.get("source_case") or case)
            provenance[IMAGES_TR][exported] = {
                "input": part.key,
                "case": case,
                "patient": groups[exported],
                "ignored_voxels": ignored,
            }
            progress.advance(task, case=exported)
        if target:
            provenance[IMAGES_TS] = {}
        for case in target.cases if target else []:
            where = f"case {case} of --target {target.path}"
            image = target.store.image(case)
            meta = target.store.meta(case)
            write_case(image, meta, tmp / IMAGES_TS / f"{case}_{CHANNEL}{FILE_ENDING}", where)
            provenance[IMAGES_TS][case] = {"input": target.key, "case": case}
            progress.advance(task, case=case)
        labels = nnunet_labels(training[0].store.classes, ignore=ignored_voxels > 0)
        dataset = _dataset_json(config, name, parts, labels, len(names))
        (tmp / DATASET_JSON).write_text(json.dumps(dataset, indent=2) + "\n")
        splits = fold_splits(groups)
        if splits:
            (tmp / SPLITS_FINAL).write_text(json.dumps(splits, indent=2) + "\n")
        (tmp / CASES_JSON).write_text(json.dumps(provenance, indent=2) + "\n")
        files = {IMAGES_TR: len(names), LABELS_TR: len(names)}
        if target:
            files[IMAGES_TS] = len(target.cases)
        summary = {
            "run": folder,
            "output": str(out),
            "dataset_id": int(config.dataset_id),
            "dataset": folder,
            "files": files,
            "labels": labels,
            "ignored_voxels": ignored_voxels,
            "normalization": dataset["channel_names"]["0"],
            "folds": len(splits),
            "next": f"nnUNetv2_plan_and_preprocess -d {int(config.dataset_id)} "
            "--verify_dataset_integrity",
            "seconds": round(time.perf_counter() - started, 2),
            "skipped": False,
        }
        return artifacts.publish(
            tmp, out, stage=STAGE, config=stage_config, inputs=inputs, summary=summary
        )


def _dataset_json(config, name, parts, labels, n_training) -> dict[str, Any]:
    """nnU-Net v2's dataset.json: its four required keys, then a name and a description."""
    stores = ", ".join(
        f"{p.store.dataset}/{p.store.domain} ({len(p.cases)} cases)"
        for p in parts
        if p.key != "target"
    )
    return {
        "channel_names": {"0": config.normalization},
        "labels": labels,
        "numTraining": n_training,
        "file_ending": FILE_ENDING,
        "name": name,
        "description": f"udaseg export nnunet of {stores}: images on udaseg's preprocessed grid, "
        f"intensities normalised by udaseg; channel '{config.normalization}'",
    }
