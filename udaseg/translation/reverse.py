"""A two-way translator trained on domains A -> B, used the other way round (B -> A).

A CycleGAN-family translator learns both directions at once, so one run trained CT <-> MR serves
adaptation CT -> MR and MR -> CT alike; training a second one for the reverse direction doubles
the most expensive stage of a route for a network of the same kind. ``ReversedTranslator``
swaps the two directions of the contract in :mod:`udaseg.translation.registry`; the stages that
load a translator wrap it when their source is its target domain and their target its source.
"""

from __future__ import annotations

import torch
from torch import nn

from udaseg.errors import UdasegError
from udaseg.translation.registry import translates_back


class ReversedTranslator(nn.Module):
    """``translate`` is the wrapped translator's ``translate_back`` and the other way round.

    Images are (N, 1, H, W) in [-1, 1], as in the contract. Only the default style is offered:
    a style code of the wrapped translator describes its own target domain, which is this one's
    source, so passing one would silently render the wrong domain.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        if not translates_back(inner):
            raise UdasegError(
                f"{type(inner).__name__} was trained one-way, so it cannot translate from its "
                "target domain back to its source domain",
                hint="train the translator in this direction, or two-way (e.g. cut.v1 with "
                "`--set bidirectional=true`, or cyclegan.v1)",
                exit_code=2,
            )
        self.inner = inner

    def translate(self, source: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1, H, W) images of the wrapped translator's target domain -> its source's look."""
        self._refuse_style(style)
        return self.inner.translate_back(source)

    def translate_back(
        self, target: torch.Tensor, style: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, 1, H, W) images of the wrapped translator's source domain -> its target's look."""
        self._refuse_style(style)
        return self.inner.translate(target)

    def _refuse_style(self, style: torch.Tensor | None) -> None:
        if style is not None:
            raise UdasegError(
                "a reversed translator renders only its default style",
                hint="use a translator trained in this direction to render chosen styles",
                exit_code=2,
            )
