"""What every adaptation method is built from, and the pieces they share.

The ``adapt`` stage builds a method with an :class:`AdaptContext` and calls
``method.train_step(batch)`` once per iteration with an :class:`AdaptBatch`. A method exposes its
networks, optimisers and schedulers as dicts so the shared loop can checkpoint and resume them;
``modules["model"]`` is the segmenter that ``udaseg predict`` loads (its forward follows the model
registry's contract: a dict with "logits", "aux" and "features").

Images are (N, 1, H, W) float32 in the stores' normalised range; labels (N, H, W) int64 class ids
(0 = background). Target batches carry no labels: adaptation never sees target annotations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from udaseg.training import loop


@dataclass
class AdaptContext:
    """What a method builder gets.

    model / model_kwargs: the registered segmenter to train and its constructor kwargs
    (in_channels and num_classes included); hparams: the method's resolved hparams;
    translator: a frozen translate-train model for methods that translate online (else None);
    generator: a CPU torch.Generator for the method's own randomness (saved with checkpoints).
    """

    model: str
    model_kwargs: dict[str, Any]
    num_classes: int
    hparams: dict[str, Any]
    runtime: loop.Runtime
    generator: torch.Generator
    translator: nn.Module | None = None

    def segmenter(self) -> nn.Module:
        """A fresh segmenter on the runtime's device (DDP-wrapped under torchrun)."""
        from udaseg.models.registry import create_model, model_spec

        model = create_model(self.model, **self.model_kwargs)
        return loop.prepare_model(model, self.runtime, model_spec(self.model).dims)

    def output_levels(self, model: nn.Module) -> int:
        """How many outputs (main + aux heads) ``model`` has, probed on a small input in eval
        mode (so no batch-norm statistics move; the mode is restored)."""
        model = loop.unwrap(model)
        was_training = model.training
        size = [64] * len(self.hparams["patch_size"])
        x = torch.zeros(
            1, self.model_kwargs.get("in_channels", 1), *size, device=self.runtime.device
        )
        with torch.no_grad():
            out = model.eval()(x)
        model.train(was_training)
        return 1 + len(out.get("aux", []))

    def network(self, module: nn.Module) -> nn.Module:
        """Put an auxiliary network (discriminator, generator) on the device like the model."""
        return loop.prepare_model(module, self.runtime, 2)

    def autocast(self):
        return loop.autocast(self.runtime)


@dataclass
class AdaptBatch:
    """One iteration's data: labelled source (or translated source) and unlabelled target.

    original_source: the source images before intensity re-rendering (``--intensity-net``), or
    None when they were not re-rendered. The segmenter trains on ``source``; a method that
    translates the source images online translates ``plain_source``, the images its translator
    was trained on.
    """

    source: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor
    original_source: torch.Tensor | None = None

    @property
    def plain_source(self) -> torch.Tensor:
        return self.source if self.original_source is None else self.original_source


@dataclass
class AdaptMethod:
    """A built method: its networks, optimisers and schedulers by name, and its step.

    ``train_step(batch) -> dict[str, float]`` runs one iteration (every update, in the method's
    order) and returns the losses for metrics.jsonl, including "total" (the segmenter's
    objective) and each discriminator's loss. ``extras(directory, batch)`` may write method
    outputs for inspection at the end of training (GLUA's feature masks).
    """

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    train_step: Callable[[AdaptBatch], dict[str, float]]
    extras: Callable[[Path, AdaptBatch], None] | None = None


def optimizer(params: Iterable[nn.Parameter], hparams: dict[str, Any], prefix: str = ""):
    """The optimiser described by ``hparams``'s keys with ``prefix`` (``""`` for the segmenter,
    ``"d_"`` for discriminators, ``"g_"`` for generators)."""
    from udaseg.training.optim import build_optimizer

    return build_optimizer(params, _prefixed(hparams, prefix))


def scheduler(opt: torch.optim.Optimizer, hparams: dict[str, Any], prefix: str = ""):
    from udaseg.training.optim import build_scheduler

    return build_scheduler(opt, _prefixed(hparams, prefix), int(hparams["steps"]))


def _prefixed(hparams: dict[str, Any], prefix: str) -> dict[str, Any]:
    keys = ("optimizer", "lr", "betas", "momentum", "weight_decay", "schedule", "poly_power")
    out = {key: hparams[prefix + key] for key in keys if prefix + key in hparams}
    out.setdefault("lr", hparams["lr"])
    return out


def segmentation_criterion(ctx: AdaptContext):
    """The hparams' supervised loss on source labels (main logits + weighted aux heads)."""
    from udaseg.losses import create_loss

    return create_loss(
        ctx.hparams["loss"], ctx.num_classes, aux_weight=float(ctx.hparams.get("aux_weight", 0.0))
    )


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """ADVENT's weighted self-information: -p log p / log C per class, (N, C, H, W) in [0, 1]
    summed over classes; computed in float32."""
    p = torch.softmax(logits.float(), dim=1)
    return -p * torch.log(p + 1e-30) / math.log(logits.shape[1])


def levels(outputs: dict[str, Any]) -> list[torch.Tensor]:
    """Main logits first, then the aux heads: the levels multi-level methods align."""
    return [outputs["logits"], *outputs.get("aux", [])]


def freeze(modules: Iterable[nn.Module], flag: bool = False) -> None:
    from udaseg.losses.gan import set_requires_grad

    set_requires_grad(list(modules), flag)


def as_floats(losses: dict[str, torch.Tensor | float]) -> dict[str, float]:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in losses.items()}


def check_finite(losses: dict[str, float], step_name: str) -> None:
    """Stop with a clear error instead of training on NaN weights."""
    from udaseg.errors import UdasegError

    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        raise UdasegError(
            f"{step_name}: loss {', '.join(bad)} is not finite",
            hint="lower the learning rate (--set lr=...) or check the input stores for empty "
            "or constant slices",
        )
