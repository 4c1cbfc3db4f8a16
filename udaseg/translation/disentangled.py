"""DAR-UNet's content/style translator with an AdaIN decoder: ``disentangled.v1``.

It follows the contract of :mod:`udaseg.translation.registry`. Images are (N, 1, H, W) float32 in
the stores' normalised range [-1, 1]; decoders end in tanh, so outputs stay in [-1, 1]. Content
codes are (N, 4 * width, H / 4, W / 4) feature maps (two stride-2 convolutions).

- ``disentangled.v1`` — DAR-UNet's content-style disentangled GAN (Yao et al., Sec. III-A and
  IV-A.2): ONE shared content encoder, one style encoder per domain (style codes (N, style_dim),
  style_dim 8), ONE shared decoder whose AdaIN layers take their affine parameters from an MLP on
  the style code, a multi-scale LSGAN image discriminator per domain and a content discriminator
  on content codes. Cross-domain styles are *encoded* from images of the other domain ("a style
  code s_b randomly encoded from target domain"), not drawn from N(0, I) as in MUNIT: with one
  shared decoder only the encoded code tells it which domain to render, so there is no N(0, I)
  prior. The default style (``style=None``) is therefore the running mean of the target style
  codes (the paper's "mean style", Fig. 4's red star), not the zero code. An EMA copy of the
  generator (content encoder, style encoders, decoder) gives the inference weights.

The building blocks it shares with ``domain-style.v1`` (GLUA's translator,
:mod:`udaseg.translation.domain_style`) live in :mod:`udaseg.translation.adain`.

Decoders (both methods) are MUNIT-shaped (AdaIN residual blocks, two x2 upsamplings, conv7, tanh)
with AdaIN also in the upsampling blocks (as StarGAN v2; MUNIT uses layer norm there): neither
paper says where its AdaIN layers sit, and a style that remaps intensities needs control at full
resolution. Known limit: both keep every weight shared between the domains and let only AdaIN
parameters differ, so a pure polarity flip (target = -source) is a poor fit; on 32x32 toy blobs
neither learns it in a few thousand tiny steps, while a contrast change is learnt in ~100.

Per step: generator update first (discriminators frozen), then (disentangled only) the EMA update,
then the discriminators on real images against the step's detached fakes.

Loss weights (and ``ema_decay``) are constructor kwargs with the same names as the hparams keys, so
the translate stage passes the hparams' values into the constructor and they are checkpointed.
``optimizers(hparams)`` reads ``lr_g``, ``lr_d``, ``betas`` and ``weight_decay`` (default 0).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from udaseg.errors import UdasegError
from udaseg.losses.gan import discriminator_loss, gan_loss, set_requires_grad
from udaseg.models.discriminators import MultiScaleDiscriminator, PatchDiscriminator
from udaseg.translation.adain import (
    Autocast,
    ContentEncoder,
    StyleDecoder,
    StyleEncoder,
    adam,
    check_images,
    l1,
    pad_to_multiple,
    scalars,
    weighted_total,
)
from udaseg.translation.registry import register_translator

# DAR-UNet (Sec. IV-A.2): LSGAN, TTUR with lr 1e-4 (generators) / 2e-4 (discriminators), 50
# epochs (~6 h on one RTX 3090) with AdaBelief. AdaBelief is not in torch, so Adam is used (the
# project's substitute, as for the segmenter); betas, batch size and loss weights are not stated:
# MUNIT's (0.5, 0.999), batch 1, image/cycle 10, content/style/adversarial 1. 100k steps ~ 50
# epochs of ~2k slices at batch 1.
DISENTANGLED_HPARAMS: dict[str, Any] = {
    "lr_g": 1e-4,
    "lr_d": 2e-4,
    "betas": [0.5, 0.999],
    "weight_decay": 0.0,
    "batch_size": 1,
    "patch_size": [256, 256],
    "steps": 100_000,
    "schedule": "constant",
    "lambda_image": 10.0,
    "lambda_cycle": 10.0,
    "lambda_content": 1.0,
    "lambda_style": 1.0,
    "lambda_adv": 1.0,
    "lambda_adv_content": 1.0,
    "lambda_style_reg": 0.01,
    "ema_decay": 0.999,
}


TINY_DISENTANGLED = {
    "width": 4,
    "n_res": 1,
    "mlp_dim": 16,
    "disc_width": 4,
    "disc_layers": 2,
    "disc_scales": 2,
    "content_disc_layers": 1,
}


@register_translator(
    "disentangled.v1",
    has_style_codes=True,
    hparams=DISENTANGLED_HPARAMS,
    tiny=TINY_DISENTANGLED,
    description="DAR-UNet's content-style disentangled GAN (shared content encoder and decoder, "
    "per-domain style encoders, AdaIN, content discriminator, EMA)",
)
class DisentangledTranslator(nn.Module):
    """DAR-UNet's content-style disentangled translator (Yao et al., Sec. III-A).

    Generator (``self.generator``, EMA copy in ``self.generator_ema``): ``content`` (shared
    G_enc_c), ``style_source`` / ``style_target`` (G_enc_sa / G_enc_sb), ``decoder`` (shared
    G_dec with the style MLP). Discriminators: ``disc_source`` / ``disc_target`` (multi-scale
    LSGAN, D_a / D_b) and ``disc_content`` (D_c, a PatchGAN on content codes: target codes real,
    source codes fake; the encoder is pushed to 0.5 on both, DRIT's content loss, whose split into
    domain-invariant and domain-specific features DAR-UNet follows).

    Losses (DAR-UNet Eq. for L_rec and L_GAN, a = source, b = target): image reconstruction
    |x_a - G(c_a, s_a)|; content reconstruction |c_a - E_c(G(c_a, s_b))|; style reconstruction
    |s_b - E_sb(G(c_a, s_b))| (the paper's L_rec^{s_a} applies E_sb to a source-styled image, read
    here as the style encoder of the rendered domain); LSGAN image and content terms; plus MUNIT's
    cycle |x_a - G(E_c(G(c_a, s_b)), s_a)|; each for both directions; and DRIT's L2 pull of the
    encoded style codes towards 0.

    Args:
        width: first encoder width (64); content codes have 4 * width channels.
        n_res: residual blocks in the content encoder and AdaIN blocks in the decoder (4).
        style_dim: style code length (8).
        mlp_dim: hidden width of the style MLP (256).
        disc_width / disc_layers / disc_scales: image discriminators (64 / 3 / 3, no norm).
        content_disc_layers: stride layers of the content discriminator (2; 1 for 32x32 tests).
        lambda_image: L1 self-reconstruction, both domains (10).
        lambda_cycle: L1 cycle x -> other domain -> x with the image's own style (10; not in
            DAR-UNet's equations, MUNIT's optional term; 0 skips it).
        lambda_content / lambda_style: L1 content / style code reconstruction (1 / 1).
        lambda_adv / lambda_adv_content: image / content adversarial terms (1 / 1).
        lambda_style_reg: L2 pull of the encoded style codes towards 0, mean(s_a^2) + mean(s_b^2)
            (0.01: DRIT's regulariser of its attribute codes, whose content/attribute split
            DAR-UNet follows; 0 turns it off). Encoded codes have no prior to anchor their scale,
            so without it they drift in size and direction during training: on the phantom
            after 3000 steps |s| ~ 10 with a spread of 0.08 within a domain, the running mean
            style lagged the current codes, and a cycle through the default (mean) styles
            missed the organs' intensities by L1 0.49, against 0.27 with the image's own style.
        ema_decay: decay of the generator EMA (after a warm-up, :meth:`ema_decay_now`) and of
            the running mean styles (0.999).
    """

    def __init__(
        self,
        width: int = 64,
        n_res: int = 4,
        style_dim: int = 8,
        mlp_dim: int = 256,
        disc_width: int = 64,
        disc_layers: int = 3,
        disc_scales: int = 3,
        content_disc_layers: int = 2,
        lambda_image: float = 10.0,
        lambda_cycle: float = 10.0,
        lambda_content: float = 1.0,
        lambda_style: float = 1.0,
        lambda_adv: float = 1.0,
        lambda_adv_content: float = 1.0,
        lambda_style_reg: float = 0.01,
        ema_decay: float = 0.999,
    ) -> None:
        super().__init__()
        self.style_dim = style_dim
        self.ema_decay = float(ema_decay)
        self.weights = {
            "image_rec": float(lambda_image),
            "cycle": float(lambda_cycle),
            "content_rec": float(lambda_content),
            "style_rec": float(lambda_style),
            "adv_image": float(lambda_adv),
            "adv_content": float(lambda_adv_content),
            "style_reg": float(lambda_style_reg),
        }
        content = ContentEncoder(1, width, n_res)
        self.generator = nn.ModuleDict(
            {
                "content": content,
                "style_source": StyleEncoder(1, width, style_dim),
                "style_target": StyleEncoder(1, width, style_dim),
                "decoder": StyleDecoder(content.out_channels, n_res, style_dim, mlp_dim),
            }
        )
        # inference weights: a frozen copy that follows the generator (Polyak averaging)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.disc_source = MultiScaleDiscriminator(1, disc_width, disc_layers, disc_scales)
        self.disc_target = MultiScaleDiscriminator(1, disc_width, disc_layers, disc_scales)
        self.disc_content = PatchDiscriminator(
            content.out_channels, disc_width, content_disc_layers, norm="instance"
        )
        # EMA accumulators of the mean style codes (debiased by ema_steps, as Adam's moments)
        self.register_buffer("style_acc_source", torch.zeros(style_dim))
        self.register_buffer("style_acc_target", torch.zeros(style_dim))
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    @property
    def discriminators(self) -> list[nn.Module]:
        return [self.disc_source, self.disc_target, self.disc_content]

    def optimizers(self, hparams: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
        """TTUR: Adam over the generator (``lr_g``) and the three discriminators (``lr_d``);
        the EMA copy is never optimised."""
        disc_params = [p for d in self.discriminators for p in d.parameters()]
        return {
            "generator": adam(self.generator.parameters(), hparams["lr_g"], hparams),
            "discriminator": adam(disc_params, hparams["lr_d"], hparams),
        }

    # --- training ---------------------------------------------------------------------------

    def train_step(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        optimizers: dict[str, torch.optim.Optimizer],
        autocast: Autocast,
    ) -> dict[str, float]:
        """One iteration on unpaired (N, 1, H, W) batches (H, W divisible by 4).

        Returns unweighted terms ``image_rec``, ``cycle``, ``content_rec``, ``style_rec``,
        ``adv_image``, ``adv_content``, ``style_reg``, the weighted generator objective ``total``
        and the discriminator losses ``d_source``, ``d_target``, ``d_content``.
        """
        set_requires_grad(self.discriminators, False)
        with autocast():
            out = self._forward(source, target)
            terms = self._generator_terms(source, target, out)
        total = weighted_total(terms, self.weights)
        optimizers["generator"].zero_grad(set_to_none=True)
        total.backward()
        optimizers["generator"].step()
        self._update_ema(source, target)

        set_requires_grad(self.discriminators, True)
        with autocast():
            d_terms = self._discriminator_terms(source, target, out)
        optimizers["discriminator"].zero_grad(set_to_none=True)
        sum(d_terms.values()).backward()
        optimizers["discriminator"].step()
        return scalars({**terms, "total": total, **d_terms})

    def _forward(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every generator output of one step (a = source, b = target)."""
        g = self.generator
        c_a, c_b = g["content"](source), g["content"](target)
        s_a, s_b = g["style_source"](source), g["style_target"](target)
        # cross-domain styles are codes encoded from the other domain's images (DAR-UNet
        # Sec. III-A.1), held fixed like MUNIT's prior samples so the style loss cannot
        # shrink both sides of |s - E_s(G(c, s))| at once
        s_a_x, s_b_x = s_a.detach(), s_b.detach()
        x_ab, x_ba = g["decoder"](c_a, s_b_x), g["decoder"](c_b, s_a_x)
        c_ab, c_ba = g["content"](x_ab), g["content"](x_ba)
        out = {
            "c_a": c_a,
            "c_b": c_b,
            "s_a": s_a,
            "s_b": s_b,
            "s_a_x": s_a_x,
            "s_b_x": s_b_x,
            "x_aa": g["decoder"](c_a, s_a),
            "x_bb": g["decoder"](c_b, s_b),
            "x_ab": x_ab,
            "x_ba": x_ba,
            "c_ab": c_ab,
            "c_ba": c_ba,
            "s_b_rec": g["style_target"](x_ab),
            "s_a_rec": g["style_source"](x_ba),
        }
        if self.weights["cycle"]:
            out["x_aba"] = g["decoder"](c_ab, s_a)
            out["x_bab"] = g["decoder"](c_ba, s_b)
        return out

    def _generator_terms(self, source, target, out) -> dict[str, torch.Tensor]:
        zero = source.new_zeros((), dtype=torch.float32)
        cycle = l1(out["x_aba"], source) + l1(out["x_bab"], target) if "x_aba" in out else zero
        # content adversary: the encoder wins when D_c cannot tell the domains apart (0.5)
        adv_content = gan_loss(self.disc_content(out["c_a"]), 0.5) + gan_loss(
            self.disc_content(out["c_b"]), 0.5
        )
        return {
            "image_rec": l1(out["x_aa"], source) + l1(out["x_bb"], target),
            "cycle": cycle,
            "content_rec": l1(out["c_ab"], out["c_a"]) + l1(out["c_ba"], out["c_b"]),
            "style_rec": l1(out["s_b_rec"], out["s_b_x"]) + l1(out["s_a_rec"], out["s_a_x"]),
            "adv_image": gan_loss(self.disc_target(out["x_ab"]), True)
            + gan_loss(self.disc_source(out["x_ba"]), True),
            "adv_content": adv_content,
            "style_reg": out["s_a"].float().pow(2).mean() + out["s_b"].float().pow(2).mean(),
        }

    def _discriminator_terms(self, source, target, out) -> dict[str, torch.Tensor]:
        return {
            "d_source": discriminator_loss(
                self.disc_source(source), self.disc_source(out["x_ba"].detach())
            ),
            "d_target": discriminator_loss(
                self.disc_target(target), self.disc_target(out["x_ab"].detach())
            ),
            # D_c: target content "real", source content "fake" (DAR-UNet's L_GAN^c)
            "d_content": discriminator_loss(
                self.disc_content(out["c_b"].detach()), self.disc_content(out["c_a"].detach())
            ),
        }

    @torch.no_grad()
    def _update_ema(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """ema <- d * ema + (1 - d) * live with d = :meth:`ema_decay_now`, then fold this
        batch's mean style codes (from the EMA style encoders, the ones ``encode_style`` uses)
        into the running means."""
        live = dict(self.generator.named_parameters())
        decay = self.ema_decay_now()
        for name, param in self.generator_ema.named_parameters():
            param.lerp_(live[name], 1.0 - decay)
        ema = self.generator_ema
        self.style_acc_source.lerp_(ema["style_source"](source).float().mean(0), 1 - self.ema_decay)
        self.style_acc_target.lerp_(ema["style_target"](target).float().mean(0), 1 - self.ema_decay)
        self.ema_steps += 1

    def ema_decay_now(self) -> float:
        """The weights' EMA decay at this update: min(ema_decay, (1 + n) / (10 + n)) after n
        updates (the warm-up of TensorFlow's ExponentialMovingAverage). A constant 0.999 from the
        random initialisation would leave 74% of the initial weights in the EMA copy after 300
        steps, so a short run's inference weights would render near-grey images whatever the
        style; with the warm-up the copy follows the live weights early and averages later."""
        steps = int(self.ema_steps)
        return min(self.ema_decay, (1.0 + steps) / (10.0 + steps))

    # --- inference ----------------------------------------------------------------------------

    def mean_style(self, domain: str = "target") -> torch.Tensor:
        """(style_dim,) running mean of the domain's style codes (zeros before training)."""
        acc = self.style_acc_target if domain == "target" else self.style_acc_source
        steps = int(self.ema_steps)
        if steps == 0:
            return torch.zeros_like(acc)
        return acc / (1.0 - self.ema_decay**steps)

    def content_code(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, 4 * width, H / 4, W / 4) content codes (EMA weights)."""
        check_images(images, "images")
        return self.generator_ema["content"](images)

    def encode_style(self, images: torch.Tensor, domain: str = "target") -> torch.Tensor:
        """(N, 1, H, W) images -> (N, style_dim) style codes (EMA style encoder of ``domain``).

        ``domain="source"`` encodes source images' own styles: with them ``translate_back``
        closes the cycle the way training does (x -> target style -> the image's own style).
        """
        check_images(images, "images")
        if domain not in ("source", "target"):
            raise UdasegError(f"domain must be 'source' or 'target', got {domain!r}")
        return self.generator_ema[f"style_{domain}"](images)

    def translate(self, source: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """Source (N, 1, H, W) -> target appearance (N, 1, H, W) in [-1, 1].

        ``style``: (N, style_dim) or (1, style_dim) target style codes, e.g. from
        :meth:`encode_style` or their k-means centres; None uses the running mean target style.
        """
        return self._render(source, style, "target")

    def translate_back(self, target: torch.Tensor, style: torch.Tensor | None = None):
        """Target (N, 1, H, W) -> source appearance; ``style`` are source style codes (None:
        the running mean source style)."""
        return self._render(target, style, "source")

    def _render(self, images: torch.Tensor, style: torch.Tensor | None, domain: str):
        check_images(images, "images")
        style = self._style_batch(style, images.shape[0], domain, images)
        padded, (h, w) = pad_to_multiple(images)
        ema = self.generator_ema
        return ema["decoder"](ema["content"](padded), style)[..., :h, :w]

    def _style_batch(self, style, n: int, domain: str, like: torch.Tensor) -> torch.Tensor:
        if style is None:
            style = self.mean_style(domain)[None]
        if style.dim() != 2 or style.shape[1] != self.style_dim or style.shape[0] not in (1, n):
            raise UdasegError(
                f"style codes must be ({n}, {self.style_dim}) or (1, {self.style_dim}), "
                f"got {tuple(style.shape)}",
                hint="use codes from encode_style (or their cluster centres)",
            )
        return style.to(like.device, like.dtype).expand(n, -1)

    @torch.no_grad()
    def samples(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Panels (N, 1, H, W): source, translated (mean target style), reconstructed (translated
        back with the source image's own style), target, translated_back (mean source style)
        and styles (each source in the style of the target image beside it: multi-style)."""
        translated = self.translate(source)
        own = self.generator_ema["style_source"](source)
        return {
            "source": source,
            "translated": translated,
            "reconstructed": self.translate_back(translated, own),
            "target": target,
            "translated_back": self.translate_back(target),
            "styles": self.translate(source, self.encode_style(target)),
        }


# --- domain-style.v1 (GLUA) -------------------------------------------------------------------
