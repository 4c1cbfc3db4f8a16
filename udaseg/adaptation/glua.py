"""GLUA's local alignment: ``glua.v1`` (Su et al., "Mind the Gap", Sec. III-B.2 and IV-A.1).

GLUA is two stages. The global alignment is the ``domain-style.v1`` translator (Sec. III-B.1); this
method is the second stage, trained on its target-like source slices x_s->t (the adapt stage passes
that store as the labelled source batch) and on real target slices x_t. The segmenter S is split
into a feature extractor S_E and a label predictor S_P, with two discriminators (Sec. III-B.2):

- D1, pixel-wise on the features f = S_E(x) (:class:`PixelDiscriminator`). Its uncertainty on a
  target feature vector is the local feature mask M, which re-weights the target features before
  S_P (Sec. III-A: "the target domain feature is reweighted"; source features are not masked);
- D2, on the predictions S(x) (:class:`FCDiscriminator` on softmax maps, as AdaptSegNet).

The split is the segmenter's own "features" map, reached without touching the model classes:
``deeplabv2.v1`` gets a forward hook on ``layer4`` (whose output feeds the ASPP classifier);
``unet2d.v1`` gets its ``transform_bottleneck`` hook wrapped on the instance (its output feeds the
decoder). Either is installed only for the masked target pass and removed right after, so the
weights are the plain model's and ``udaseg predict`` runs the plain forward: no mask at test time.
That is the path S_P was supervised on (L_seg is on unmasked source features); the mask only
decides how strongly each target position is aligned during training, and D1 is not part of S.

One iteration, in the objective's order (min over S_E, S_P, max over D1, D2; Sec. III-B.2):
(1) with D1 and D2 frozen, the segmenter minimises L_seg on x_s->t plus lambda_d1 times D1's
adversarial loss on the target features and lambda_d2 times D2's on the masked target prediction,
both against the "source" label; (2) D1 learns source features -> 1, target features -> 0 and
(3) D2 the same on softmax maps, on detached inputs. Labels follow the L_adv^{D2} equation
(log D2 on x_s->t, 1 - log D2 on x_t), i.e. BCE with source = 1, target = 0.

Gap in the paper text we have: the page with the synthesis losses, L_seg, L_adv^{D1} and the mask's
equation is lost between the S_E/S_P paragraph and the L_adv^{D2} equation. What survives
(Sec. III-A, III-B.2, IV-C.1) is that M comes from the *uncertainty* of the pixel-wise
discriminator on target features, and that a high-uncertainty region gets a high mask score
(Fig. 6: without style transfer "the discriminator tends to output high uncertainty in the
background and considers it as part of discriminative region, thus the vital segmentation target
obtains relative low scores"). We therefore take M as the normalised binary entropy of D1's
probability, H(sigmoid(D1(f_t))) / log 2 in [0, 1] (1 where D1 says 0.5), and re-weight
residually, f_t * (1 + M), as transferable-attention methods do, so that a confident D1 never
zeroes a target feature; ``mask_mode="product"`` (f_t * M) is the other reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from udaseg.adaptation.base import (
    AdaptBatch,
    AdaptContext,
    AdaptMethod,
    as_floats,
    freeze,
    optimizer,
    scheduler,
    segmentation_criterion,
)
from udaseg.adaptation.registry import register_method
from udaseg.errors import UdasegError, look_up_option
from udaseg.losses.gan import gan_loss
from udaseg.models.discriminators import FCDiscriminator, PixelDiscriminator
from udaseg.training import loop

MASK_MODES = ("residual", "product")

# GLUA Sec. IV-A.1: SGD for S (momentum 0.9, weight decay 5e-4), Adam (0.9, 0.99) for D1 and D2,
# polynomial decay with power 0.9, lambda_d1 = lambda_d2 = 0.01, everything trained from scratch,
# DeepLab-ResNet50 (Sec. III-B.2). The learning rates, batch size and length were "tuned
# empirically in each task" and are not given: ADVENT's 2.5e-4 (S) and 1e-4 (D), with the
# project's DeepLab batch of 8 and 20k steps. Slices are 256x256 (cardiac; 512x512 abdominal).
# L_seg is not spelled out: CE, with DeepLab's conv4 head at 0.1 as the project's DeepLab hparams.
# model_kwargs: constructor defaults per segmenter, for the adapt stage to merge under the user's.
GLUA_HPARAMS = {
    "model": "deeplabv2.v1",
    "model_kwargs": {"deeplabv2.v1": {"depth": 50}},
    "optimizer": "sgd",
    "lr": 2.5e-4,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "poly",
    "poly_power": 0.9,
    "d_optimizer": "adam",
    "d_lr": 1e-4,
    "d_betas": [0.9, 0.99],
    "d_weight_decay": 0.0,
    "d_schedule": "poly",
    "d_poly_power": 0.9,
    "gan_loss": "bce",
    "loss": "ce",
    "aux_weight": 0.1,
    "lambda_d1": 0.01,
    "lambda_d2": 0.01,
    "d1_width": 256,
    "d2_width": 64,
    "mask_mode": "residual",
    "batch_size": 8,
    "patch_size": [256, 256],
    "steps": 20000,
}


def uncertainty_mask(d1_logits: torch.Tensor) -> torch.Tensor:
    """The local feature mask: D1's uncertainty per position, H(p) / log 2 with p = sigmoid(logit).

    (N, 1, h, w) logits -> (N, 1, h, w) float32 in [0, 1]: 1 where D1 outputs 0.5, towards 0 where
    it is sure of the domain. Computed from the logits, H = softplus(z) - p z, so it stays exact for
    large |z|.
    """
    z = d1_logits.float()
    entropy = F.softplus(z) - torch.sigmoid(z) * z
    return (entropy / math.log(2.0)).clamp(0.0, 1.0)


def apply_mask(features: torch.Tensor, mask: torch.Tensor, mode: str = "residual") -> torch.Tensor:
    """Re-weight (N, C, h, w) features by an (N, 1, h, w) mask: ``residual`` f * (1 + M) or
    ``product`` f * M."""
    weight = mask.to(features.dtype)
    return features * (1.0 + weight) if mode == "residual" else features * weight


def feature_site(model: nn.Module) -> str:
    """Where the segmenter's "features" map comes from: ``"transform_bottleneck"`` (U-Nets) or
    ``"layer4"`` (DeepLab-v2).

    Raises:
        UdasegError: the model has neither, so GLUA cannot split it into S_E and S_P.
    """
    net = loop.unwrap(model)
    if callable(getattr(net, "transform_bottleneck", None)):
        return "transform_bottleneck"
    if isinstance(getattr(net, "layer4", None), nn.Module):
        return "layer4"
    raise UdasegError(
        f"glua.v1 cannot find the feature map of {type(net).__name__} to mask",
        hint="train glua.v1 with --model deeplabv2.v1 or --model unet2d.v1",
        exit_code=2,
    )


@contextmanager
def reweighted_features(
    model: nn.Module, reweight: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Within the block, ``model``'s "features" map passes through ``reweight`` before the
    predictor (and is returned re-weighted as "features"). Outside it the model is untouched."""
    net = loop.unwrap(model)
    if feature_site(net) == "transform_bottleneck":
        original = net.transform_bottleneck

        def wrapped(x: torch.Tensor) -> tuple[torch.Tensor, dict]:
            x, extra = original(x)
            return reweight(x), extra

        net.transform_bottleneck = wrapped  # an instance attribute shadowing the method
        try:
            yield
        finally:
            del net.transform_bottleneck
    else:
        handle = net.layer4.register_forward_hook(lambda _module, _args, out: reweight(out))
        try:
            yield
        finally:
            handle.remove()


