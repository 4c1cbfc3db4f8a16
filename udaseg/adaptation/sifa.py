"""SIFA: synergistic image and feature alignment (Chen et al., TMI 2020), trained end to end.

The networks (Sec. III and Fig. 2):

- G_t: source -> target generator (CycleGAN's ResNet generator); D_t: PatchGAN on target images.
- E: the segmenter's encoder, shared with the decoder U; together they are the reverse generator
  x_t->s = U(E(x_t)). D_s: PatchGAN on source images with an auxiliary head that tells
  U(E(x_s->t)) (source reconstructed from translated source) from U(E(x_t)).
- C1, C2: the segmenter's classifiers on E's last and intermediate layers (deep supervision);
  D_p1, D_p2: PatchGANs on their softmax maps, predictions on x_s->t (real) vs on x_t (fake).

Each network minimises the terms of Eq. (6) that name it: G_t ``adv_t + 10 cyc``;
E ``0.1 adv_s + 10 cyc + seg1 + 0.1 seg2 + 0.1 adv_p1 + 0.01 adv_p2 + 0.1 adv_s~``; C_i its
segmentation and prediction-space adversarial terms; U ``0.1 adv_s + 10 cyc`` (Eq. 5 trains only
E with adv_s~). So the segmentation loss never reaches G_t, and the feature-alignment terms never
reach G_t or U. Cycle consistency runs both ways: x_s -> G_t -> E -> U and x_t -> E -> U -> G_t.

One iteration is one forward of the whole graph; each network then gets the gradient of its own
objective (``backward(inputs=...)``), the discriminators learn on detached images (from 50-image
pools for D_t and D_s), and the optimisers step in the paper's order
G_t -> D_t -> E -> C_i -> U -> D_s -> D_p_i. Every gradient comes from this iteration's graph
(updating sequentially and recomputing the graph after each update would cost several forwards
per iteration). The pools draw their swaps from torch's global generator, which checkpoints hold.

Prediction is C1(E(x_t)): ``modules["model"]`` is the ``sifa-encoder.v1`` segmenter.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.adaptation.base import (
    AdaptBatch,
    AdaptContext,
    AdaptMethod,
    check_finite,
    optimizer,
    scheduler,
    segmentation_criterion,
)
from udaseg.adaptation.registry import register_method
from udaseg.errors import UdasegError
from udaseg.losses import SegmentationLoss
from udaseg.losses.gan import discriminator_loss, gan_loss
from udaseg.models.discriminators import AuxPatchDiscriminator, PatchDiscriminator
from udaseg.models.sifa import SIFA_HPARAMS
from udaseg.training.loop import unwrap
from udaseg.translation.cyclegan import ImagePool, ResidualBlock, ResnetGenerator

# The segmenter's settings come from SIFA_HPARAMS (Sec. III-D: Adam 2e-4 for every module, batch 8,
# 256x256 slices, 20k iterations; CE + Dice; aux_weight is lambda_seg^2 = 0.1, lambda_seg^1 = 1
# being the unit of the other weights). Loss weights lambda_*: Eq. (6), with adv_t weighted 1.
# G_t follows CycleGAN (Sec. III-D: 3 convs, 9 residual blocks, 2 deconvs, 1 conv; CycleGAN's
# width 64); every discriminator is a 70x70 PatchGAN of width 64 (Sec. III-D). Eqs. (1), (4), (5)
# are written as log-likelihood GANs; the least-squares loss and 50-image pools are CycleGAN's
# practice, which the authors' release follows. The paper gives no decoder widths nor Adam betas:
# the release uses U widths 4w-4w-2w-2w-w with w = 32 and beta1 = 0.5 for the adversarial modules.
# Shrink g_width, g_blocks, u_width and d_width for CPU-sized runs.
SIFA_ADAPT_HPARAMS: dict[str, Any] = {
    **SIFA_HPARAMS,
    "model": "sifa-encoder.v1",
    "gan_loss": "lsgan",
    "g_optimizer": "adam",
    "g_betas": [0.5, 0.999],
    "g_weight_decay": 0.0,
    "g_schedule": "constant",
    "d_optimizer": "adam",
    "d_betas": [0.5, 0.999],
    "d_weight_decay": 0.0,
    "d_schedule": "constant",
    "g_width": 64,
    "g_blocks": 9,
    "u_width": 32,
    "d_width": 64,
    "pool_size": 50,
    "lambda_adv_t": 1.0,
    "lambda_adv_s": 0.1,
    "lambda_cycle": 10.0,
    "lambda_adv_p1": 0.1,
    "lambda_adv_p2": 0.01,
    "lambda_adv_s_tilde": 0.1,
}

# Sec. III-C; every name is also a key of optimizers and schedulers, stepped in this order
UPDATE_ORDER = ("g_t", "d_t", "encoder", "classifiers", "decoder", "d_s", "d_p1", "d_p2")
# hparams keys of each optimiser: the segmenter's for E and C_i, g_ for G_t and U, d_ for the rest
OPTIMIZER_PREFIX = {
    "g_t": "g_",
    "d_t": "d_",
    "encoder": "",
    "classifiers": "",
    "decoder": "g_",
    "d_s": "d_",
    "d_p1": "d_",
    "d_p2": "d_",
}

# E downsamples by 8 and U upsamples by 8, so U(E(x)) has x's size only for multiples of 8
SIZE_MULTIPLE = 8

Autocast = Callable[[], AbstractContextManager]


class SourceDecoder(nn.Module):
    """SIFA's decoder U (Sec. III-D): 1 conv, 4 residual blocks, 3 deconvolutions, 1 output conv.

    E's features (N, in_channels, H/8, W/8) -> a source-like image (N, out_channels, H, W) in
    [-1, 1]. Widths 4w (conv and residual blocks), then 2w, 2w, w (each deconvolution doubles H
    and W), with instance norm and ReLU; a 7x7 convolution and tanh make the image.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 4 * width, 3, padding=1),
            nn.InstanceNorm2d(4 * width),
            nn.ReLU(inplace=True),
            *(ResidualBlock(4 * width) for _ in range(4)),
        ]
        for cin, cout in ((4 * width, 2 * width), (2 * width, 2 * width), (2 * width, width)):
            layers += [
                nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=1)


