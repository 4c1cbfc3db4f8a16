"""Adaptation methods, registered by versioned name (``advent.v1``, ``sifa.v1``, ...).

A method is its hparams plus a builder: ``builder(ctx: AdaptContext) -> AdaptMethod`` creates its
networks (the segmenter, discriminators, generators), their optimisers and schedulers, and a
``train_step`` doing one iteration of its losses in its paper's order. The ``adapt`` stage does the
rest the same way for every method: sampling, augmentation, the shared loop (checkpoints, resume,
seeds, metrics.jsonl, validation), and the model directory that ``udaseg predict`` loads.

Hparams keys every method has: ``model`` (default segmenter), ``steps``, ``batch_size``,
``patch_size``, ``loss``, ``aux_weight``, the segmenter's optimiser (``optimizer``, ``lr``,
``betas``, ``momentum``, ``weight_decay``, ``schedule``, ``poly_power``) and the discriminators'
(the same keys with a ``d_`` prefix); the rest are the method's loss weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from udaseg.registry import Registry, first_doc_line


@dataclass(frozen=True)
class MethodSpec:
    """A registered adaptation method.

    hparams: its paper's settings (see the module docstring). source_translator: the translation
    method whose translated store the paper trains on (``attent.v1`` uses
    attention-cyclegan.v1, ``glua.v1`` domain-style.v1); the stage warns when the source store was
    made otherwise. needs_translator: the method translates online with a frozen translate-train
    run (``--translator``). models: the segmenters it can train (None: any 2D model).
    rerenders_source: whether ``--intensity-net`` applies (False for SIFA, whose own generator
    translates the source images and would learn from random contrasts instead).
    """

    name: str
    builder: Callable[..., Any]
    hparams: dict[str, Any]
    source_translator: str | None = None
    needs_translator: bool = False
    models: tuple[str, ...] | None = None
    description: str = ""
    rerenders_source: bool = True


def _load_builtin() -> None:
    from udaseg.adaptation import bigl, glua, output_space, sifa  # noqa: F401


_REGISTRY: Registry[MethodSpec] = Registry("adaptation method", _load_builtin)


def register_method(
    name: str,
    *,
    hparams: dict[str, Any],
    source_translator: str | None = None,
    needs_translator: bool = False,
    models: tuple[str, ...] | None = None,
    description: str = "",
    rerenders_source: bool = True,
) -> Callable:
    """Decorator registering a method builder under ``name``."""

    return _REGISTRY.decorator(
        name,
        lambda builder: MethodSpec(
            name,
            builder,
            dict(hparams),
            source_translator,
            needs_translator,
            models,
            description or first_doc_line(builder),
            rerenders_source,
        ),
    )


def method_spec(name: str) -> MethodSpec:
    """The spec of a registered method; unknown names raise with 'did you mean'."""
    return _REGISTRY.get(name)


def list_methods() -> list[str]:
    return _REGISTRY.names()


# hparams keys every method has, with the value used when a method's hparams leaves one out
COMMON_DEFAULTS: dict[str, Any] = {
    "loss": "ce_dice",
    "aux_weight": 0.0,
    "schedule": "constant",
    "poly_power": 0.9,
    "weight_decay": 0.0,
    "d_optimizer": "adam",
    "d_betas": [0.9, 0.99],
    "d_schedule": "constant",
    "d_poly_power": 0.9,
    "d_weight_decay": 0.0,
    "gan_loss": "bce",
}