@dataclass
class MaskedPass:
    """One masked target pass: ``out`` the model's outputs (logits from the re-weighted features),
    ``features`` f_t before the mask (N, C, h, w), ``d1_logits`` D1 on f_t (N, 1, h, w), with the
    graph back to S_E for the adversarial term, and ``mask`` (N, 1, h, w) float32 in [0, 1],
    detached: it weights the features, it is not a path for S_E to move D1's uncertainty."""

    out: dict
    features: torch.Tensor
    d1_logits: torch.Tensor
    mask: torch.Tensor


def masked_forward(
    model: nn.Module, d1: nn.Module, x: torch.Tensor, mode: str = "residual"
) -> MaskedPass:
    """The segmenter on (N, 1, H, W) target slices with the local feature mask between S_E and
    S_P (Sec. III-A: the target features are re-weighted before the label predictor)."""
    seen: dict[str, torch.Tensor] = {}

    def reweight(features: torch.Tensor) -> torch.Tensor:
        seen["features"] = features
        seen["d1_logits"] = d1(features)
        seen["mask"] = uncertainty_mask(seen["d1_logits"]).detach()
        return apply_mask(features, seen["mask"], mode)

    with reweighted_features(model, reweight):
        out = model(x)
    return MaskedPass(out, seen["features"], seen["d1_logits"], seen["mask"])


def save_feature_masks(directory: Path, images: torch.Tensor, masks: torch.Tensor) -> None:
    """Write ``feature_masks.npy`` ((N, h, w) float32 in [0, 1], at the feature resolution) and
    ``feature_masks.png``: the (N, 1, H, W) target slices above their masks, upsampled to the slice
    size and drawn on the slices' grey window (white = D1 uncertain)."""
    from udaseg.translation.io import display_window, save_grid

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "feature_masks.npy", masks[:, 0].float().cpu().numpy())
    slices = images[:, 0].float().cpu().numpy()
    upsampled = F.interpolate(
        masks.float().cpu(), size=images.shape[2:], mode="bilinear", align_corners=False
    )
    low, high = display_window([slices])
    drawn = low + upsampled[:, 0].clamp(0, 1).numpy() * (high - low)
    save_grid(
        directory / "feature_masks.png",
        [("target", slices), ("mask", drawn)],
        title="GLUA feature mask (white = 1)",
        window=(low, high),
    )


