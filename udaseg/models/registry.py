"""The model registry: every network udaseg trains is built by name.

Names are versioned (``unet2d.v1``): a change that alters a model's weights layout or behaviour gets
a new version, so a checkpoint always rebuilds the network it was trained with. A checkpoint stores
the name and the constructor arguments, never relying on the code's defaults.

Forward contract shared by all segmenters (so training, adaptation and inference treat them alike)::

    model(x) -> dict
        "logits":   (N, C, H, W) or (N, C, D, H, W) float, at the input's spatial size
        "aux":      list of extra logits of the same shape (deep-supervision heads, e.g. SIFA's C2,
                    DeepLab's conv4 classifier, DAR-UNet's per-level heads); [] if none
        "features": the feature map the adaptation methods align (e.g. the encoder output)

    x: (N, in_channels, H, W) for 2D models, (N, in_channels, D, H, W) for 3D, float32 in the
    store's normalised intensity range; C = num_classes including background.

Constructor signature: ``builder(in_channels: int, num_classes: int, **architecture_kwargs)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from udaseg.registry import Registry, accepted_kwargs, first_doc_line


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    dims: 2 (slice-wise) or 3 (volumetric). hparams: the training defaults its paper used
    (optimiser, learning rate, schedule, loss, batch size, patch size), overridable with --set.
    tiny: constructor kwargs of a small variant for tests.
    """

    name: str
    builder: Callable[..., Any]
    dims: int
    hparams: dict[str, Any]
    tiny: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _load_builtin() -> None:
    # importing the modules runs their @register_model decorators
    from udaseg.models import darunet, deeplab, sifa, unet  # noqa: F401


_REGISTRY: Registry[ModelSpec] = Registry("model", _load_builtin)


def register_model(
    name: str,
    *,
    dims: int,
    hparams: dict[str, Any],
    tiny: dict[str, Any] | None = None,
    description: str = "",
) -> Callable:
    """Decorator registering a model builder (a class or a function) under ``name``."""

    return _REGISTRY.decorator(
        name,
        lambda builder: ModelSpec(
            name,
            builder,
            dims,
            dict(hparams),
            dict(tiny or {}),
            description or first_doc_line(builder),
        ),
    )


def model_spec(name: str) -> ModelSpec:
    """The spec of a registered model; unknown names raise with 'did you mean'."""
    return _REGISTRY.get(name)


def list_models() -> list[str]:
    return _REGISTRY.names()


def model_keywords(name: str) -> set[str]:
    """The architecture arguments a registered model takes (``--set`` may give them), without
    ``in_channels`` and ``num_classes``, which come from the data."""
    return accepted_kwargs(model_spec(name).builder) - {"in_channels", "num_classes"}


def create_model(name: str, in_channels: int = 1, num_classes: int = 2, **kwargs: Any):
    """Build a registered model: ``create_model("unet2d.v1", in_channels=1, num_classes=5)``.

    Raises:
        UdasegError: an argument the model does not take (naming the ones it does).
    """
    import inspect

    builder = model_spec(name).builder
    accepted = inspect.signature(builder).parameters
    unknown = [key for key in kwargs if key not in accepted]
    if unknown:
        from udaseg.errors import UdasegError

        raise UdasegError(
            f"model {name} takes no argument {', '.join(unknown)}",
            hint=f"its arguments: {', '.join(k for k in accepted if k != 'self')}",
            exit_code=2,
        )
    return builder(in_channels=in_channels, num_classes=num_classes, **kwargs)
