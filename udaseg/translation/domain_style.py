"""GLUA's feature-disentanglement synthesis subnet: ``domain-style.v1``.

It follows the contract of :mod:`udaseg.translation.registry` (images (N, 1, H, W) in [-1, 1]).

"Mind the Gap", Sec. III-B.1 and IV-A.1: one shared AdaIN auto-encoder whose style is a learned
per-domain code (an MLP of the one-hot domain label gives the AdaIN parameters of both the encoder,
c_i = G_E(x_i, d_i), and the decoder, x_ij = G_D(c_i, d_j)), and one Markovian (PatchGAN)
discriminator conditioned on the domain, D_i(x) = D(x | d_i)
(:class:`~udaseg.translation.adain.ConditionalPatchDiscriminator`).

Shared AdaIN building blocks: :mod:`udaseg.translation.adain`; the design notes on the decoders
are in :mod:`udaseg.translation.disentangled`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.errors import UdasegError
from udaseg.losses.gan import discriminator_loss, gan_loss, set_requires_grad
from udaseg.translation.adain import (
    Autocast,
    ConditionalPatchDiscriminator,
    ContentEncoder,
    Decoder,
    adam,
    check_images,
    l1,
    mlp,
    pad_to_multiple,
    scalars,
    weighted_total,
)
from udaseg.translation.registry import register_translator

SOURCE, TARGET = 0, 1  # domain labels

# GLUA (Sec. IV-A.1): Adam, batch 8, learning rate 2e-4 (one rate stated, used for both), weight
# decay 1e-4, 50k iterations; lambda_rec.im = lambda_cyc = 20, lambda_rec.c = lambda_adv = 1.
# Betas and the GAN loss are not stated: (0.5, 0.999) and LSGAN.
DOMAIN_STYLE_HPARAMS: dict[str, Any] = {
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "betas": [0.5, 0.999],
    "weight_decay": 1e-4,
    "batch_size": 8,
    "patch_size": [256, 256],
    "steps": 50_000,
    "schedule": "constant",
    "lambda_image": 20.0,
    "lambda_cycle": 20.0,
    "lambda_content": 1.0,
    "lambda_adv": 1.0,
}

TINY_DOMAIN_STYLE = {"width": 4, "n_res": 1, "mlp_dim": 16, "disc_width": 4, "disc_layers": 2}


@register_translator(
    "domain-style.v1",
    has_style_codes=False,
    hparams=DOMAIN_STYLE_HPARAMS,
    tiny=TINY_DOMAIN_STYLE,
    description="GLUA's domain-style AdaIN auto-encoder (learned per-domain style, "
    "domain-conditioned PatchGAN)",
)
class DomainStyleTranslator(nn.Module):
    """GLUA's synthesis subnet ("Mind the Gap", Sec. III-B.1): one style per domain.

    ``style_mlp`` maps the one-hot domain label d (2,) to the AdaIN parameters of the encoder's
    residual blocks followed by those of the decoder's, so c_i = G_E(x_i, d_i) and
    x_ij = G_D(c_i, d_j). ``disc`` is D(x | d): real images of domain d vs translations into d.

    Args:
        width: first encoder width (64); content codes have 4 * width channels.
        n_res: AdaIN residual blocks in the encoder and in the decoder (4).
        mlp_dim: hidden width of the domain-style MLP (256).
        disc_width / disc_layers: the conditioned PatchGAN (64 / 3: 70x70 receptive field).
        lambda_image: L1 self-reconstruction x_ii, both domains (20).
        lambda_cycle: L1 cycle G_D(G_E(x_ij, d_j), d_i) vs x_i, both domains (20).
        lambda_content: L1 content reconstruction G_E(x_ij, d_j) vs c_i (1).
        lambda_adv: adversarial terms of both translations (1).
    """

    def __init__(
        self,
        width: int = 64,
        n_res: int = 4,
        mlp_dim: int = 256,
        disc_width: int = 64,
        disc_layers: int = 3,
        lambda_image: float = 20.0,
        lambda_cycle: float = 20.0,
        lambda_content: float = 1.0,
        lambda_adv: float = 1.0,
    ) -> None:
        super().__init__()
        self.weights = {
            "image_rec": float(lambda_image),
            "cycle": float(lambda_cycle),
            "content_rec": float(lambda_content),
            "adv": float(lambda_adv),
        }
        self.encoder = ContentEncoder(1, width, n_res, adain=True)
        self.decoder = Decoder(self.encoder.out_channels, n_res)
        self.style_mlp = mlp(2, mlp_dim, self.encoder.num_params + self.decoder.num_params)
        self.disc = ConditionalPatchDiscriminator(1, 2, disc_width, disc_layers)

    @property
    def generators(self) -> list[nn.Module]:
        return [self.encoder, self.decoder, self.style_mlp]

    def optimizers(self, hparams: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
        """Adam over encoder, decoder and style MLP (``lr_g``) and over the discriminator
        (``lr_d``), both with the hparams' ``weight_decay`` (GLUA: 1e-4)."""
        gen_params = [p for m in self.generators for p in m.parameters()]
        return {
            "generator": adam(gen_params, hparams["lr_g"], hparams),
            "discriminator": adam(self.disc.parameters(), hparams["lr_d"], hparams),
        }

    def domain_params(self, domain: int, n: int, like: torch.Tensor):
        """(encoder, decoder) AdaIN parameters of ``domain``, each (n, P)."""
        onehot = F.one_hot(torch.tensor([domain], device=like.device), 2).to(like.dtype)
        params = self.style_mlp(onehot).expand(n, -1)
        return params.split([self.encoder.num_params, self.decoder.num_params], dim=1)

    def encode(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        """(N, 1, H, W) of ``domain`` -> (N, 4 * width, H / 4, W / 4) content code."""
        return self.encoder(x, self.domain_params(domain, x.shape[0], x)[0])

    def decode(self, content: torch.Tensor, domain: int) -> torch.Tensor:
        """Content code -> (N, 1, 4h, 4w) image in ``domain``'s style, in [-1, 1]."""
        return self.decoder(content, self.domain_params(domain, content.shape[0], content)[1])

    # --- training ---------------------------------------------------------------------------

    def train_step(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        optimizers: dict[str, torch.optim.Optimizer],
        autocast: Autocast,
    ) -> dict[str, float]:
        """One iteration on unpaired (N, 1, H, W) batches (H, W divisible by 4).

        Returns unweighted ``image_rec``, ``cycle``, ``content_rec``, ``adv``, the weighted
        generator objective ``total``, and ``d_source`` / ``d_target`` (the conditioned
        discriminator's loss under each label; their sum is optimised).
        """
        set_requires_grad([self.disc], False)
        with autocast():
            out = self._forward(source, target)
            terms = self._generator_terms(source, target, out)
        total = weighted_total(terms, self.weights)
        optimizers["generator"].zero_grad(set_to_none=True)
        total.backward()
        optimizers["generator"].step()

        set_requires_grad([self.disc], True)
        with autocast():
            d_terms = {
                "d_source": discriminator_loss(
                    self.disc(source, SOURCE), self.disc(out["x_ts"].detach(), SOURCE)
                ),
                "d_target": discriminator_loss(
                    self.disc(target, TARGET), self.disc(out["x_st"].detach(), TARGET)
                ),
            }
        optimizers["discriminator"].zero_grad(set_to_none=True)
        sum(d_terms.values()).backward()
        optimizers["discriminator"].step()
        return scalars({**terms, "total": total, **d_terms})

    def _forward(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        c_s, c_t = self.encode(source, SOURCE), self.encode(target, TARGET)
        x_st, x_ts = self.decode(c_s, TARGET), self.decode(c_t, SOURCE)
        c_st, c_ts = self.encode(x_st, TARGET), self.encode(x_ts, SOURCE)
        out = {
            "c_s": c_s,
            "c_t": c_t,
            "x_ss": self.decode(c_s, SOURCE),
            "x_tt": self.decode(c_t, TARGET),
            "x_st": x_st,
            "x_ts": x_ts,
            "c_st": c_st,
            "c_ts": c_ts,
        }
        if self.weights["cycle"]:
            out["x_sts"], out["x_tst"] = self.decode(c_st, SOURCE), self.decode(c_ts, TARGET)
        return out

    def _generator_terms(self, source, target, out) -> dict[str, torch.Tensor]:
        zero = source.new_zeros((), dtype=torch.float32)
        cycle = l1(out["x_sts"], source) + l1(out["x_tst"], target) if "x_sts" in out else zero
        return {
            "image_rec": l1(out["x_ss"], source) + l1(out["x_tt"], target),
            "cycle": cycle,
            "content_rec": l1(out["c_st"], out["c_s"]) + l1(out["c_ts"], out["c_t"]),
            "adv": gan_loss(self.disc(out["x_st"], TARGET), True)
            + gan_loss(self.disc(out["x_ts"], SOURCE), True),
        }

    # --- inference ----------------------------------------------------------------------------

    def encode_style(self, images: torch.Tensor, domain: str = "target") -> torch.Tensor:
        raise UdasegError(
            "translation method domain-style.v1 has no per-image style codes",
            hint="it renders one learned style per domain; use disentangled.v1 for style codes",
            exit_code=2,
        )

    def translate(self, source: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """Source (N, 1, H, W) -> target appearance (N, 1, H, W) in [-1, 1] (the target domain's
        learned style; ``style`` must be None)."""
        return self._render(source, style, SOURCE, TARGET)

    def translate_back(self, target: torch.Tensor, style: torch.Tensor | None = None):
        """Target (N, 1, H, W) -> source appearance (the source domain's learned style)."""
        return self._render(target, style, TARGET, SOURCE)

    def _render(self, images, style, domain_in: int, domain_out: int) -> torch.Tensor:
        check_images(images, "images")
        if style is not None:
            raise UdasegError(
                "domain-style.v1 takes no style codes (one learned style per domain)",
                hint="call translate without style",
                exit_code=2,
            )
        padded, (h, w) = pad_to_multiple(images)
        return self.decode(self.encode(padded, domain_in), domain_out)[..., :h, :w]

    @torch.no_grad()
    def samples(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Panels (N, 1, H, W): source, translated, reconstructed (translated back), target,
        translated_back."""
        translated = self.translate(source)
        return {
            "source": source,
            "translated": translated,
            "reconstructed": self.translate_back(translated),
            "target": target,
            "translated_back": self.translate_back(target),
        }
