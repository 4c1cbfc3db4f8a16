"""Output-space adversarial adaptation: AdaptSegNet, ADVENT and AttENT.

- ``adaptsegnet.v1`` (Tsai et al., CVPR 2018): a fully-convolutional discriminator per output level
  tells source from target softmax maps; the segmenter learns to make target maps look like source
  ones. Multi-level: lambda_adv 1e-3 on the main head, 2e-4 on the auxiliary (conv4) head, and the
  auxiliary segmentation loss weighted 0.1.
- ``advent.v1`` (Vu et al., CVPR 2019): the same game on the weighted self-information maps
  ``-p log p / log C``, which pushes target predictions towards low entropy (confident) regions
  shaped like the source's; same weights.
- ``attent.v1`` (Li et al.): ADVENT on DeepLab-v2 trained on source slices translated by the
  attention-gated CycleGAN (``attention-cyclegan.v1``), i.e. image alignment then entropy
  alignment.

One iteration, in the papers' order: (1) with the discriminators frozen, the segmenter's loss is
the supervised loss on the labelled source plus, for each level, lambda times the adversarial loss
of its target map labelled "source"; (2) each discriminator learns source maps -> source (1) and
target maps -> target (0) on detached maps, BCE with logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from udaseg.adaptation.base import (
    AdaptBatch,
    AdaptContext,
    AdaptMethod,
    as_floats,
    entropy_map,
    freeze,
    levels,
    optimizer,
    scheduler,
    segmentation_criterion,
)
from udaseg.adaptation.registry import register_method
from udaseg.losses.gan import gan_loss
from udaseg.models.discriminators import FCDiscriminator
from udaseg.training import loop

# AdaptSegNet / ADVENT (DeepLab-v2): SGD lr 2.5e-4, momentum 0.9, weight decay 5e-4, poly 0.9;
# discriminators Adam 1e-4, betas (0.9, 0.99), the same poly decay; multi-level weights
# 1e-3 (main) and 2e-4 (aux), auxiliary segmentation loss 0.1; batch 1 at 512x1024 in the papers,
# slices of 256x256 here. 250k iterations at paper scale (120k for ADVENT): sized for slices.
OUTPUT_SPACE_HPARAMS = {
    "model": "deeplabv2.v1",
    "optimizer": "sgd",
    "lr": 2.5e-4,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "poly",
    "poly_power": 0.9,
    "d_optimizer": "adam",
    "d_lr": 1e-4,
    "d_betas": [0.9, 0.99],
    "d_schedule": "poly",
    "d_poly_power": 0.9,
    "gan_loss": "bce",
    "loss": "ce",
    "aux_weight": 0.1,
    "adv_weights": [1e-3, 2e-4],
    "d_width": 64,
    "batch_size": 4,
    "patch_size": [256, 256],
    "steps": 20000,
}


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=1)


def output_space_method(ctx: AdaptContext, transform: Callable) -> AdaptMethod:
    """Build the multi-level output-space game with ``transform`` (softmax or entropy maps)."""
    hparams = ctx.hparams
    model = ctx.segmenter()
    # as many levels as both the hparams and the segmenter have (unet2d.v1 has no aux head)
    weights = [float(w) for w in hparams["adv_weights"]][: ctx.output_levels(model)]
    discriminators = [
        ctx.network(FCDiscriminator(ctx.num_classes, int(hparams["d_width"]))) for _ in weights
    ]
    modules = {"model": model, **{f"d{i + 1}": d for i, d in enumerate(discriminators)}}
    optimizers = {"model": optimizer(model.parameters(), hparams)}
    for i, d in enumerate(discriminators):
        optimizers[f"d{i + 1}"] = optimizer(d.parameters(), hparams, "d_")
    schedulers = {
        name: scheduler(opt, hparams, "" if name == "model" else "d_")
        for name, opt in optimizers.items()
    }
    criterion = segmentation_criterion(ctx)
    kind = hparams["gan_loss"]

    def train_step(batch: AdaptBatch) -> dict[str, float]:
        model.train()
        # (1) segmenter: supervised source loss + fool each discriminator on target maps
        freeze(discriminators)
        with ctx.autocast():
            source_out = model(batch.source)
            target_out = model(batch.target)
        seg, parts = criterion(source_out, batch.labels)
        target_maps = [transform(x) for x in levels(target_out)[: len(weights)]]
        # the frozen discriminators run unwrapped: under DDP a wrapped module that produces no
        # gradients would leave its reducer waiting
        adv = [
            gan_loss(loop.unwrap(d)(m), True, kind)
            for d, m in zip(discriminators, target_maps, strict=True)
        ]
        total = seg + sum(w * a for w, a in zip(weights, adv, strict=True))
        optimizers["model"].zero_grad(set_to_none=True)
        total.backward()
        optimizers["model"].step()
        # (2) discriminators: source maps -> 1, target maps -> 0 (detached from the segmenter)
        freeze(discriminators, True)
        source_maps = [transform(x.detach()) for x in levels(source_out)[: len(weights)]]
        losses = {**parts, "total": total}
        for i, (d, s, t) in enumerate(zip(discriminators, source_maps, target_maps, strict=True)):
            d_loss = 0.5 * (gan_loss(d(s), True, kind) + gan_loss(d(t.detach()), False, kind))
            optimizers[f"d{i + 1}"].zero_grad(set_to_none=True)
            d_loss.backward()
            optimizers[f"d{i + 1}"].step()
            losses[f"adv{i + 1}"] = adv[i]
            losses[f"d{i + 1}"] = d_loss
        return as_floats(losses)

    return AdaptMethod(modules, optimizers, schedulers, train_step)


@register_method("adaptsegnet.v1", hparams=OUTPUT_SPACE_HPARAMS)
def adaptsegnet(ctx: AdaptContext) -> AdaptMethod:
    """AdaptSegNet: multi-level adversarial alignment of softmax outputs (1e-3 main, 2e-4 aux)."""
    return output_space_method(ctx, _softmax)


@register_method("advent.v1", hparams=OUTPUT_SPACE_HPARAMS)
def advent(ctx: AdaptContext) -> AdaptMethod:
    """ADVENT: multi-level adversarial alignment of normalised entropy maps -p log p / log C."""
    return output_space_method(ctx, entropy_map)


@register_method(
    "attent.v1",
    hparams=OUTPUT_SPACE_HPARAMS,
    source_translator="attention-cyclegan.v1",
)
def attent(ctx: AdaptContext) -> AdaptMethod:
    """AttENT: ADVENT on DeepLab-v2 over attention-CycleGAN-translated source slices."""
    return output_space_method(ctx, entropy_map)
