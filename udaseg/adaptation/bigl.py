"""BiGL: bidirectional global-to-local adaptation (He et al., ``bigl.v1``).

A frozen translate-train model makes two synthetic images per iteration, x_s->t from the source
slice and x_t->s from the target slice (Sec. 3.2; Sec. 3.6 trains the synthesis first and then
fixes it). One dual-attention U-Net (Sec. 3.3) segments all four images, run as four separate
forwards with shared weights as in Sec. 3.1, so batch-norm statistics stay per image set. Its
objective is Eq. (10) without the synthesis terms (the translator is frozen):

    L_seg(x_s) + L_seg(x_s->t)                        Eq. (4): CE + generalised Dice, source labels
    + lambda_cons * L_consis^output(x_t, x_t->s)      Eq. (5)
    + lambda_gtl * (L_consis^Feat + L_consis^Pos + L_consis^Cha)    Eqs. (6), (8)

"Within each domain" (Eqs. 6-9) means one discriminator per appearance domain for each aligned
representation; it tells the labelled image of its domain (real) from the unlabelled one (fake):

    D_s: x_s (real)    vs x_t->s (fake)     source appearance
    D_t: x_s->t (real) vs x_t (fake)        target appearance

The representations are the post-attention bottleneck features xi (Eqs. 8-9) and the position and
channel attention masks (Eqs. 6-7, Att = {Position, Channel}), so six discriminators. The segmenter
makes the unlabelled images pass as labelled ones (x_t->s to D_s, x_t to D_t; the consistency
terms of Eqs. 6 and 8); the discriminators learn Eqs. (7) and (9). The paper's Eq. (10) also adds
L_adv to the total; it is the discriminators' side of the same game, trained in their own step.
One iteration updates the segmenter, then the discriminators (Sec. 3.6: "sequentially").

Choices the paper leaves open, made here:
- Eq. (5) is written as -||Phi(x_t) - Phi(x_t->s)||_2; the minus sign cannot be meant (it would
  push the two predictions apart). We use the squared distance between the softmax maps, summed
  over classes and averaged over pixels; the unsquared norm has no gradient where the two agree.
- The discriminator architecture is not given; :class:`SmallMapDiscriminator` (3x3 stride-2
  convolutions) takes every map size BiGL aligns, down to the 4x4 bottleneck of small patches.
- Attention masks are fed as one-channel images (N, 1, n, n) scaled by n, so a uniform row reads
  1 whatever n; raw rows of 256 positions hold values near 1/256.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
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
from udaseg.errors import UdasegError
from udaseg.losses.gan import gan_loss
from udaseg.models.discriminators import SmallMapDiscriminator
from udaseg.models.unet import BIGL_HPARAMS
from udaseg.training.loop import unwrap
from udaseg.translation.registry import translates_back

# The segmenter trains as dual-attention-unet.v1's own segment-train settings (BIGL_HPARAMS,
# Sec. 3.6: lr 5e-3 with poly decay of power 0.75, CE + generalised Dice; SGD with momentum and
# weight decay, batch 8 and 50k steps are our stand-ins there). Here: discriminators lr 5e-5
# without decay; Eq. (10) / Sec. 3.6: lambda_out (here lambda_cons) 0.001, lambda_gtl 0.1 for the
# feature, position and channel terms alike. Not given, our choices: Adam with betas (0.9, 0.99)
# for the discriminators (AdaptSegNet's), BCE for the log-likelihood GAN terms as written,
# 256x256 slices (BraTS slices are 240x240; 256 keeps a whole 16x16 bottleneck).
BIGL_ADAPT_HPARAMS = {
    **BIGL_HPARAMS,
    "model": "dual-attention-unet.v1",
    "d_optimizer": "adam",
    "d_lr": 5e-5,
    "d_betas": [0.9, 0.99],
    "d_schedule": "constant",
    "gan_loss": "bce",
    "lambda_cons": 1e-3,
    "lambda_gtl": 0.1,
    "d_width": 64,
    "patch_size": [256, 256],
}

# aligned representations: post-attention features, position and channel attention masks
REPRESENTATIONS = ("feat", "pos", "cha")
# per appearance domain, the (labelled = real, unlabelled = fake) pair its discriminators judge
PAIRS = {"s": ("source", "target_to_source"), "t": ("source_to_target", "target")}


def translate_both(
    translator: nn.Module, batch: AdaptBatch, autocast=contextlib.nullcontext
) -> dict[str, torch.Tensor]:
    """The four (N, 1, H, W) images of an iteration: the batch's and their frozen translations
    (float32, no gradients). ``autocast``: a zero-argument context factory (the run's
    precision; the generators' forward passes are half of a float32 step's time on the CPU)."""
    with torch.no_grad(), autocast():
        source_to_target = translator.translate(batch.plain_source).float()
        target_to_source = translator.translate_back(batch.target).float()
    return {
        "source": batch.source,
        "source_to_target": source_to_target,
        "target": batch.target,
        "target_to_source": target_to_source,
    }


def output_consistency(logits: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Eq. (5) as used here: squared L2 distance between the softmax maps of two (N, C, H, W)
    logits, summed over classes and averaged over pixels; a float32 scalar in [0, 2]."""
    p = torch.softmax(logits.float(), dim=1)
    q = torch.softmax(other.float(), dim=1)
    return (p - q).square().sum(dim=1).mean()


