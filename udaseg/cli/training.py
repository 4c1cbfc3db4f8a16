"""``udaseg segment-train``, ``udaseg adapt`` and ``udaseg pseudo-label``: training segmenters."""

from __future__ import annotations

import typer

from udaseg.cli.common import stage_command, state


def register(app: typer.Typer) -> None:
    stage_command(
        app,
        "segment-train",
        _trained_line,
        help="Train a 2D/3D segmenter on source, target, translated or pseudo-labelled data "
        "(torchrun-aware); hyperparameters with --set key=value.",
        example="udaseg segment-train --model unet2d.v1 --train-on source "
        "--source W/preprocessed/mmwhs__mr --work W --set steps=800 --set patch_size=128,128",
    )
    stage_command(
        app,
        "adapt",
        _adapted_line,
        help="Adapt a segmenter to the target: SIFA, AdaptSegNet, ADVENT, AttENT, GLUA, BiGL "
        "(torchrun-aware). Writes a model directory that `udaseg predict` loads like any other.",
        example="udaseg adapt --method advent.v1 --source W/translated/ct-as-mr "
        "--target W/preprocessed/abdominal__mr --init W/segment/translation-only --work W "
        "--set steps=2000",
    )
    stage_command(
        app,
        "pseudo-label",
        _pseudo_line,
        help="Label the target's training cases with an adapted model, for self-training.",
        example="udaseg pseudo-label --model-dir W/adapt/bigl "
        "--target W/preprocessed/abdominal__ct --work W  (then: udaseg segment-train "
        "--train-on pseudo --pseudo W/pseudo/bigl__train --source W/preprocessed/abdominal__mr "
        "--work W)",
    )


def _trained_line(manifest) -> str:
    s = manifest.summary
    best = s.get("best") or {}
    return (
        f"{s.get('model')}: {s.get('steps')} steps"
        + (f", best validation Dice {best['score']:.3f} at step {best['step']}" if best else "")
        + (" (up to date, skipped)" if s.get("skipped") else "")
        + f" -> {s.get('output', '')}"
    )


def _adapted_line(manifest) -> str:
    s = manifest.summary
    last = (s.get("last_validation") or {}).get("score")
    return (
        f"{s.get('method')} ({s.get('model')}): {s.get('steps')} steps"
        + (f", target val Dice {last:.3f} (not used to select)" if last is not None else "")
        + (" (up to date, skipped)" if s.get("skipped") else "")
        + f" -> {s.get('output', '')}"
    )


def _pseudo_line(manifest) -> str:
    s = manifest.summary
    done = f"{s.get('cases')} cases, {100 * s.get('kept', 0):.1f}% of voxels labelled, "
    return f"pseudo-label {s['run']}: {state(s, done + str(s.get('seconds')) + ' s')}" + (
        f" -> {s['output']}"
    )
