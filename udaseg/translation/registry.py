"""Image-to-image translators, registered by versioned name (``cyclegan.v1``, ...).

A translator is one ``torch.nn.Module`` holding all of its networks (generators, encoders,
discriminators, EMA copies, image pools as buffers), so a checkpoint's ``state_dict`` is the whole
method and the shared training loop (``udaseg.training.loop``) trains it like any model. It follows
this contract (images are (N, 1, H, W) float32 in the stores' normalised range [-1, 1]):

    method = create_translator(name, **kwargs)
    method.optimizers(hparams) -> dict[str, Optimizer]    # {"generator": .., "discriminator": ..}
    method.train_step(source, target, optimizers, autocast) -> dict[str, float]
        one iteration on an unpaired batch, all updates in the method's order; returns the
        losses for metrics.jsonl (each generator term, each discriminator loss, and "total").
        A method whose ``needs_source_labels`` attribute is true (CycleGAN-family translators
        with semantic consistency) also takes ``source_labels=`` (N, H, W) int64
    method.translate(source, style=None) -> (N, 1, H, W)         # source -> target appearance
    method.translate_back(target, style=None) -> (N, 1, H, W)    # target -> source appearance
    method.encode_style(images, domain="target") -> (N, style_dim)   # methods with style codes
        only; domain="source" gives source images' own codes (the style a cycle returns to)
    method.samples(source, target) -> dict[str, Tensor]          # panels for the PNG grids:
        at least "source", "translated", "reconstructed" (source -> target -> source), "target"

A one-way method (``cut.v1`` unless trained with ``bidirectional``) has a ``translates_back``
attribute that is false, and its ``translate_back`` raises a UdasegError naming the option that
adds the reverse direction; callers that need x_t->s read the attribute (absent: true) to refuse
early or skip the reverse direction.

``translate`` uses inference weights (EMA where the method keeps one) and no gradients when called
under ``torch.no_grad()``; ``style`` is (N, style_dim) or None for the method's default style
(the mean/learned target-domain style, or the only one for methods without codes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from udaseg.errors import UdasegError
from udaseg.registry import Registry, accepted_kwargs, first_doc_line


@dataclass(frozen=True)
class TranslatorSpec:
    """A registered translator: ``has_style_codes`` says whether cluster-styles applies;
    ``hparams`` holds the paper's training settings (lr_g, lr_d, betas, batch_size, patch_size,
    steps, loss weights); ``tiny`` constructor kwargs give a small variant for tests."""

    name: str
    builder: Callable[..., Any]
    has_style_codes: bool
    hparams: dict[str, Any]
    tiny: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _load_builtin() -> None:
    from udaseg.translation import cut, cyclegan, disentangled, domain_style  # noqa: F401


_REGISTRY: Registry[TranslatorSpec] = Registry("translation method", _load_builtin)


def register_translator(
    name: str,
    *,
    has_style_codes: bool,
    hparams: dict[str, Any],
    tiny: dict[str, Any] | None = None,
    description: str = "",
) -> Callable:
    return _REGISTRY.decorator(
        name,
        lambda builder: TranslatorSpec(
            name,
            builder,
            has_style_codes,
            dict(hparams),
            dict(tiny or {}),
            description or first_doc_line(builder),
        ),
    )


def translates_back(translator: Any) -> bool:
    """Whether ``translator`` renders target images in the source appearance: one-way
    translators say no with a ``translates_back`` attribute; the others all do."""
    return bool(getattr(translator, "translates_back", True))


def translator_spec(name: str) -> TranslatorSpec:
    return _REGISTRY.get(name)


def list_translators() -> list[str]:
    return _REGISTRY.names()


def create_translator(name: str, **kwargs: Any):
    """Build a registered translator: ``create_translator("cyclegan.v1", width=64)``."""
    return translator_spec(name).builder(**kwargs)


def require_style_codes(name: str) -> None:
    """Refuse style clustering for methods that have no style codes."""
    if not translator_spec(name).has_style_codes:
        styled = [n for n in list_translators() if _REGISTRY[n].has_style_codes]
        raise UdasegError(
            f"translation method {name} has no style codes, so there is nothing to cluster",
            hint=f"it renders one fixed style (K = 1); methods with style codes: "
            f"{', '.join(styled)}",
            exit_code=2,
        )


def constructor_kwargs(method: str, hparams: dict[str, Any], overrides: dict[str, Any]) -> dict:
    """Keyword arguments for the method's builder: every hparams key it takes (the loss weights,
    e.g. ``lambda_cycle``), then ``overrides`` (constructor arguments given with ``--set``),
    which win."""
    accepted = accepted_kwargs(translator_spec(method).builder)
    kwargs = {k: recorded_value(v) for k, v in hparams.items() if k in accepted}
    kwargs.update(overrides)
    return kwargs


def recorded_value(value: Any) -> Any:
    """``value`` as model.json and checkpoints give it back: tuples as lists (JSON has no tuples),
    so what a run records compares equal to what it reads later."""
    return list(value) if isinstance(value, tuple) else value
