"""``udaseg`` command line: parse options, build a config, call one stage, print the result.

Kept thin and import-light: torch, SimpleITK and h5py are imported inside the commands, so
``udaseg --help`` answers immediately. Options that change results are listed apart from the
runtime-only ones (workers, output format) in the help.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from udaseg import __version__
from udaseg.errors import UdasegError

app = typer.Typer(
    name="udaseg",
    help="Unsupervised cross-modality domain adaptation for medical image segmentation: "
    "labelled source scans + unlabelled target scans -> a segmenter for the target. "
    "Stages share artifacts under --work and can each run alone (e.g. on their own GPU node).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)

RESULTS = "Options that change results"
RUNTIME = "Runtime options (results unchanged)"

WorkOpt = Annotated[
    Path,
    typer.Option(
        "--work",
        "-w",
        help="Workspace root: stages read and write their artifacts under it.",
        rich_help_panel=RESULTS,
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print a machine-readable JSON summary on stdout (progress goes to stderr).",
        rich_help_panel=RUNTIME,
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Rebuild even if the artifact is current, "
        "and use inputs that changed since they were made.",
        rich_help_panel=RUNTIME,
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers", "-j", min=1, help="Cases processed in parallel.", rich_help_panel=RUNTIME
    ),
]

DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=RUNTIME)]
AmpOpt = Annotated[
    bool, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA.", rich_help_panel=RUNTIME)
]
SeedOpt = Annotated[
    int, typer.Option(help="Random seed (CPU runs repeat exactly).", rich_help_panel=RESULTS)
]


def _results(help: str, *names: str) -> Any:
    """An option that changes results (it is part of the artifact's configuration hash)."""
    return typer.Option(*names, help=help, rich_help_panel=RESULTS)


def _runtime(help: str, *names: str) -> Any:
    """An option that only changes how a stage runs, never its results."""
    return typer.Option(*names, help=help, rich_help_panel=RUNTIME)


# options shared by the training stages (segment-train, adapt)
StepsOpt = Annotated[int | None, _results("Optimiser steps (default: the recipe's).")]
BatchSizeOpt = Annotated[int | None, _results("Slices (or patches) per step.")]
PatchSizeOpt = Annotated[str | None, _results("e.g. 128,128 (2D) or 32,256,256 (3D).")]
LrOpt = Annotated[float | None, _results("Learning rate (of the segmenter).")]
ModelArgOpt = Annotated[
    list[str] | None, _results("Model constructor argument key=value, e.g. base_channels=16.")
]
ForegroundOpt = Annotated[
    float, _results("Share of each (source) batch drawn from slices/voxels with labels.")
]
# options of the stages that run a trained segmenter over scans (predict, pseudo-label)
ModelDirOpt = Annotated[
    Path,
    typer.Option(
        "--model-dir",
        "-m",
        help="Model directory (output of `udaseg segment-train` or `udaseg adapt`).",
        rich_help_panel=RESULTS,
    ),
]
WindowBatchOpt = Annotated[
    int,
    typer.Option("--batch-size", min=1, help="Windows per forward pass.", rich_help_panel=RUNTIME),
]
IntensityNetOpt = Annotated[
    float,
    _results(
        "Probability that a labelled training image is re-rendered by a random shallow network "
        "(GIN intensity augmentation, Ouyang et al. 2022; 0 = off). Makes the segmenter rely on "
        "shape rather than one modality's contrast."
    ),
]
CheckpointEveryOpt = Annotated[int, _results("Steps between checkpoint_latest.pt.")]
ResumeOpt = Annotated[bool, _runtime("Continue an interrupted run from its last checkpoint.")]
LogEveryOpt = Annotated[int, _runtime("Steps between metrics.jsonl lines.")]


def _progress(as_json: bool):
    from udaseg.progress import rich_progress

    return rich_progress(enabled=sys.stderr.isatty() or not as_json)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"udaseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """udaseg: staged, reproducible UDA pipelines (SIFA, DAR-UNet, AttENT, BiGL, GLUA)."""


def _emit(summary: object, as_json: bool, table: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    elif table:
        from rich.console import Console

        Console().print(table)


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise UdasegError(f'--shard "{text}" must look like i/n, e.g. 0/4', exit_code=2) from exc
    if count < 1 or not 0 <= index < count:
        raise UdasegError(f"--shard {text}: need 0 <= i < n", exit_code=2)
    return index, count


@app.command(rich_help_panel="Data")
def phantom(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder to write the raw phantom dataset into.",
            rich_help_panel=RESULTS,
        ),
    ],
    task: Annotated[
        str,
        typer.Option(
            help="abdomen (BTCV-like CT + CHAOS-like MR, SSL-ALPNet "
            "layout) or cardiac (MMWHS layout).",
            rich_help_panel=RESULTS,
        ),
    ] = "abdomen",
    seed: Annotated[int, typer.Option(help="Random seed.", rich_help_panel=RESULTS)] = 0,
    size: Annotated[
        str, typer.Option(help="small (demo) or tiny (tests).", rich_help_panel=RESULTS)
    ] = "small",
    n_cases: Annotated[
        int | None,
        typer.Option(
            "--n-cases",
            help="Cases per domain (default: the size's, 6 small / 3 tiny). Adding cases never "
            "changes the others; the test split follows the dataset's fixed test ids.",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a small synthetic cross-modality dataset in a real dataset's file layout.

    The folder also gets dataset.yaml, a manifest for `udaseg preprocess`, e.g.:
    udaseg phantom --out W/raw && udaseg preprocess W/raw/dataset.yaml --raw W/raw --work W
    """
    from udaseg.stages import phantom as stage

    summary = stage.run(task, out, seed=seed, size=size, n_cases=n_cases, force=force)
    _emit(
        summary,
        as_json,
        f"{out} already holds this phantom; skipped (use --force to rewrite)"
        if summary["skipped"]
        else f"wrote the {task} phantom to {out} "
        f"({summary['cases']} cases); manifest: {summary['manifest']}",
    )


@app.command(rich_help_panel="Stages")
def preprocess(
    dataset: Annotated[
        str,
        typer.Argument(
            help="Built-in dataset (mmwhs, chaos, btcv, "
            "abdominal-normalized, sifa-tfrecords, brats, "
            "crossmoda, custom) or the path of a manifest YAML."
        ),
    ],
    work: WorkOpt,
    raw: Annotated[
        Path | None,
        typer.Option(
            "--raw",
            "-r",
            help="The downloaded dataset folder (layout as the manifest says).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    domain: Annotated[
        list[str] | None,
        typer.Option(
            "--domain",
            "-d",
            help="Only this domain (repeatable; default all).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a manifest key, e.g. --set geometry.inplane_mm=2.0 (repeatable).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Process only shard i of n (0-based), e.g. "
            "${SLURM_ARRAY_TASK_ID}/8; merge with "
            "--merge-shards.",
            rich_help_panel=RUNTIME,
        ),
    ] = None,
    merge_shards: Annotated[
        bool,
        typer.Option(
            "--merge-shards", help="Join finished shards into one store.", rich_help_panel=RUNTIME
        ),
    ] = False,
    workers: WorkersOpt = 1,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Raw scans -> reoriented, resampled, cropped, normalised volumes in HDF5 (one per domain)."""
    from udaseg.stages import preprocess as stage

    config = stage.PreprocessConfig(
        dataset=dataset,
        raw=raw,
        domains=domain or None,
        overrides=set_ or [],
        shard=_parse_shard(shard),
        merge_shards=merge_shards,
        workers=workers,
    )
    with _progress(as_json) as progress:
        manifests = stage.run(config, work, force=force, progress=progress)
    summaries = [m.summary for m in manifests]
    lines = [
        f"{s['dataset']}/{s['domain']}: {s['cases']} cases"
        + (" (up to date, skipped)" if s.get("skipped") else f" in {s.get('seconds', 0)} s")
        + f" -> {s['output']}"
        for s in summaries
    ]
    _emit(summaries if len(summaries) > 1 else summaries[0], as_json, "\n".join(lines))


@app.command(rich_help_panel="Stages")
def predict(
    model_dir: ModelDirOpt,
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="A `udaseg preprocess` output folder (or its store.h5), or a RAW dataset folder "
            "(then give --dataset and --domain; images are preprocessed in memory).",
            rich_help_panel=RESULTS,
        ),
    ],
    work: WorkOpt,
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            help="Another model directory to ensemble with --model-dir (repeat the option): "
            "the class probabilities of all are averaged before the argmax (e.g. students of "
            "several seeds). Same classes, view and input layout; --checkpoint applies to all.",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Manifest of raw --data (built-in name or YAML).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option("--domain", "-d", help="Domain of raw --data.", rich_help_panel=RESULTS),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Run name: results go to WORK/predict/NAME (default: MODELDIR__DATA, e.g. "
            "unet__phantom-abdomen__mr).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    checkpoint: Annotated[
        str,
        typer.Option(
            help="best, final or latest (falls back to final, then latest, when absent).",
            rich_help_panel=RESULTS,
        ),
    ] = "best",
    tta: Annotated[
        bool,
        typer.Option(
            "--tta",
            help="Flip test-time augmentation: average over flips of the in-plane axes (2D "
            "models, 4 passes) or of all three axes (3D, 8 passes). Only for models trained "
            "with flips: udaseg's own are not, and lose accuracy with it.",
            rich_help_panel=RESULTS,
        ),
    ] = False,
    largest_component: Annotated[
        bool,
        typer.Option(
            "--largest-component",
            help="Keep only the largest connected component of each class (drops detached "
            "false positives; each organ is one body).",
            rich_help_panel=RESULTS,
        ),
    ] = False,
    gaussian: Annotated[
        bool,
        typer.Option(
            "--gaussian/--no-gaussian",
            help="Weight overlapping sliding windows by a Gaussian (sigma 1/8 of the window) "
            "instead of uniformly.",
            rich_help_panel=RESULTS,
        ),
    ] = True,
    stride: Annotated[
        str | None,
        typer.Option(
            help="Sliding-window step: a fraction of the window (default 0.5) or voxels per "
            "window axis, e.g. 16,128,128 (3D) or 128,128 (2D).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    amp: Annotated[
        bool,
        typer.Option(
            "--amp",
            help="bfloat16 autocast on CUDA (faster; ignored on CPU).",
            rich_help_panel=RESULTS,
        ),
    ] = False,
    cases: Annotated[
        str | None,
        typer.Option(
            "--cases", help="Comma list of case ids (default: all).", rich_help_panel=RESULTS
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Only the cases of these splits of a preprocessed store, e.g. val or val,test.",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    batch_size: WindowBatchOpt = 8,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=RUNTIME)
    ] = "auto",
    shard: Annotated[
        str | None,
        typer.Option(
            help="Predict only shard i of n (0-based) into NAME__shard-i-of-n; join with "
            "--merge-shards.",
            rich_help_panel=RUNTIME,
        ),
    ] = None,
    merge_shards: Annotated[
        bool,
        typer.Option(
            "--merge-shards",
            help="Copy the finished shards' files into WORK/predict/NAME.",
            rich_help_panel=RUNTIME,
        ),
    ] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Segment scans with a trained model -> <case>.nii.gz label maps on the ORIGINAL scan grid.

    Example: udaseg predict --model-dir W/segment-train/unet --data W/preprocessed/mmwhs__ct
    --work W  (then: udaseg evaluate --pred W/predict/unet__mmwhs__ct --ref RAW --dataset mmwhs)
    """
    from udaseg.stages import predict as stage

    config = stage.PredictConfig(
        model_dir=model_dir,
        data=data,
        ensemble=ensemble or [],
        dataset=dataset,
        domain=domain,
        name=name,
        checkpoint=checkpoint,
        tta=tta,
        gaussian=gaussian,
        largest_component=largest_component,
        stride=stage.parse_stride(stride),
        amp=amp,
        cases=[c.strip() for c in cases.split(",") if c.strip()] if cases else None,
        split=split,
        shard=_parse_shard(shard),
        merge_shards=merge_shards,
        batch_size=batch_size,
        device=device,
    )
    with _progress(as_json) as progress:
        manifest = stage.run(config, work, force=force, progress=progress)
    s = manifest.summary
    state = (
        "up to date, skipped (--force recomputes)"
        if s.get("skipped")
        else f"{s['cases']} cases in {s.get('seconds', 0)} s"
    )
    _emit(s, as_json, f"predict {s['run']}: {state} -> {s['output']}")


@app.command("pseudo-label", rich_help_panel="Stages")
def pseudo_label(
    model_dir: ModelDirOpt,
    target: Annotated[
        Path,
        typer.Option(help="Preprocessed target store artifact.", rich_help_panel=RESULTS),
    ],
    work: WorkOpt,
    split: Annotated[
        str,
        typer.Option(
            help="Target cases to label: train (the unlabelled training cases; keep your dev "
            "cases out).",
            rich_help_panel=RESULTS,
        ),
    ] = "train",
    threshold: Annotated[
        float,
        typer.Option(
            help="A voxel keeps its pseudo-label when the model's top class probability reaches "
            "this; the rest take no part in training (0 keeps all).",
            rich_help_panel=RESULTS,
        ),
    ] = 0.9,
    portion: Annotated[
        float | None,
        typer.Option(
            help="Class-balanced selection (CBST) instead of --threshold: each class keeps the "
            "most confident PORTION of the voxels predicted as it, over all cases (0.5 keeps the "
            "surer half; a cross-modality model's background is then left out where it is least "
            "sure, often inside organs it under-segments).",
            min=0.0,
            max=1.0,
            rich_help_panel=RESULTS,
        ),
    ] = None,
    margin: Annotated[
        float,
        typer.Option(
            help="mm: background within this distance of a predicted organ stays unlabelled, "
            "however sure the model is (a cross-modality model mostly under-segments; the "
            "student then learns organ extents from the labelled source). 0 is off.",
            min=0.0,
            rich_help_panel=RESULTS,
        ),
    ] = 0.0,
    largest_component: Annotated[
        bool,
        typer.Option(
            "--largest-component/--no-largest-component",
            help="Cut each class to its largest connected body first; the islands cut away are "
            "labelled background, so the student unlearns them.",
            rich_help_panel=RESULTS,
        ),
    ] = True,
    checkpoint: Annotated[
        str, typer.Option(help="best, final or latest.", rich_help_panel=RESULTS)
    ] = "final",
    name: Annotated[
        str | None,
        typer.Option(
            help="Run name: the store goes to WORK/pseudo/NAME (default MODELDIR__SPLIT).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    batch_size: WindowBatchOpt = 8,
    device: DeviceOpt = "auto",
    amp: AmpOpt = True,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Label the target's training cases with an adapted model, for self-training.

    Example: udaseg pseudo-label --model-dir W/adapt/bigl --target W/preprocessed/abdominal__ct
    --work W  (then: udaseg segment-train --train-on pseudo --pseudo W/pseudo/bigl__train
    --source W/preprocessed/abdominal__mr --work W)
    """
    from udaseg.stages import pseudo_label as stage

    config = stage.PseudoLabelConfig(
        model_dir=model_dir,
        target=target,
        split=split,
        threshold=threshold,
        portion=portion,
        margin_mm=margin,
        largest_component=largest_component,
        checkpoint=checkpoint,
        name=name,
        batch_size=batch_size,
        device=device,
        amp=amp,
    )
    with _progress(as_json) as progress:
        manifest = stage.run(config, work, force=force, progress=progress)
    s = manifest.summary
    state = (
        "up to date, skipped (--force recomputes)"
        if s.get("skipped")
        else f"{s['cases']} cases, {100 * s['kept']:.1f}% of voxels labelled, {s['seconds']} s"
    )
    _emit(s, as_json, f"pseudo-label {s['run']}: {state} -> {s['output']}")


@app.command(rich_help_panel="Stages")
def evaluate(
    pred: Annotated[
        Path,
        typer.Option(
            "--pred",
            "-p",
            help="Predictions: a folder of <case_id>.nii.gz class-id maps 0..C (what `udaseg "
            "predict` writes), or an HDF5 store (store.h5 or an artifact folder holding one).",
            rich_help_panel=RESULTS,
        ),
    ],
    ref: Annotated[
        Path,
        typer.Option(
            "--ref",
            "-r",
            help="Reference labels: a store (store.h5 or its artifact folder); else the RAW "
            "dataset folder when the manifest's labels pattern finds files in it (raw codes "
            "mapped by the domain's label_map); else a folder of <case_id>.nii.gz class-id maps.",
            rich_help_panel=RESULTS,
        ),
    ],
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            help="Built-in dataset or manifest YAML: gives the classes, the regions evaluated "
            "(BraTS WT/TC/ET) and the raw label codes.",
            rich_help_panel=RESULTS,
        ),
    ],
    work: WorkOpt,
    domain: Annotated[
        str | None,
        typer.Option(
            "--domain",
            "-d",
            help="Domain of a raw --ref (needed when several domains' labels are found in it).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            "-m",
            help="Comma list of dice, assd, asd, hd95, hd. assd: average SYMMETRIC surface "
            "distance (what most papers call ASD); asd: ONE-directional mean surface distance "
            "pred -> ref, as medpy's asd (not symmetric); hd95: 95th percentile Hausdorff "
            "distance; hd: Hausdorff distance.",
            rich_help_panel=RESULTS,
        ),
    ] = "dice,assd,hd95",
    unit: Annotated[
        str,
        typer.Option(
            help="Distances in mm (voxel spacing applied) or voxel.", rich_help_panel=RESULTS
        ),
    ] = "mm",
    hd95: Annotated[
        str,
        typer.Option(
            "--hd95",
            help="pooled: 95th percentile of both directions' surface distances together "
            "(medpy hd95); max-directed: larger of the two directed 95th percentiles (MONAI, "
            "DeepMind).",
            rich_help_panel=RESULTS,
        ),
    ] = "pooled",
    assd: Annotated[
        str,
        typer.Option(
            "--assd",
            help="pooled: mean of both directions' surface distances together (medpy>=0.5.2, "
            "MONAI); mean-of-directed: mean of the two directed means (medpy<=0.4, SIFA).",
            rich_help_panel=RESULTS,
        ),
    ] = "pooled",
    connectivity: Annotated[
        int,
        typer.Option(
            help="Surface = foreground voxels with a background neighbour; neighbours share a "
            "face (1), also an edge (2) or also a corner (3).",
            rich_help_panel=RESULTS,
        ),
    ] = 1,
    empty_distance: Annotated[
        str,
        typer.Option(
            "--empty-distance",
            help="Distances when exactly one of prediction and reference is empty for a class: "
            "nan (missing: left out of means and counted) or diagonal (the image diagonal).",
            rich_help_panel=RESULTS,
        ),
    ] = "nan",
    cases: Annotated[
        str | None,
        typer.Option(
            "--cases",
            help="Comma list of case ids to evaluate (default: all; then every prediction "
            "needs a reference and vice versa).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    predicted_only: Annotated[
        bool,
        typer.Option(
            "--predicted-only",
            help="Evaluate exactly the predicted cases (e.g. of `predict --split val`).",
            rich_help_panel=RESULTS,
        ),
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Run name: results go to WORK/evaluate/NAME (default: the --pred folder's name).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    workers: WorkersOpt = 1,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Dice, ASSD/ASD, HD95 per class and case -> per_case.csv, summary.json, paper-style table.md.

    Example: udaseg evaluate --pred W/predict/sifa --ref raw/ --dataset mmwhs --domain mr --work W
    """
    from udaseg.stages import evaluate as stage

    config = stage.EvaluateConfig(
        pred=pred,
        ref=ref,
        dataset=dataset,
        domain=domain,
        metrics=stage.parse_metrics(metric),
        unit=unit,
        hd95=hd95,
        assd=assd,
        connectivity=connectivity,
        empty_distance=empty_distance,
        cases=[c.strip() for c in cases.split(",") if c.strip()] if cases else None,
        predicted_only=predicted_only,
        name=name,
        workers=workers,
    )
    with _progress(as_json) as progress:
        manifest = stage.run(config, work, force=force, progress=progress)
    out = Path(manifest.summary["output"])
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    if as_json:
        # like every stage's --json: whether it ran, and how long it took
        skipped = bool(manifest.summary.get("skipped"))
        _emit({**summary, "skipped": skipped, "seconds": manifest.summary.get("seconds")}, True)
        return
    from rich.console import Console

    from udaseg.metrics.tables import rich_table

    console = Console()
    console.print(rich_table(summary))
    state = (
        "up to date, skipped (--force recomputes)"
        if manifest.summary.get("skipped")
        else f"{summary['n_cases']} cases in {manifest.summary.get('seconds', 0)} s"
    )
    console.print(f"{state} -> {out} (per_case.csv, summary.json, table.md)")


def _parse_kv(items: list[str] | None, option: str) -> dict:
    import yaml

    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UdasegError(f'{option} "{item}" must look like key=value', exit_code=2)
        parsed[key] = yaml.safe_load(value)
    return parsed


def _ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError as exc:
        raise UdasegError(f'{option} "{text}" must be numbers like 256,256', exit_code=2) from exc


@app.command("segment-train", rich_help_panel="Stages")
def segment_train(
    work: WorkOpt,
    model: Annotated[
        str,
        typer.Option(
            help="Registered model, e.g. unet2d.v1, sifa-encoder.v1, "
            "deeplabv2.v1, dual-attention-unet.v1, dar-unet.v1.",
            rich_help_panel=RESULTS,
        ),
    ] = "unet2d.v1",
    train_on: Annotated[
        str,
        typer.Option(
            help="source (no-adaptation bound), target (supervised bound), translated, or "
            "pseudo (pseudo-labelled target, with --source beside it when given: self-training).",
            rich_help_panel=RESULTS,
        ),
    ] = "source",
    source: Annotated[
        Path | None,
        typer.Option(help="Preprocessed source store artifact.", rich_help_panel=RESULTS),
    ] = None,
    target: Annotated[
        Path | None,
        typer.Option(help="Preprocessed target store artifact.", rich_help_panel=RESULTS),
    ] = None,
    translated: Annotated[
        list[Path] | None,
        typer.Option(
            help="Translated store artifact(s) (all styles are used).", rich_help_panel=RESULTS
        ),
    ] = None,
    pseudo: Annotated[
        Path | None,
        typer.Option(
            help="Pseudo-labelled target store (`udaseg pseudo-label`) for --train-on pseudo.",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    val: Annotated[
        Path | None,
        typer.Option(
            help="Store whose 'val' split picks checkpoint_best (default: the training store).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    steps: StepsOpt = None,
    batch_size: BatchSizeOpt = None,
    patch_size: PatchSizeOpt = None,
    lr: LrOpt = None,
    optimizer: Annotated[
        str | None, typer.Option(help="adam, adamw or sgd.", rich_help_panel=RESULTS)
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            help="constant, cosine, poly or linear (constant, then down to 0 from half way).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(help="ce, ce_dice, dice_focal or gdice_ce.", rich_help_panel=RESULTS),
    ] = None,
    model_arg: ModelArgOpt = None,
    augment: Annotated[
        bool,
        typer.Option(
            help="Random rotation, scaling, shear, elastic (3D).", rich_help_panel=RESULTS
        ),
    ] = True,
    intensity_net: IntensityNetOpt = 0.0,
    foreground_fraction: ForegroundOpt = 0.5,
    balance_stores: Annotated[
        bool,
        typer.Option(
            "--balance-stores/--pool-stores",
            help="With several training stores (--train-on pseudo: source and pseudo-labelled "
            "target), take an equal share of each batch from each, instead of drawing from their "
            "pooled slices (where the store with more slices dominates).",
            rich_help_panel=RESULTS,
        ),
    ] = False,
    seed: SeedOpt = 0,
    checkpoint_every: CheckpointEveryOpt = 200,
    val_every: Annotated[
        int,
        typer.Option(
            help="Steps between validations (0: only at the end).", rich_help_panel=RESULTS
        ),
    ] = 500,
    name: Annotated[
        str | None,
        typer.Option(help="Run name (default model__train-on__data).", rich_help_panel=RESULTS),
    ] = None,
    monitor: Annotated[
        list[Path] | None,
        typer.Option(
            help="Also log Dice on these stores (information only, never selects).",
            rich_help_panel=RUNTIME,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    amp: AmpOpt = True,
    compile_: Annotated[
        bool, typer.Option("--compile", help="Try torch.compile.", rich_help_panel=RUNTIME)
    ] = False,
    resume: ResumeOpt = False,
    log_every: LogEveryOpt = 10,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a 2D/3D segmenter on source, target or translated data (torchrun-aware)."""
    from udaseg.stages import segment_train as stage

    # self-training keeps the labelled source beside the pseudo-labelled target (first, so its
    # val split picks checkpoint_best: the target has no labels to validate on)
    stores = {
        "source": [source],
        "target": [target],
        "translated": translated or [],
        "pseudo": [source, pseudo] if pseudo is not None else [],
    }
    chosen = [p for p in stores.get(train_on, []) if p is not None]
    if train_on in stores and not chosen:
        raise UdasegError(f"--train-on {train_on} needs --{train_on}", exit_code=2)
    recipe = {
        "steps": steps,
        "batch_size": batch_size,
        "patch_size": _ints(patch_size, "--patch-size"),
        "lr": lr,
        "optimizer": optimizer,
        "schedule": schedule,
        "loss": loss,
    }
    config = stage.SegmentTrainConfig(
        model=model,
        train_on=train_on,
        train=chosen,
        val=val,
        monitor=monitor or [],
        name=name,
        model_kwargs=_parse_kv(model_arg, "--model-arg"),
        recipe={k: v for k, v in recipe.items() if v is not None},
        augment=augment,
        intensity_net=intensity_net,
        foreground_fraction=foreground_fraction,
        balance_stores=balance_stores,
        seed=seed,
        checkpoint_every=checkpoint_every,
        val_every=val_every,
        log_every=log_every,
        device=device,
        amp=amp,
        compile=compile_,
        resume=resume,
    )
    with _progress(as_json) as progress:
        manifest = stage.run(config, work, force=force, progress=progress)
    summary = manifest.summary
    if not summary:  # a non-zero rank under torchrun: rank 0 reports
        return
    best = summary.get("best") or {}
    _emit(
        summary,
        as_json,
        f"{summary.get('model')}: {summary.get('steps')} steps"
        + (f", best validation Dice {best['score']:.3f} at step {best['step']}" if best else "")
        + (" (up to date, skipped)" if summary.get("skipped") else "")
        + f" -> {summary.get('output', '')}",
    )


@app.command("adapt", rich_help_panel="Stages")
def adapt(
    work: WorkOpt,
    method: Annotated[
        str, _results("sifa.v1, adaptsegnet.v1, advent.v1, attent.v1, glua.v1 or bigl.v1.")
    ],
    source: Annotated[
        Path | None,
        _results("Labelled source store: preprocessed, or translated by `translate apply`."),
    ] = None,
    target: Annotated[
        Path | None, _results("Preprocessed target store (its labels never train anything).")
    ] = None,
    translator: Annotated[
        Path | None, _results("translate-train run, for methods that translate online (BiGL).")
    ] = None,
    init: Annotated[
        Path | None, _results("Model directory to start the segmenter from (the source-only run).")
    ] = None,
    model: Annotated[
        str | None, _results("Segmenter (default: the init model's, else the method's).")
    ] = None,
    model_arg: ModelArgOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchSizeOpt = None,
    patch_size: PatchSizeOpt = None,
    lr: LrOpt = None,
    set_: Annotated[
        list[str] | None,
        _results("Any recipe key=value, e.g. d_lr=1e-4 (see --show-recipe).", "--set"),
    ] = None,
    augment: Annotated[bool, _results("Random affine + gamma on both domains.")] = True,
    intensity_net: IntensityNetOpt = 0.0,
    foreground_fraction: ForegroundOpt = 0.5,
    seed: SeedOpt = 0,
    checkpoint_every: CheckpointEveryOpt = 200,
    val_every: Annotated[
        int, _results("Steps between target-val Dice logs (information only; 0: at the end).")
    ] = 500,
    name: Annotated[
        str | None, _results("Run name (default method__dataset__source-to-target).")
    ] = None,
    show_recipe: Annotated[bool, _runtime("Print the resolved recipe and exit.")] = False,
    device: DeviceOpt = "auto",
    amp: AmpOpt = True,
    resume: ResumeOpt = False,
    log_every: LogEveryOpt = 10,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Adapt a segmenter to the target: SIFA, AdaptSegNet, ADVENT, AttENT, GLUA, BiGL (torchrun).

    Writes a model directory that `udaseg predict` loads like any other.
    """
    from udaseg.stages import adapt as stage

    recipe = {
        **_parse_kv(set_, "--set"),
        "steps": steps,
        "batch_size": batch_size,
        "patch_size": _ints(patch_size, "--patch-size"),
        "lr": lr,
    }
    if not show_recipe and (source is None or target is None):
        raise UdasegError(
            "adapt needs --source and --target",
            hint="pass the labelled source store and the target store",
            exit_code=2,
        )
    config = stage.AdaptConfig(
        method=method,
        source=source or Path(),
        target=target or Path(),
        translator=translator,
        init=init,
        model=model,
        model_kwargs=_parse_kv(model_arg, "--model-arg"),
        recipe={k: v for k, v in recipe.items() if v is not None},
        name=name,
        augment=augment,
        intensity_net=intensity_net,
        foreground_fraction=foreground_fraction,
        seed=seed,
        checkpoint_every=checkpoint_every,
        val_every=val_every,
        log_every=log_every,
        device=device,
        amp=amp,
        resume=resume,
    )
    if show_recipe:
        resolved = stage.resolved_recipe(config)
        _emit({"method": method, "recipe": resolved}, as_json, json.dumps(resolved, indent=2))
        return
    with _progress(as_json) as progress:
        manifest = stage.run(config, work, force=force, progress=progress)
    summary = manifest.summary
    if not summary:  # a non-zero rank under torchrun: rank 0 reports
        return
    last = (summary.get("last_validation") or {}).get("score")
    _emit(
        summary,
        as_json,
        f"{summary.get('method')} ({summary.get('model')}): {summary.get('steps')} steps"
        + (f", target val Dice {last:.3f} (not used to select)" if last is not None else "")
        + (" (up to date, skipped)" if summary.get("skipped") else "")
        + f" -> {summary.get('output', '')}",
    )


@app.command("run", rich_help_panel="Pipelines")
def run_recipe(
    recipe: Annotated[
        str,
        typer.Argument(help="Recipe YAML file, or the name of one in examples/recipes."),
    ],
    work: WorkOpt,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Named variable set of the recipe, e.g. cpu-small.", rich_help_panel=RESULTS
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Recipe variable name=value.", rich_help_panel=RESULTS),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(help="Comma list of stage names to run.", rich_help_panel=RUNTIME),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Run from this stage on.", rich_help_panel=RUNTIME),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the commands (a script to split over nodes) and run nothing.",
            rich_help_panel=RUNTIME,
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a recipe (a paper's pipeline), skipping stages whose artifacts are current.

    Each stage's command is printed before it runs; the run ends with a comparison table.
    """
    from udaseg.stages import recipe as stage

    loaded = stage.load_recipe(recipe, work, preset, _parse_kv(set_, "--set"))
    chosen = stage.select(
        loaded.stages, [s.strip() for s in only.split(",")] if only else None, from_
    )
    if dry_run:
        for chosen_stage in chosen:
            stage.check(chosen_stage)
        commands = [s.command for s in chosen]
        if as_json:
            _emit({"recipe": str(loaded.path), "commands": commands}, True)
        else:
            typer.echo("\n".join(commands))  # plain lines, unwrapped: a script to copy
        return

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    record = stage.run(loaded, chosen, echo=echo)
    if as_json:
        _emit(record, True)
    else:  # plain Markdown, unwrapped, to paste into notes
        typer.echo((Path(record["output"]) / "comparison.md").read_text(encoding="utf-8"))


@app.command("report", rich_help_panel="Pipelines")
def report(
    work: Annotated[
        Path,
        typer.Argument(help="Workspace root (the --work of the stages) to report on."),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Report on a workspace: WORK/report/report.html (self-contained) and report.md.

    Data, translator samples, style embedding, training curves, predictions next to ground
    truth, Dice box plots and the comparison of every evaluated run; a section without
    artifacts says what is missing. Example: udaseg report W
    """
    from udaseg.stages import report as stage

    s = stage.run(work).summary
    if as_json:
        _emit(s, True)
        return
    # sections share some notes ("no evaluate run"): each is printed once
    missing = dict.fromkeys(n for section in s["sections"].values() for n in section["notes"])
    lines = [
        f"report of {s['artifacts']} artifacts ({s['evaluate_runs']} evaluate runs): "
        f"{s['sections_with_content']} sections, {s['images']} images in {s['seconds']} s",
        *(f"  note: {n}" for n in missing),
        f"-> {s['html']}",
        f"-> {s['markdown']}",
    ]
    typer.echo("\n".join(lines))


# --- translation ---------------------------------------------------------------------------------

TranslatorOpt = Annotated[
    Path,
    typer.Option(
        "--translator",
        "-t",
        help="Translate run folder (output of `udaseg translate train`, WORK/translate/RUN).",
        rich_help_panel=RESULTS,
    ),
]
SlicesPerBatchOpt = Annotated[
    int,
    typer.Option("--batch-size", min=1, help="Slices per forward pass.", rich_help_panel=RUNTIME),
]
PickOpt = Annotated[
    str,
    typer.Option(
        help="Member kept per cluster: nearest (to the cluster centre) or random (seeded; "
        "DAR-UNet's choice).",
        rich_help_panel=RESULTS,
    ),
]
EmbeddingOpt = Annotated[
    str,
    typer.Option(help="2D embedding in styles.png: tsne or pca.", rich_help_panel=RESULTS),
]

translate_app = typer.Typer(no_args_is_help=False, rich_markup_mode="rich")


@translate_app.callback(invoke_without_command=True)
def _translate(
    ctx: typer.Context,
    translator: Annotated[
        Path | None,
        typer.Option(
            "--translator",
            "-t",
            help="Translate run folder: cluster its target styles (methods with style codes) "
            "and render the source in them.",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    work: Annotated[
        Path | None,
        typer.Option("--work", "-w", help="Workspace root.", rich_help_panel=RESULTS),
    ] = None,
    styles: Annotated[
        int | None,
        typer.Option(
            "--styles",
            "-k",
            min=1,
            help="K styles (default 5 for methods with style codes, 1 otherwise).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    pick: PickOpt = "nearest",
    embedding: EmbeddingOpt = "tsne",
    seed: SeedOpt = 0,
    batch_size: SlicesPerBatchOpt = 16,
    device: DeviceOpt = "auto",
    amp: AmpOpt = True,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Image-to-image translation: train a translator, render source scans in K target styles.

    `translate train` trains a translator on unpaired source and target slices; `translate
    apply` renders every source volume in K target styles (labels kept). Without a subcommand,
    udaseg translate --translator W/translate/RUN --styles 5 --work W runs `udaseg
    cluster-styles` then `udaseg translate apply` in one job (for job arrays: cluster-styles
    once, then `translate apply --shard i/n`).
    """
    if ctx.invoked_subcommand is not None:
        if translator is not None or work is not None or styles is not None:
            raise UdasegError(
                f"--translator/--work/--styles before `{ctx.invoked_subcommand}` belong to "
                "`udaseg translate` without a subcommand",
                hint=f"put the options after the subcommand: udaseg translate "
                f"{ctx.invoked_subcommand} --work W ...",
                exit_code=2,
            )
        return
    if translator is None or work is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0 if translator is None and work is None else 2)
    from udaseg.stages import cluster_styles, translate_apply
    from udaseg.translation.io import open_run

    styled = open_run(translator, force=force).has_style_codes
    result: dict[str, object] = {}
    style_run = None
    with _progress(as_json) as progress:
        if styled:
            config = cluster_styles.ClusterStylesConfig(
                translator=translator,
                styles=styles or 5,
                pick=pick,
                embedding=embedding,
                seed=seed,
                batch_size=batch_size,
                device=device,
                amp=amp,
            )
            clustered = cluster_styles.run(config, work, force=force, progress=progress)
            result["cluster-styles"] = clustered.summary
            style_run = Path(clustered.summary["output"])
        applied = translate_apply.run(
            translate_apply.TranslateApplyConfig(
                translator=translator,
                styles=styles,
                style_run=style_run,
                batch_size=batch_size,
                device=device,
                amp=amp,
            ),
            work,
            force=force,
            progress=progress,
        )
    result["translate-apply"] = applied.summary
    lines = [_styles_line(result["cluster-styles"])] if styled else []
    _emit(result, as_json, "\n".join([*lines, _apply_line(applied.summary)]))


def _styles_line(s: dict) -> str:
    state = " (up to date, skipped)" if s.get("skipped") else ""
    return (
        f"cluster-styles: {s['codes']} target style codes -> {s['styles']} styles, cluster "
        f"sizes {s['cluster_sizes']}{state} -> {s['output']}"
    )


def _apply_line(s: dict) -> str:
    state = (
        "up to date, skipped"
        if s.get("skipped")
        else f"{s['slices']} slices in {s['seconds']} s ({s['slices_per_second']} slices/s)"
    )
    return (
        f"translate apply: {s['cases']} source cases x {s['styles']} styles = {s['copies']} "
        f"copies, {state} -> {s['output']}"
    )


@translate_app.command("train")
def translate_train(
    method: Annotated[
        str,
        typer.Option(
            help="Registered translator: cyclegan.v1, attention-cyclegan.v1, disentangled.v1, "
            "domain-style.v1.",
            rich_help_panel=RESULTS,
        ),
    ],
    source: Annotated[
        Path,
        typer.Option(help="Preprocessed source store artifact.", rich_help_panel=RESULTS),
    ],
    target: Annotated[
        Path,
        typer.Option(
            help="Preprocessed target store artifact (labels never read).",
            rich_help_panel=RESULTS,
        ),
    ],
    work: WorkOpt,
    steps: Annotated[
        int | None,
        typer.Option(help="Training iterations (default: the paper's).", rich_help_panel=RESULTS),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Slices per domain per step.", rich_help_panel=RESULTS),
    ] = None,
    patch_size: Annotated[
        str | None, typer.Option(help="Slice crop, e.g. 256,256.", rich_help_panel=RESULTS)
    ] = None,
    lr_g: Annotated[
        float | None,
        typer.Option("--lr-g", help="Generator learning rate.", rich_help_panel=RESULTS),
    ] = None,
    lr_d: Annotated[
        float | None,
        typer.Option("--lr-d", help="Discriminator learning rate.", rich_help_panel=RESULTS),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            help="Learning-rate schedule of both optimisers: constant (the papers'), linear "
            "(constant for half the steps, then down to 0, as CycleGAN), cosine or poly.",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    method_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="Constructor argument key=value (repeatable), e.g. width=32 or a loss weight; "
            "wins over the recipe.",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    source_split: Annotated[
        str, typer.Option(help="Source cases to train on.", rich_help_panel=RESULTS)
    ] = "train",
    target_split: Annotated[
        str, typer.Option(help="Target cases to train on.", rich_help_panel=RESULTS)
    ] = "train",
    semantic_segmenter: Annotated[
        Path | None,
        typer.Option(
            help="Opt-in, beyond the papers (CycleGAN-family methods): a segment-train run on "
            "the source labels (best trained with --intensity-net) that must read translated "
            "slices as the originals; its weight lambda_semantic is 1 unless --method-arg sets "
            "it. Measured on the abdominal pair it kept shapes but not organ tones (README).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Random seed (CPU runs repeat exactly).", rich_help_panel=RESULTS)
    ] = 0,
    sample_every: Annotated[
        int,
        typer.Option(
            min=0,
            help="Steps between sample grids samples/step_N.png (0: only at the end).",
            rich_help_panel=RESULTS,
        ),
    ] = 500,
    checkpoint_every: Annotated[
        int, typer.Option(help="Steps between checkpoint_latest.pt.", rich_help_panel=RESULTS)
    ] = 200,
    name: Annotated[
        str | None,
        typer.Option(
            help="Run name (default METHOD__DATASET_SOURCEDOMAIN__to__TARGETDOMAIN).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    amp: AmpOpt = True,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue an interrupted run from its last checkpoint (step count, optimiser "
            "state and random generators).",
            rich_help_panel=RUNTIME,
        ),
    ] = False,
    log_every: Annotated[int, typer.Option(min=1, rich_help_panel=RUNTIME)] = 10,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train an image-to-image translator on random unpaired 2D slices of two stores.

    Example: udaseg translate train --method cyclegan.v1 --source W/preprocessed/mmwhs__mr
    --target W/preprocessed/mmwhs__ct --work W
    """
    from udaseg.stages import translate_train as stage

    recipe = {
        "steps": steps,
        "batch_size": batch_size,
        "patch_size": _ints(patch_size, "--patch-size"),
        "lr_g": lr_g,
        "lr_d": lr_d,
        "schedule": schedule,
    }
    config = stage.TranslateTrainConfig(
        method=method,
        source=source,
        target=target,
        name=name,
        method_kwargs=_parse_kv(method_arg, "--method-arg"),
        recipe={k: v for k, v in recipe.items() if v is not None},
        source_split=source_split,
        target_split=target_split,
        semantic_segmenter=semantic_segmenter,
        seed=seed,
        sample_every=sample_every,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        device=device,
        amp=amp,
        resume=resume,
    )
    with _progress(as_json) as progress:
        manifest = stage.run(config, work, force=force, progress=progress)
    s = manifest.summary
    losses = ", ".join(f"{k} {v:.4g}" for k, v in s.get("last_losses", {}).items())
    state = " (up to date, skipped)" if s.get("skipped") else f" in {s.get('seconds', 0)} s"
    _emit(
        s,
        as_json,
        f"{s['method']}: {s['steps']} steps{state}"
        + (f"; last losses {losses}" if losses else "")
        + f" -> {s['output']}",
    )


@translate_app.command("apply")
def translate_apply(
    translator: TranslatorOpt,
    work: WorkOpt,
    styles: Annotated[
        int | None,
        typer.Option(
            "--styles",
            "-k",
            min=1,
            help="K styles: the style run's count (checked when given); 1 (the default style) "
            "without --style-run.",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    style_run: Annotated[
        Path | None,
        typer.Option(
            help="A `udaseg cluster-styles` output folder of this translator (WORK/styles/RUN).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            help="Source store artifact to translate (default: the one the translator was "
            "trained on).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    checkpoint: Annotated[
        str, typer.Option(help="final or latest.", rich_help_panel=RESULTS)
    ] = "final",
    name: Annotated[
        str | None,
        typer.Option(
            help="Run name (default: the style run's name, or TRANSLATOR__k1).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Translate only every n-th source case from i (0-based), e.g. "
            "${SLURM_ARRAY_TASK_ID}/8, into NAME__shard-i-of-n: a complete store each (pass "
            "them all to segment-train --translated).",
            rich_help_panel=RUNTIME,
        ),
    ] = None,
    batch_size: SlicesPerBatchOpt = 16,
    device: DeviceOpt = "auto",
    amp: AmpOpt = True,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Render every source volume, slice by slice, in each of K target styles (labels copied).

    Example: udaseg translate apply --translator W/translate/RUN --style-run W/styles/RUN__k5
    --work W  (then: udaseg segment-train --train-on translated --translated W/translated/...)
    """
    from udaseg.stages import translate_apply as stage

    config = stage.TranslateApplyConfig(
        translator=translator,
        styles=styles,
        style_run=style_run,
        source=source,
        name=name,
        checkpoint=checkpoint,
        shard=_parse_shard(shard),
        batch_size=batch_size,
        device=device,
        amp=amp,
    )
    with _progress(as_json) as progress:
        manifest = stage.run(config, work, force=force, progress=progress)
    _emit(manifest.summary, as_json, _apply_line(manifest.summary))


app.add_typer(translate_app, name="translate", rich_help_panel="Stages")


@app.command("cluster-styles", rich_help_panel="Stages")
def cluster_styles(
    translator: TranslatorOpt,
    work: WorkOpt,
    styles: Annotated[
        int,
        typer.Option(
            "--styles", "-k", min=1, help="K clusters = styles kept.", rich_help_panel=RESULTS
        ),
    ] = 5,
    target: Annotated[
        Path | None,
        typer.Option(
            help="Target store artifact (default: the one the translator was trained on).",
            rich_help_panel=RESULTS,
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help="Target cases to encode: train, val, test or all.", rich_help_panel=RESULTS
        ),
    ] = "train",
    pick: PickOpt = "nearest",
    embedding: EmbeddingOpt = "tsne",
    seed: SeedOpt = 0,
    checkpoint: Annotated[
        str, typer.Option(help="final or latest.", rich_help_panel=RESULTS)
    ] = "final",
    name: Annotated[
        str | None,
        typer.Option(help="Run name (default TRANSLATOR__kK).", rich_help_panel=RESULTS),
    ] = None,
    batch_size: SlicesPerBatchOpt = 32,
    device: DeviceOpt = "auto",
    amp: AmpOpt = True,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """KMeans over target style codes -> K representative styles (methods with style codes).

    Encodes the middle two thirds of every target volume, clusters the codes (seeded KMeans) and
    keeps one code per cluster -> centroids.npy, codes.npy, members.json, styles.png.
    """
    from udaseg.stages import cluster_styles as stage

    config = stage.ClusterStylesConfig(
        translator=translator,
        styles=styles,
        target=target,
        split=split,
        pick=pick,
        embedding=embedding,
        seed=seed,
        checkpoint=checkpoint,
        name=name,
        batch_size=batch_size,
        device=device,
        amp=amp,
    )
    with _progress(as_json) as progress:
        manifest = stage.run(config, work, force=force, progress=progress)
    _emit(manifest.summary, as_json, _styles_line(manifest.summary))


def main() -> None:
    """Console-script entry point: run the app, turning UdasegError into a clean message."""
    try:
        app()
    except UdasegError as exc:
        _print_error(exc)
        sys.exit(exc.exit_code)


def _print_error(exc: UdasegError) -> None:
    from rich.console import Console
    from rich.text import Text

    text = Text("error: ", style="bold red")
    text.append(str(exc))
    Console(stderr=True).print(text)


if __name__ == "__main__":
    main()
