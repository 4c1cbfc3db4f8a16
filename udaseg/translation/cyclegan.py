"""Cycle-consistent image-to-image translators: ``cyclegan.v1`` and ``attention-cyclegan.v1``.

Both follow the contract of :mod:`udaseg.translation.registry`. Images are (N, 1, H, W) float32 in
the stores' normalised range [-1, 1]; every generator ends in tanh, so outputs stay in [-1, 1].

- ``cyclegan.v1`` — the CycleGAN of Zhu et al. as used for SIFA's image alignment (SIFA, Chen et
  al., Sec. III-A.1 and III-D): ResNet generators G_st (source -> target, SIFA's G_t) and G_ts
  (target -> source), 70x70 PatchGAN discriminators D_t and D_s, least-squares GAN loss, L1
  cycle consistency (weight 10) in both directions, optional identity loss (weight 0 as in SIFA;
  CycleGAN's choice is 0.5 * lambda_cycle = 5) and a 50-image history pool per discriminator.
- ``attention-cyclegan.v1`` — AttENT's attention-aware translator (Li et al., Sec. III-B, Eq. 1,
  and Sec. IV-A.3): the same CycleGAN training with U-Net-shaped generators whose skip
  connections pass through additive attention gates (Attention U-Net).

Per step (:meth:`CycleTranslator.train_step`): generators first (adversarial + cycle (+ identity)
(+ semantic), discriminators frozen), then the discriminators on real images against pooled fakes.

Opt-in, beyond the papers: semantic consistency (``lambda_semantic`` > 0, after CyCADA, Hoffman et
al. 2018). A frozen segmenter f trained on source labels (and able to read both modalities, e.g.
trained with GIN intensity augmentation) must read G_st(s) as the source label says and G_ts(t) as
it reads t itself. The aim is to keep the anatomy by what the segmenter sees rather than only by
the pixel cycle, so that a lower cycle weight leaves each organ free to take its own target tone;
measured with GIN-trained segmenters (docs/results/translation.md) it keeps shapes but does not
steer the organs' intensities, since such a segmenter accepts any tone.
The segmenter is attached with :meth:`CycleTranslator.use_semantic_model`; it is not part of the
translator's state (checkpoints and ``translate apply`` never need it).

Loss weights and the pool size are constructor kwargs (``lambda_cycle``, ``lambda_identity``,
``pool_size``) so they are saved with the checkpoint's kwargs; the translate stage passes the
hparams' values of the same keys into the constructor. ``optimizers(hparams)`` reads only
``lr_g``, ``lr_d`` and ``betas``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.data.sampling import IGNORE_INDEX
from udaseg.errors import UdasegError
from udaseg.losses.gan import discriminator_loss, gan_loss, set_requires_grad
from udaseg.models.discriminators import PatchDiscriminator
from udaseg.translation.registry import register_translator

Autocast = Callable[[], AbstractContextManager]

# SIFA (Sec. III-D): Adam 2e-4, 20k iterations; CycleGAN: batch 1, betas (0.5, 0.999), pool 50.
CYCLEGAN_HPARAMS: dict[str, Any] = {
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "betas": [0.5, 0.999],
    "batch_size": 1,
    "patch_size": [256, 256],
    "steps": 20000,
    "schedule": "constant",
    "lambda_cycle": 10.0,
    "lambda_identity": 0.0,
    "pool_size": 50,
}

# AttENT (Sec. IV-A.3): Adam with learning rate 0.001, 10k iterations, batch size 1, 256 x 256
# slices; betas, loss weights and the pool are not stated, so CycleGAN's are kept.
ATTENT_HPARAMS: dict[str, Any] = {
    **CYCLEGAN_HPARAMS,
    "lr_g": 1e-3,
    "lr_d": 1e-3,
    "steps": 10000,
}


# --- image history pool ----------------------------------------------------------------------


class ImagePool(nn.Module):
    """History of generated images shown to a discriminator (CycleGAN, after Shrivastava et al.).

    While fewer than ``size`` images are stored, each new image is stored and returned. Afterwards,
    with probability 0.5 a random stored image is returned and replaced by the new one, otherwise
    the new image is returned. Random draws use torch's global CPU generator, which the training
    loop checkpoints, so a resumed run draws the same choices.

    The images are a registered buffer of shape (size, C, H, W) plus a ``count`` buffer, so the
    pool is part of ``state_dict`` and resume is exact. H and W are fixed by the first query
    (training uses a fixed patch size); until then the buffer is (size, C, 0, 0), and loading a
    state dict adopts the saved spatial size.
    """

    def __init__(self, size: int = 50, channels: int = 1) -> None:
        super().__init__()
        self.size = int(size)
        self.register_buffer("images", torch.zeros(self.size, channels, 0, 0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) freshly generated images -> (N, C, H, W) float32 images for D (detached)."""
        images = images.detach().float()
        if self.size == 0:
            return images
        self._allocate(images)
        return torch.stack([self._swap(image) for image in images])

    def _swap(self, image: torch.Tensor) -> torch.Tensor:
        stored = int(self.count)
        if stored < self.size:
            self.images[stored] = image
            self.count += 1
            return image
        if float(torch.rand(())) < 0.5:
            index = int(torch.randint(self.size, ()))
            old = self.images[index].clone()
            self.images[index] = image
            return old
        return image

    def _allocate(self, images: torch.Tensor) -> None:
        """Fix the pool's spatial size at first use; refuse a different size later."""
        shape = (self.size, *images.shape[1:])
        if self.images.numel() == 0 and int(self.count) == 0:
            self.images = images.new_zeros(shape)
        elif tuple(self.images.shape) != shape:
            raise UdasegError(
                f"the image pool holds {tuple(self.images.shape[1:])} images but got "
                f"{tuple(images.shape[1:])}",
                hint="train a translator with one fixed patch size (the hparams' patch_size)",
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a fresh pool is (size, C, 0, 0): take the saved spatial size before copying the values
        saved = state_dict.get(prefix + "images")
        mismatch = saved is not None and saved.shape != self.images.shape
        if mismatch and saved.shape[:2] == self.images.shape[:2]:
            self.images = torch.zeros(saved.shape, device=self.images.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# --- CycleGAN ResNet generator ----------------------------------------------------------------


def _conv_in_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Reflection-padded conv -> instance norm -> ReLU (CycleGAN's c7s1-k / dk layers)."""
    pad = kernel // 2
    return [
        nn.ReflectionPad2d(pad),
        nn.Conv2d(cin, cout, kernel, stride=stride),
        nn.InstanceNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def generator_discriminator_adams(
    generators: list[nn.Module], discriminators: list[nn.Module], hparams: dict[str, Any]
) -> dict[str, torch.optim.Optimizer]:
    """``{"generator": .., "discriminator": ..}``: Adam over the generators' parameters at
    ``lr_g`` and the discriminators' at ``lr_d``, both with ``betas``, the GAN translators'
    two optimisers (parameters in module order, which checkpoints' optimiser states follow)."""
    betas = tuple(float(b) for b in hparams["betas"])

    def adam(modules: list[nn.Module], lr: float) -> torch.optim.Optimizer:
        params = [p for m in modules for p in m.parameters()]
        return torch.optim.Adam(params, lr=float(lr), betas=betas)

    return {
        "generator": adam(generators, hparams["lr_g"]),
        "discriminator": adam(discriminators, hparams["lr_d"]),
    }


class ResidualBlock(nn.Module):
    """Rk: two reflection-padded 3x3 convs with instance norm, added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_in_relu(channels, channels, 3),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's generator (SIFA's G_t, Sec. III-D: 3 convs, 9 residual blocks, 2 deconvs, 1 conv).

    Layers c7s1-w, d2w, d4w, ``blocks`` x R4w, u2w, uw, c7s1-1 + tanh, with w = ``width`` (64):
    (N, C, H, W) in [-1, 1] -> (N, C, H, W) in [-1, 1]; H and W should be multiples of 4.
    """

    def __init__(self, channels: int = 1, width: int = 64, blocks: int = 9) -> None:
        super().__init__()
        layers = [
            *_conv_in_relu(channels, width, 7),
            *_conv_in_relu(width, 2 * width, 3, stride=2),
            *_conv_in_relu(2 * width, 4 * width, 3, stride=2),
        ]
        layers += [ResidualBlock(4 * width) for _ in range(blocks)]
        for cin, cout in ((4 * width, 2 * width), (2 * width, width)):
            # fractionally strided 3x3 conv: exactly doubles H and W
            layers += [
                nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --- AttENT's attention-gated U-Net generator -------------------------------------------------


class ConvBlock(nn.Sequential):
    """Two reflection-padded 3x3 conv -> instance norm -> ReLU layers (a U-Net level)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(*_conv_in_relu(cin, cout, 3), *_conv_in_relu(cout, cout, 3))


class AttentionGate(nn.Module):
    """Additive attention gate (AttENT Eq. 1, after Attention U-Net).

    ``AG = f * sigmoid(W_theta(relu(W_f f + b_f + W_g g + b_g)) + b_theta)`` with 1x1 convolutions
    W_f, W_g (``channels`` -> ``inner``) and W_theta (``inner`` -> 1). ``f``: skip features from
    the encoder, (N, channels, H, W); ``g``: the gating signal, the coarser decoder feature
    upsampled to (N, channels, H, W). The map (N, 1, H, W) lies in [0, 1].
    """

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.w_f = nn.Conv2d(channels, inner, 1)
        self.w_g = nn.Conv2d(channels, inner, 1)
        self.psi = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(inner, 1, 1), nn.Sigmoid())

    def attention(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The attention coefficients (N, 1, H, W) in [0, 1]."""
        return self.psi(self.w_f(f) + self.w_g(g))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated skip features (N, channels, H, W) and the map (N, 1, H, W)."""
        alpha = self.attention(f, g)
        return f * alpha, alpha


class UpLevel(nn.Module):
    """A decoder level: upsample + conv (the gating signal g), gate the skip, concat, ConvBlock."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Sequential(*_conv_in_relu(cin, cout, 3))
        self.gate = AttentionGate(cout, max(1, cout // 2))
        self.block = ConvBlock(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # nearest upsampling to the skip's exact size also handles odd sizes after pooling
        g = self.up(F.interpolate(x, size=skip.shape[2:], mode="nearest"))
        gated, alpha = self.gate(skip, g)
        return self.block(torch.cat([gated, g], dim=1)), alpha


class AttentionUNetGenerator(nn.Module):
    """AttENT's generator: an encoder-decoder with attention-gated skip connections.

    Encoder: ConvBlock(C -> w), then ``depth`` x (2x2 max-pool, ConvBlock doubling the width), so
    widths w, 2w, ..., 2^depth w (64 ... 1024 at the defaults, the Attention U-Net layout).
    Decoder: per level an :class:`UpLevel` with one :class:`AttentionGate` on its skip, then a 1x1
    conv and tanh. (N, C, H, W) in [-1, 1] -> (N, C, H, W) in [-1, 1].
    """

    def __init__(self, channels: int = 1, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.stem = ConvBlock(channels, widths[0])
        self.down = nn.ModuleList(
            ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.up = nn.ModuleList(UpLevel(b, a) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.head = nn.Sequential(nn.Conv2d(widths[0], channels, 1), nn.Tanh())

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Translated image; with ``return_attention`` also the gates' maps, coarsest first."""
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        y, maps = skips.pop(), []
        for level in reversed(self.up):
            y, alpha = level(y, skips.pop())
            maps.append(alpha)
        out = self.head(y)
        return (out, maps) if return_attention else out


# --- the translators --------------------------------------------------------------------------


class CycleTranslator(nn.Module):
    """Two generators, two PatchGAN discriminators and two image pools, trained as CycleGAN.

    Subclasses only choose the generator architecture (:meth:`build_generator`).

    Args:
        channels: image channels (1).
        disc_width: first-layer width of the PatchGAN discriminators (64 in the papers).
        lambda_cycle: weight of each L1 cycle-consistency term (10).
        lambda_identity: weight of each L1 identity term ``|G_st(t) - t| + |G_ts(s) - s|`` (0 as
            SIFA; CycleGAN uses 0.5 * lambda_cycle); the term is skipped when 0.
        pool_size: images in each discriminator's history pool (50; 0 disables the pool).
        lambda_semantic: weight of each semantic-consistency cross-entropy (0: off; CyCADA uses
            1). Needs a segmenter attached with :meth:`use_semantic_model` and the source labels
            in :meth:`train_step`.
        generator_kwargs: passed to :meth:`build_generator`.
    """

    def __init__(
        self,
        channels: int = 1,
        disc_width: int = 64,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 0.0,
        pool_size: int = 50,
        lambda_semantic: float = 0.0,
        **generator_kwargs: Any,
    ) -> None:
        super().__init__()
        self.lambda_cycle = float(lambda_cycle)
        self.lambda_identity = float(lambda_identity)
        self.lambda_semantic = float(lambda_semantic)
        # kept in __dict__, not as a submodule: the frozen segmenter is no part of the
        # translator's state_dict, and train()/eval() of the translator leave it in eval mode
        self.__dict__["semantic_model"] = None
        self.G_st = self.build_generator(channels, **generator_kwargs)
        self.G_ts = self.build_generator(channels, **generator_kwargs)
        self.D_t = PatchDiscriminator(channels, width=disc_width)  # real target vs G_st(source)
        self.D_s = PatchDiscriminator(channels, width=disc_width)  # real source vs G_ts(target)
        self.pool_t = ImagePool(pool_size, channels)  # fakes shown to D_t
        self.pool_s = ImagePool(pool_size, channels)  # fakes shown to D_s

    def build_generator(self, channels: int, **kwargs: Any) -> nn.Module:
        raise NotImplementedError

    @property
    def needs_source_labels(self) -> bool:
        """Whether :meth:`train_step` needs the source batch's labels (semantic consistency)."""
        return self.lambda_semantic > 0

    def use_semantic_model(self, segmenter: nn.Module) -> None:
        """Attach the frozen segmenter of the semantic-consistency term: a registered segmentation
        model (input (N, 1, H, W) as the stores, output dict with "logits" (N, K+1, H, W)),
        already on the translator's device. It is put in eval mode and its weights frozen;
        gradients still flow through it to the generators."""
        segmenter.eval()
        set_requires_grad([segmenter], False)
        self.__dict__["semantic_model"] = segmenter

    @property
    def generators(self) -> list[nn.Module]:
        return [self.G_st, self.G_ts]

    @property
    def discriminators(self) -> list[nn.Module]:
        return [self.D_t, self.D_s]

    def optimizers(self, hparams: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
        """Adam over both generators (``lr_g``) and over both discriminators (``lr_d``)."""
        return generator_discriminator_adams(self.generators, self.discriminators, hparams)

    # --- training ---------------------------------------------------------------------------

    def train_step(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        optimizers: dict[str, torch.optim.Optimizer],
        autocast: Autocast,
        source_labels: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One CycleGAN iteration on unpaired (N, 1, H, W) batches: generators, then D_t and D_s.

        ``source_labels`` (N, H, W) int64 class indices of ``source`` (ignored voxels
        ``IGNORE_INDEX``) are needed only with semantic consistency (:attr:`needs_source_labels`).

        Returns floats: ``g_adv_t``, ``g_adv_s`` (LSGAN terms of G_st and G_ts), ``cycle_s``
        (|G_ts(G_st(s)) - s|), ``cycle_t`` (|G_st(G_ts(t)) - t|), ``identity`` (unweighted sum of
        both identity terms, only when lambda_identity > 0), ``semantic_s`` and ``semantic_t``
        (cross-entropies of f(G_st(s)) against the source label and of f(G_ts(t)) against
        f's reading of t, only when lambda_semantic > 0), ``d_t``, ``d_s`` (discriminator
        losses) and ``total`` (the weighted generator objective).
        """
        losses, fake_t, fake_s = self.update_generators(
            source, target, optimizers["generator"], autocast, source_labels
        )
        d_losses = self.update_discriminators(
            source, target, fake_t, fake_s, optimizers["discriminator"], autocast
        )
        return {k: float(v.detach()) for k, v in {**losses, **d_losses}.items()}

    def generator_losses(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        autocast: Autocast,
        source_labels: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The generator objective's terms (float32 scalars, ``total`` weighted) and the fakes."""
        with autocast():
            fake_t, fake_s = self.G_st(source), self.G_ts(target)
            rec_s, rec_t = self.G_ts(fake_t), self.G_st(fake_s)
            pred_t, pred_s = self.D_t(fake_t), self.D_s(fake_s)
        losses = {
            "g_adv_t": gan_loss(pred_t, True, "lsgan"),
            "g_adv_s": gan_loss(pred_s, True, "lsgan"),
            "cycle_s": F.l1_loss(rec_s.float(), source.float()),
            "cycle_t": F.l1_loss(rec_t.float(), target.float()),
        }
        total = (
            losses["g_adv_t"]
            + losses["g_adv_s"]
            + self.lambda_cycle * (losses["cycle_s"] + losses["cycle_t"])
        )
        if self.lambda_identity > 0:
            losses["identity"] = self._identity_loss(source, target, autocast)
            total = total + self.lambda_identity * losses["identity"]
        if self.lambda_semantic > 0:
            semantic = self._semantic_losses(fake_t, fake_s, target, source_labels, autocast)
            losses.update(semantic)
            total = total + self.lambda_semantic * (semantic["semantic_s"] + semantic["semantic_t"])
        losses["total"] = total
        return losses, fake_t, fake_s

    def _semantic_losses(
        self,
        fake_t: torch.Tensor,
        fake_s: torch.Tensor,
        target: torch.Tensor,
        source_labels: torch.Tensor | None,
        autocast: Autocast,
    ) -> dict[str, torch.Tensor]:
        """CyCADA's semantic consistency with the frozen segmenter f: CE(f(G_st(s)), y_s) and
        CE(f(G_ts(t)), argmax f(t)), float32 scalars."""
        segmenter = self.semantic_model
        if segmenter is None or source_labels is None:
            missing = "no frozen segmenter" if segmenter is None else "no source labels"
            raise UdasegError(
                f"lambda_semantic is {self.lambda_semantic:g} but the translator was given "
                f"{missing}",
                hint="pass --semantic-segmenter RUN (a segment-train run on the source labels) "
                "to `udaseg translate train`, or pass --set lambda_semantic=0",
                exit_code=2,
            )
        with autocast():
            with torch.no_grad():
                # f's own reading of the real target slices: the pseudo-label G_ts must keep
                reading = _logits(segmenter(target)).argmax(1)
            on_translated = _logits(segmenter(fake_t))
            on_back = _logits(segmenter(fake_s))
        return {
            "semantic_s": F.cross_entropy(
                on_translated.float(), source_labels.long(), ignore_index=IGNORE_INDEX
            ),
            "semantic_t": F.cross_entropy(on_back.float(), reading),
        }

    def _identity_loss(
        self, source: torch.Tensor, target: torch.Tensor, autocast: Autocast
    ) -> torch.Tensor:
        # a generator fed an image already in its output domain should leave it unchanged
        with autocast():
            same_t, same_s = self.G_st(target), self.G_ts(source)
        return F.l1_loss(same_t.float(), target.float()) + F.l1_loss(same_s.float(), source.float())

    def update_generators(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        autocast: Autocast,
        source_labels: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """One generator step with the discriminators frozen (no gradients reach them)."""
        set_requires_grad(self.discriminators, False)
        try:
            optimizer.zero_grad(set_to_none=True)
            losses, fake_t, fake_s = self.generator_losses(source, target, autocast, source_labels)
            losses["total"].backward()
            optimizer.step()
        finally:
            set_requires_grad(self.discriminators, True)
        return losses, fake_t.detach(), fake_s.detach()

    def update_discriminators(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        fake_t: torch.Tensor,
        fake_s: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        autocast: Autocast,
    ) -> dict[str, torch.Tensor]:
        """One step of D_t (real target vs pooled G_st fakes) and D_s (real source vs pooled
        G_ts fakes), each with the halved LSGAN objective."""
        pooled_t, pooled_s = self.pool_t.query(fake_t), self.pool_s.query(fake_s)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            real_t, false_t = self.D_t(target), self.D_t(pooled_t)
            real_s, false_s = self.D_s(source), self.D_s(pooled_s)
        d_t = discriminator_loss(real_t, false_t, "lsgan")
        d_s = discriminator_loss(real_s, false_s, "lsgan")
        (d_t + d_s).backward()
        optimizer.step()
        return {"d_t": d_t, "d_s": d_s}

    # --- inference --------------------------------------------------------------------------

    def translate(self, source: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """G_st: (N, 1, H, W) source images -> target appearance, in [-1, 1]. ``style`` is
        ignored (one fixed style)."""
        return self.G_st(source)

    def translate_back(
        self, target: torch.Tensor, style: torch.Tensor | None = None
    ) -> torch.Tensor:
        """G_ts: (N, 1, H, W) target images -> source appearance, in [-1, 1]."""
        return self.G_ts(target)

    def encode_style(self, images: torch.Tensor, domain: str = "target") -> torch.Tensor:
        raise UdasegError(
            f"{type(self).__name__} has no style codes",
            hint="style encoding applies only to translators registered with has_style_codes",
            exit_code=2,
        )

    @torch.no_grad()
    def samples(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Panels for the PNG grids, (N, 1, H, W) detached CPU float32 tensors in [-1, 1]."""
        translated, target_translated = self.G_st(source), self.G_ts(target)
        panels = {
            "source": source,
            "translated": translated,
            "reconstructed": self.G_ts(translated),
            "target": target,
            "target_translated": target_translated,
            "target_reconstructed": self.G_st(target_translated),
        }
        return {k: v.detach().float().cpu() for k, v in panels.items()}


def _logits(output: Any) -> torch.Tensor:
    """A registered segmentation model's logits (its forward returns a dict)."""
    return output["logits"] if isinstance(output, dict) else output


@register_translator(
    "cyclegan.v1",
    has_style_codes=False,
    hparams=CYCLEGAN_HPARAMS,
    tiny={"width": 4, "blocks": 1, "disc_width": 4},
)
class CycleGAN(CycleTranslator):
    """CycleGAN with ResNet generators (SIFA's image alignment, Sec. III-A.1 / III-D).

    Kwargs: ``width`` (64) and ``blocks`` (9) of both :class:`ResnetGenerator` s, plus those of
    :class:`CycleTranslator`.
    """

    def __init__(self, width: int = 64, blocks: int = 9, **kwargs: Any) -> None:
        super().__init__(width=width, blocks=blocks, **kwargs)

    def build_generator(self, channels: int, **kwargs: Any) -> nn.Module:
        return ResnetGenerator(channels, **kwargs)


@register_translator(
    "attention-cyclegan.v1",
    has_style_codes=False,
    hparams=ATTENT_HPARAMS,
    tiny={"width": 4, "depth": 2, "disc_width": 4},
)
class AttentionCycleGAN(CycleTranslator):
    """AttENT's attention-aware CycleGAN (Sec. III-B): attention-gated U-Net generators.

    Kwargs: ``width`` (64) and ``depth`` (4 poolings) of both :class:`AttentionUNetGenerator` s,
    plus those of :class:`CycleTranslator`.
    """

    def __init__(self, width: int = 64, depth: int = 4, **kwargs: Any) -> None:
        super().__init__(width=width, depth=depth, **kwargs)

    def build_generator(self, channels: int, **kwargs: Any) -> nn.Module:
        return AttentionUNetGenerator(channels, **kwargs)