@register_method(
    "glua.v1",
    hparams=GLUA_HPARAMS,
    source_translator="domain-style.v1",
    models=("deeplabv2.v1", "unet2d.v1"),
)
def glua(ctx: AdaptContext) -> AdaptMethod:
    """GLUA: D1 on features gives the local feature mask for target features, D2 on outputs."""
    hparams = ctx.hparams
    mode = look_up_option(hparams["mask_mode"], MASK_MODES, what="GLUA mask mode")
    model = ctx.segmenter()
    feature_site(model)  # fail now, not at the first step, on a model GLUA cannot split
    channels = _feature_channels(model, int(ctx.model_kwargs.get("in_channels", 1)))
    d1 = ctx.network(PixelDiscriminator(channels, int(hparams["d1_width"])))
    d2 = ctx.network(FCDiscriminator(ctx.num_classes, int(hparams["d2_width"])))
    modules = {"model": model, "d1": d1, "d2": d2}
    optimizers = {
        "model": optimizer(model.parameters(), hparams),
        "d1": optimizer(d1.parameters(), hparams, "d_"),
        "d2": optimizer(d2.parameters(), hparams, "d_"),
    }
    schedulers = {
        name: scheduler(opt, hparams, "" if name == "model" else "d_")
        for name, opt in optimizers.items()
    }
    criterion = segmentation_criterion(ctx)
    kind = hparams["gan_loss"]
    lambda_d1, lambda_d2 = float(hparams["lambda_d1"]), float(hparams["lambda_d2"])
    # the frozen discriminators of the segmenter's update run unwrapped: under DDP a wrapped
    # forward would wait for gradients of parameters that get none
    frozen_d1, frozen_d2 = loop.unwrap(d1), loop.unwrap(d2)

    def train_step(batch: AdaptBatch) -> dict[str, float]:
        model.train()
        # (1) segmenter: L_seg on x_s->t + lambda_d1 L_adv^D1 + lambda_d2 L_adv^D2 (Sec. III-B.2)
        freeze([d1, d2])
        with ctx.autocast():
            source_out = model(batch.source)
            target = masked_forward(model, frozen_d1, batch.target, mode)
        seg, parts = criterion(source_out, batch.labels)
        source_probs = torch.softmax(source_out["logits"].float(), dim=1)
        target_probs = torch.softmax(target.out["logits"].float(), dim=1)
        adv1 = gan_loss(target.d1_logits, True, kind)
        adv2 = gan_loss(frozen_d2(target_probs), True, kind)
        total = seg + lambda_d1 * adv1 + lambda_d2 * adv2
        optimizers["model"].zero_grad(set_to_none=True)
        total.backward()
        optimizers["model"].step()
        # (2) D1 on unmasked features and (3) D2 on predictions: source -> 1, target -> 0
        freeze([d1, d2], True)
        with ctx.autocast():
            d1_loss = 0.5 * (
                gan_loss(d1(source_out["features"].detach()), True, kind)
                + gan_loss(d1(target.features.detach()), False, kind)
            )
        d2_loss = 0.5 * (
            gan_loss(d2(source_probs.detach()), True, kind)
            + gan_loss(d2(target_probs.detach()), False, kind)
        )
        for name, loss in (("d1", d1_loss), ("d2", d2_loss)):
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
        losses = {
            **parts,
            "total": total,
            "adv1": adv1,
            "adv2": adv2,
            "d1": d1_loss,
            "d2": d2_loss,
            "mask_mean": target.mask.mean(),
        }
        return as_floats(losses)

    def extras(directory: Path, batch: AdaptBatch) -> None:
        """Save the target masks of ``batch`` (eval mode, no gradients) for inspection."""
        was_training = model.training
        model.eval()
        with torch.no_grad(), ctx.autocast():
            mask = masked_forward(model, frozen_d1, batch.target, mode).mask
        model.train(was_training)
        save_feature_masks(directory, batch.target, mask)

    return AdaptMethod(modules, optimizers, schedulers, train_step, extras)


def _feature_channels(model: nn.Module, in_channels: int) -> int:
    """Channels of the segmenter's "features" map (D1's input), probed on a 64x64 zero slice in
    eval mode (no batch-norm statistics move; the mode is restored)."""
    net = loop.unwrap(model)
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    with torch.no_grad():
        out = net(torch.zeros(1, in_channels, 64, 64, device=device))
    net.train(was_training)
    return int(out["features"].shape[1])