def _params(*modules: nn.Module) -> list[nn.Parameter]:
    return [p for module in modules for p in module.parameters()]


@dataclass
class SifaNetworks:
    """SIFA's networks (see the module docstring), its loss weights and the GAN loss kind."""

    model: nn.Module  # E + C1 + C2 (SifaSegmenter, maybe DDP-wrapped)
    g_t: nn.Module
    decoder: nn.Module  # U
    d_t: nn.Module
    d_s: nn.Module  # AuxPatchDiscriminator
    d_p1: nn.Module
    d_p2: nn.Module
    pool_t: ImagePool  # x_s->t shown to D_t
    pool_s: ImagePool  # x_t->s shown to D_s
    weights: dict[str, float]
    gan: str

    def trained(self) -> list[nn.Module]:
        """The networks with parameters (not the pools)."""
        return [self.model, self.g_t, self.decoder, self.d_t, self.d_s, self.d_p1, self.d_p2]

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
        """The whole graph once: images (N, 1, H, W) and the segmenter's outputs on both."""
        translated = self.g_t(source)  # x_s->t
        on_translated = self.model(translated)  # C_i(E(x_s->t))
        on_target = self.model(target)  # C_i(E(x_t))
        reconstructed_source = self.decoder(on_translated["features"])  # x_s->t->s
        target_as_source = self.decoder(on_target["features"])  # x_t->s
        reconstructed_target = self.g_t(target_as_source)  # x_t->s->t
        return {
            "translated": translated,
            "on_translated": on_translated,
            "on_target": on_target,
            "reconstructed_source": reconstructed_source,
            "target_as_source": target_as_source,
            "reconstructed_target": reconstructed_target,
        }

    def generator_terms(
        self,
        graph: dict[str, Any],
        batch: AdaptBatch,
        criterion: SegmentationLoss,
        autocast: Autocast,
    ) -> dict[str, torch.Tensor]:
        """Eq. (6)'s unweighted terms, float32 scalars (adversarial ones as the generators see
        them: every fake labelled real)."""
        on_target = graph["on_target"]
        with autocast():
            judged_t = self.d_t(graph["translated"])
            judged_s, judged_s_aux = self.d_s(graph["target_as_source"])
            judged_p1 = self.d_p1(_softmax(on_target["logits"]))
            judged_p2 = self.d_p2(_softmax(on_target["aux"][0]))
        seg1, _ = criterion.head_loss(graph["on_translated"]["logits"], batch.labels)
        seg2, _ = criterion.head_loss(graph["on_translated"]["aux"][0], batch.labels)
        return {
            "adv_t": gan_loss(judged_t, True, self.gan),
            "adv_s": gan_loss(judged_s, True, self.gan),
            # Eq. (5): U(E(x_t)) passed off as source reconstructed from x_s->t
            "adv_s_tilde": gan_loss(judged_s_aux, True, self.gan),
            "cycle_s": F.l1_loss(graph["reconstructed_source"].float(), batch.source.float()),
            "cycle_t": F.l1_loss(graph["reconstructed_target"].float(), batch.target.float()),
            "seg1": seg1,
            "seg2": seg2,
            "adv_p1": gan_loss(judged_p1, True, self.gan),
            "adv_p2": gan_loss(judged_p2, True, self.gan),
        }

    def objectives(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each generator-side network's objective: the Eq. (6) terms that name it."""
        w = self.weights
        cycle = w["cycle"] * (terms["cycle_s"] + terms["cycle_t"])
        reverse = w["adv_s"] * terms["adv_s"] + cycle
        return {
            "g_t_objective": w["adv_t"] * terms["adv_t"] + cycle,
            "decoder_objective": reverse,
            # E's objective; C_i's gradients from it are those of their own terms
            "total": reverse
            + terms["seg1"]
            + w["seg2"] * terms["seg2"]
            + w["adv_p1"] * terms["adv_p1"]
            + w["adv_p2"] * terms["adv_p2"]
            + w["adv_s_tilde"] * terms["adv_s_tilde"],
        }

    def discriminator_losses(
        self, graph: dict[str, Any], batch: AdaptBatch, autocast: Autocast
    ) -> dict[str, torch.Tensor]:
        """Halved LSGAN objectives on detached images: D_t target vs pooled x_s->t; D_s source vs
        pooled x_t->s, its auxiliary head x_s->t->s vs the same pooled x_t->s; D_p_i predictions
        on x_s->t vs on x_t."""
        pooled_t = self.pool_t.query(graph["translated"])
        pooled_s = self.pool_s.query(graph["target_as_source"])
        maps = [
            _softmax(x.detach())
            for out in (graph["on_translated"], graph["on_target"])
            for x in (out["logits"], out["aux"][0])
        ]
        with autocast():
            real_t, fake_t = self.d_t(batch.target), self.d_t(pooled_t)
            real_s, _ = self.d_s(batch.source)
            fake_s, fake_s_aux = self.d_s(pooled_s)
            _, reconstructed_aux = self.d_s(graph["reconstructed_source"].detach())
            p1 = self.d_p1(maps[0]), self.d_p1(maps[2])
            p2 = self.d_p2(maps[1]), self.d_p2(maps[3])
        return {
            "d_t": discriminator_loss(real_t, fake_t, self.gan),
            "d_s": discriminator_loss(real_s, fake_s, self.gan),
            "d_s_aux": discriminator_loss(reconstructed_aux, fake_s_aux, self.gan),
            "d_p1": discriminator_loss(*p1, self.gan),
            "d_p2": discriminator_loss(*p2, self.gan),
        }


def build_networks(ctx: AdaptContext) -> SifaNetworks:
    """SIFA's networks on the runtime's device, sized by the hparams."""
    hparams = ctx.hparams
    bad = [int(s) for s in hparams["patch_size"] if int(s) % SIZE_MULTIPLE]
    if bad:
        raise UdasegError(
            f"sifa.v1 needs a patch_size divisible by {SIZE_MULTIPLE}, got {hparams['patch_size']}",
            hint=f"set patch_size to multiples of {SIZE_MULTIPLE} (--set patch_size=[256,256])",
            exit_code=2,
        )
    channels = int(ctx.model_kwargs.get("in_channels", 1))
    d_width, pool_size = int(hparams["d_width"]), int(hparams["pool_size"])
    model = ctx.segmenter()
    encoder_width = unwrap(model).encoder.out_channels
    weights = {
        "adv_t": hparams["lambda_adv_t"],
        "adv_s": hparams["lambda_adv_s"],
        "cycle": hparams["lambda_cycle"],
        "seg2": hparams["aux_weight"],
        "adv_p1": hparams["lambda_adv_p1"],
        "adv_p2": hparams["lambda_adv_p2"],
        "adv_s_tilde": hparams["lambda_adv_s_tilde"],
    }
    device = ctx.runtime.device
    return SifaNetworks(
        model=model,
        g_t=ctx.network(
            ResnetGenerator(channels, int(hparams["g_width"]), int(hparams["g_blocks"]))
        ),
        decoder=ctx.network(SourceDecoder(encoder_width, channels, int(hparams["u_width"]))),
        d_t=ctx.network(PatchDiscriminator(channels, d_width)),
        d_s=ctx.network(AuxPatchDiscriminator(channels, d_width)),
        d_p1=ctx.network(PatchDiscriminator(ctx.num_classes, d_width)),
        d_p2=ctx.network(PatchDiscriminator(ctx.num_classes, d_width)),
        # buffers only: on the device, never DDP-wrapped
        pool_t=ImagePool(pool_size, channels).to(device),
        pool_s=ImagePool(pool_size, channels).to(device),
        weights={k: float(v) for k, v in weights.items()},
        gan=str(hparams["gan_loss"]),
    )


def _optimizers(nets: SifaNetworks, hparams: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
    """One optimiser per network, in UPDATE_ORDER, with the hparams keys of OPTIMIZER_PREFIX."""
    segmenter = unwrap(nets.model)
    trained = {
        "g_t": [nets.g_t],
        "d_t": [nets.d_t],
        "encoder": [segmenter.encoder],
        "classifiers": [segmenter.classifier, segmenter.aux_classifier],
        "decoder": [nets.decoder],
        "d_s": [nets.d_s],
        "d_p1": [nets.d_p1],
        "d_p2": [nets.d_p2],
    }
    return {
        name: optimizer(_params(*trained[name]), hparams, OPTIMIZER_PREFIX[name])
        for name in UPDATE_ORDER
    }


def _floats(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    # one device sync for every logged number
    values = torch.stack([v.detach().float() for v in losses.values()]).tolist()
    return dict(zip(losses, values, strict=True))


@register_method(
    "sifa.v1", hparams=SIFA_ADAPT_HPARAMS, models=("sifa-encoder.v1",), rerenders_source=False
)
def sifa(ctx: AdaptContext) -> AdaptMethod:
    """SIFA: CycleGAN-style image alignment sharing E with prediction- and image-space feature
    alignment (D_p1, D_p2, D_s's auxiliary head), trained end to end."""
    nets = build_networks(ctx)
    optimizers = _optimizers(nets, ctx.hparams)
    schedulers = {
        name: scheduler(opt, ctx.hparams, OPTIMIZER_PREFIX[name])
        for name, opt in optimizers.items()
    }
    segmenter = unwrap(nets.model)
    # which parameters each generator-side objective trains (see the module docstring)
    trains = {
        "g_t_objective": _params(nets.g_t),
        "decoder_objective": _params(nets.decoder),
        "total": _params(segmenter.encoder, segmenter.classifier, segmenter.aux_classifier),
    }
    criterion = segmentation_criterion(ctx)

    def train_step(batch: AdaptBatch) -> dict[str, float]:
        for network in nets.trained():
            network.train()
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        with ctx.autocast():
            graph = nets.forward(batch.source, batch.target)
        terms = nets.generator_terms(graph, batch, criterion, ctx.autocast)
        objectives = nets.objectives(terms)
        last = list(trains)[-1]
        for name, params in trains.items():
            # backward restricted to one network's parameters: no gradient leaks into the others
            torch.autograd.backward(objectives[name], inputs=params, retain_graph=name != last)
        d_losses = nets.discriminator_losses(graph, batch, ctx.autocast)
        # each discriminator's parameters only see their own loss: one backward for all
        sum(d_losses.values()).backward()
        losses = _floats({**terms, **objectives, **d_losses})
        check_finite(losses, "sifa.v1")
        for name in UPDATE_ORDER:
            optimizers[name].step()
        return losses

    def extras(directory: Path, batch: AdaptBatch) -> None:
        write_samples(nets, batch, Path(directory) / "sifa_samples.png", ctx.autocast)

    modules = {
        "model": nets.model,
        "g_t": nets.g_t,
        "decoder": nets.decoder,
        "d_t": nets.d_t,
        "d_s": nets.d_s,
        "d_p1": nets.d_p1,
        "d_p2": nets.d_p2,
        "pool_t": nets.pool_t,
        "pool_s": nets.pool_s,
    }
    return AdaptMethod(modules, optimizers, schedulers, train_step, extras)


@torch.no_grad()
def write_samples(
    nets: SifaNetworks, batch: AdaptBatch, path: Path, autocast: Autocast, count: int = 4
) -> None:
    """PNG grid, one column per sample (at most ``count``): source, x_s->t, x_s->t->s, target,
    x_t->s, x_t->s->t. Networks run in eval mode (no batch-norm statistics move) and get their
    previous mode back."""
    from udaseg.translation.io import save_grid

    modes = [network.training for network in nets.trained()]
    for network in nets.trained():
        network.eval()
    try:
        source, target = batch.source[:count], batch.target[:count]
        with autocast():
            graph = nets.forward(source, target)
    finally:
        for network, mode in zip(nets.trained(), modes, strict=True):
            network.train(mode)
    rows = [
        ("source", source),
        ("x_s->t", graph["translated"]),
        ("x_s->t->s", graph["reconstructed_source"]),
        ("target", target),
        ("x_t->s", graph["target_as_source"]),
        ("x_t->s->t", graph["reconstructed_target"]),
    ]
    save_grid(
        path,
        [(name, images[:, 0].float().cpu().numpy()) for name, images in rows],
        title="sifa.v1: source and target, translated and reconstructed",
    )