def attention_image(attention: torch.Tensor) -> torch.Tensor:
    """(N, n, n) attention rows (each summing to 1) -> (N, 1, n, n) float32 scaled by n, so a
    uniform row reads 1 whatever the map size."""
    return attention.float().unsqueeze(1) * attention.shape[-1]


def representations(outputs: dict) -> dict[str, torch.Tensor]:
    """What the discriminators judge, from a dual-attention U-Net's outputs: "feat" (N, Cb, h, w)
    post-attention bottleneck, "pos" (N, 1, hw, hw) and "cha" (N, 1, Cb, Cb) attention images."""
    return {
        "feat": outputs["features"].float(),
        "pos": attention_image(outputs["position_attention"]),
        "cha": attention_image(outputs["channel_attention"]),
    }


def discriminator_inputs(model: nn.Module) -> dict[str, int]:
    """Input channels of each representation's discriminators."""
    return {"feat": unwrap(model).bottleneck_channels, "pos": 1, "cha": 1}


def fooling_losses(
    discriminators: dict[str, nn.Module], reps: dict[str, dict], kind: str
) -> dict[str, torch.Tensor]:
    """Eqs. (6), (8), per representation: each domain's unlabelled image scored against "real"
    by that domain's discriminator (the segmenter's adversarial terms)."""
    return {
        rep: sum(
            gan_loss(discriminators[f"d_{rep}_{domain}"](reps[fake][rep]), True, kind)
            for domain, (_, fake) in PAIRS.items()
        )
        for rep in REPRESENTATIONS
    }


def update_discriminators(
    discriminators: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    reps: dict[str, dict],
    kind: str,
) -> dict[str, torch.Tensor]:
    """Eqs. (7), (9): one step of each discriminator, its domain's labelled image -> real and
    unlabelled image -> fake, on representations detached from the segmenter."""
    losses = {}
    for rep in REPRESENTATIONS:
        for domain, (real, fake) in PAIRS.items():
            name = f"d_{rep}_{domain}"
            d = discriminators[name]
            loss = gan_loss(d(reps[real][rep].detach()), True, kind)
            loss = loss + gan_loss(d(reps[fake][rep].detach()), False, kind)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            losses[name] = loss
    return losses


def save_pictures(
    directory: Path,
    images: dict[str, torch.Tensor],
    labels: torch.Tensor,
    predictions: dict[str, torch.Tensor],
    num_classes: int,
) -> None:
    """images.png: the four (N, 1, H, W) images, one row each; predictions.png: the (N, H, W)
    source labels and the class ids predicted on each image (x_t and x_t->s should agree)."""
    from udaseg.translation.io import save_grid

    pictures = [(name, x[:, 0].float().cpu().numpy()) for name, x in images.items()]
    save_grid(directory / "images.png", pictures, title="bigl.v1: real and translated")
    maps = [("source labels", labels), *((f"prediction {k}", p) for k, p in predictions.items())]
    save_grid(
        directory / "predictions.png",
        [(name, m.float().cpu().numpy()) for name, m in maps],
        title="bigl.v1: class ids",
        window=(0.0, float(num_classes - 1)),
    )


