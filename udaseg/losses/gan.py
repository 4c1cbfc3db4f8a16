"""Adversarial losses, in one place for every method that trains a discriminator.

``gan_loss(prediction, real, kind)`` scores a discriminator's output map against the "real" or
"fake" target: ``lsgan`` (least squares, CycleGAN/SIFA/DAR-UNet) or ``bce`` (with logits,
AdaptSegNet/ADVENT). Targets are constants broadcast over the map, so it works for patch maps
(N, 1, h, w), pixel-wise maps and lists of maps from multi-scale discriminators (averaged).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from udaseg.errors import look_up_option

GAN_LOSSES = ("lsgan", "bce")


def gan_loss(
    prediction: torch.Tensor | Sequence[torch.Tensor], real: bool | float, kind: str = "lsgan"
) -> torch.Tensor:
    """Adversarial loss of ``prediction`` against a constant target.

    Args:
        prediction: discriminator output(s), any shape; a list (multi-scale) is averaged.
        real: True/False for the real/fake label, or a float for a soft label.
        kind: ``lsgan`` (mean squared error to the label) or ``bce`` (binary cross-entropy on
            logits).

    Returns:
        A scalar float32 tensor (computed in float32 under autocast).
    """
    look_up_option(kind, GAN_LOSSES, what="GAN loss")
    if isinstance(prediction, list | tuple):
        return torch.stack([gan_loss(p, real, kind) for p in prediction]).mean()
    prediction = prediction.float()
    target = torch.full_like(prediction, float(real))
    if kind == "lsgan":
        return F.mse_loss(prediction, target)
    return F.binary_cross_entropy_with_logits(prediction, target)


def discriminator_loss(real_out, fake_out, kind: str = "lsgan") -> torch.Tensor:
    """Discriminator objective: real outputs to 1, fake outputs to 0, averaged (the 0.5 factor
    CycleGAN uses to slow the discriminator relative to the generator)."""
    return 0.5 * (gan_loss(real_out, True, kind) + gan_loss(fake_out, False, kind))


def set_requires_grad(modules, flag: bool) -> None:
    """Freeze (False) or unfreeze networks, e.g. the discriminator during a generator update."""
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(flag)
