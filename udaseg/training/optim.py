"""Optimisers and learning-rate schedules, built from a model's hparams (overridable per run).

Hparams keys used here: ``optimizer`` (adam | adamw | sgd), ``lr``, ``betas``, ``momentum``,
``weight_decay``, ``schedule`` (constant | cosine | poly | linear), ``poly_power``,
``decay_from``, ``warmup_steps``.
The schedules step once per optimiser step (not per epoch), so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from udaseg.config.values import OPTIMIZERS, SCHEDULES
from udaseg.errors import look_up_option


def build_optimizer(params: Iterable[torch.nn.Parameter], hparams: dict[str, Any]):
    """The hparams' optimiser over ``params``."""
    name = look_up_option(hparams.get("optimizer", "adam"), OPTIMIZERS, what="optimizer")
    lr = float(hparams["lr"])
    weight_decay = float(hparams.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=float(hparams.get("momentum", 0.9)), weight_decay=weight_decay
        )
    betas = tuple(float(b) for b in hparams.get("betas", (0.9, 0.999)))
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=betas, weight_decay=weight_decay)


def lr_factor(step: int, total: int, hparams: dict[str, Any]) -> float:
    """Multiplier of the base learning rate after ``step`` of ``total`` optimiser steps.

    constant: 1; cosine: half a cosine from 1 to 0; poly: (1 - step / total) ** poly_power (the
    DeepLab/ADVENT schedule); linear: 1 until the fraction ``decay_from`` (0.5) of the steps, then
    a straight line to 0 (CycleGAN's 100 constant + 100 decaying epochs). An optional linear
    warm-up over ``warmup_steps`` comes first.
    """
    schedule = look_up_option(hparams.get("schedule", "constant"), SCHEDULES, what="schedule")
    warmup = int(hparams.get("warmup_steps", 0))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1.0 - progress) ** float(hparams.get("poly_power", 0.9))
    if schedule == "linear":
        start = float(hparams.get("decay_from", 0.5))
        return 1.0 if progress <= start else (1.0 - progress) / (1.0 - start)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, hparams: dict[str, Any], total_steps: int):
    """A LambdaLR following :func:`lr_factor` (its state_dict goes into checkpoints)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, hparams)
    )