@register_method(
    "bigl.v1",
    hparams=BIGL_ADAPT_HPARAMS,
    needs_translator=True,
    models=("dual-attention-unet.v1",),
)
def bigl(ctx: AdaptContext) -> AdaptMethod:
    """BiGL: segment real + translated slices, align features and attention maps per domain.

    Output consistency between x_t and x_t->s, and adversarial alignment of the post-attention
    features and the position/channel attention masks within each appearance domain.

    Raises:
        UdasegError: the context holds no translator (BiGL translates online), or a one-way
            one (``translates_back`` false: no x_t->s).
    """
    if ctx.translator is None:
        raise UdasegError(
            "bigl.v1 translates online and needs a translator",
            hint="pass --translator, a run of `udaseg translate train` on these two domains",
            exit_code=2,
        )
    hparams, translator = ctx.hparams, ctx.translator
    if not translates_back(translator):
        # refused before any network is built: every iteration needs x_t->s
        raise UdasegError(
            "bigl.v1 needs both translation directions, but the --translator run is one-way "
            "(it cannot render target slices in the source appearance)",
            hint="retrain it with `udaseg translate train --method cut.v1 --set "
            "bidirectional=true`, or pass a two-way translator such as cyclegan.v1",
            exit_code=2,
        )
    model = ctx.segmenter()
    width = int(hparams["d_width"])
    discriminators = {
        f"d_{rep}_{domain}": ctx.network(SmallMapDiscriminator(channels, width))
        for rep, channels in discriminator_inputs(model).items()
        for domain in PAIRS
    }
    modules = {"model": model, **discriminators}
    optimizers = {"model": optimizer(model.parameters(), hparams)}
    for name, d in discriminators.items():
        optimizers[name] = optimizer(d.parameters(), hparams, "d_")
    schedulers = {
        name: scheduler(opt, hparams, "" if name == "model" else "d_")
        for name, opt in optimizers.items()
    }
    criterion = segmentation_criterion(ctx)
    kind = hparams["gan_loss"]
    lambda_cons, lambda_gtl = float(hparams["lambda_cons"]), float(hparams["lambda_gtl"])

    def train_step(batch: AdaptBatch) -> dict[str, float]:
        images = translate_both(translator, batch, ctx.autocast)
        model.train()
        # (1) segmenter, discriminators frozen
        freeze(discriminators.values())
        with ctx.autocast():
            outputs = {name: model(x) for name, x in images.items()}
        seg_source, _ = criterion(outputs["source"], batch.labels)
        seg_translated, _ = criterion(outputs["source_to_target"], batch.labels)
        consistency = output_consistency(
            outputs["target"]["logits"], outputs["target_to_source"]["logits"]
        )
        reps = {name: representations(out) for name, out in outputs.items()}
        adv = fooling_losses(discriminators, reps, kind)
        total = (
            seg_source + seg_translated + lambda_cons * consistency + lambda_gtl * sum(adv.values())
        )
        optimizers["model"].zero_grad(set_to_none=True)
        total.backward()
        optimizers["model"].step()
        losses = {
            "total": total,
            "seg_source": seg_source,
            "seg_translated": seg_translated,
            "consistency": consistency,
            **{f"adv_{rep}": value for rep, value in adv.items()},
        }
        # (2) discriminators, on the same images
        freeze(discriminators.values(), True)
        losses.update(update_discriminators(discriminators, optimizers, reps, kind))
        return as_floats(losses)

    @torch.no_grad()
    def extras(directory: Path, batch: AdaptBatch) -> None:
        images = translate_both(translator, batch, ctx.autocast)
        model.eval()
        with ctx.autocast():
            predictions = {name: model(x)["logits"].argmax(1) for name, x in images.items()}
        save_pictures(directory, images, batch.labels, predictions, ctx.num_classes)

    return AdaptMethod(modules, optimizers, schedulers, train_step, extras)
