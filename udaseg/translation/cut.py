"""Contrastive Unpaired Translation: ``cut.v1`` (Park et al., ECCV 2020).

Follows the contract of :mod:`udaseg.translation.registry`. Images are (N, 1, H, W) float32 in the
stores' normalised range [-1, 1] (H and W multiples of 4); the generator ends in tanh.

One generator G (source -> target, udaseg's CycleGAN :class:`ResnetGenerator`), one PatchGAN
discriminator D on the target domain, and no cycle: the content is kept by the PatchNCE loss
(paper Sec. 3.1-3.2, Eq. 2-5). Per step, as the paper's optimisation order:

1. G renders the source batch x (and, with ``nce_idt``, the target batch y in the same pass):
   ŷ = G(x), ỹ = G(y);
2. D: the halved LSGAN objective on real y against ŷ (no image pool);
3. G and the PatchNCE heads (D frozen), minimising
   ``lambda_gan * L_GAN(G, D) + lambda_nce * L_PatchNCE(G, H, x)`` (Eq. 5), where with ``nce_idt``
   the NCE term is the mean of ``L_PatchNCE(x, ŷ)`` and the identity term ``L_PatchNCE(y, ỹ)``
   (CUT's default; FastCUT would drop it and weigh NCE 10).

PatchNCE (Eq. 2-4), per NCE layer l of G's encoder:

- features z_l of the input come from G's own forward pass; features of the output come from
  re-encoding it with the same encoder (the first layers of G);
- ``num_patches`` locations are drawn uniformly without replacement (one draw per layer, shared by
  the images of the batch) and the same locations are read in the input's and the output's
  features; each (C_l,) feature vector goes through a 2-layer MLP head H_l (Linear, ReLU, Linear,
  ``mlp_width`` outputs) and is L2-normalised;
- for each location, the output's vector (the query) must pick the input's vector at the same
  location (the positive) among the input's vectors at the other sampled locations of the same
  image (the negatives, Eq. 3: "internal" negatives only): cross-entropy over the
  (num_patches,) row of cosine similarities divided by the temperature ``nce_temperature``;
- the input's vectors (the keys) carry no gradient, as in the paper's implementation: only the
  query path (through the output and the encoder) is trained;
- the loss is averaged over locations, images and layers.

Feature points of the encoder, numbered for ``nce_layers``: 0 the input image (C channels), 1 the
first conv block (c7s1-w, w channels), 2 and 3 the two downsampling convs (2w, 4w), 3 + k the k-th
residual block (4w). The default (0, 2, 3, 4, 8) is the paper's choice: pixels, both downsampling
convs, the first and the fifth residual block.

Beyond the paper, opt-in: ``bidirectional=True`` adds a second generator (target -> source) with
its own discriminator on the source domain and its own NCE heads, trained the same way in the same
step (no cycle term couples the two); ``translate_back`` and BiGL need it. A one-way model
(:attr:`CUT.translates_back` false) refuses ``translate_back`` with an error naming the option.

Choices the paper leaves to its code, made here: the feature points are read after each block's
ReLU (not after the next layer's reflection padding); the heads are built in ``__init__`` from the
known channel counts (the paper builds them at first use), so ``state_dict`` holds every network
from the start and resume is exact; locations are drawn with torch's global CPU generator (which
the training loop checkpoints) on every device; the generator keeps udaseg's ResNet generator
without the paper's anti-aliased down/upsampling; PyTorch's default initialisation.
NCE logits, normalisation and every loss are float32 even when the forward passes run under bf16
autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.config.values import parse_ints
from udaseg.errors import UdasegError
from udaseg.losses.gan import discriminator_loss, gan_loss, set_requires_grad
from udaseg.models.discriminators import PatchDiscriminator
from udaseg.translation.cyclegan import (
    Autocast,
    ResidualBlock,
    ResnetGenerator,
    generator_discriminator_adams,
)
from udaseg.translation.registry import register_translator

# Park et al. (Sec. 4 and their default options): Adam 2e-4, betas (0.5, 0.999), batch 1,
# 256 x 256 crops, LSGAN, lambda_GAN = lambda_NCE = 1, tau = 0.07, 256 locations per layer, the
# identity NCE term on. Steps as cyclegan.v1 (SIFA's 20k), so the two compare at equal budgets.
CUT_HPARAMS: dict[str, Any] = {
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "betas": [0.5, 0.999],
    "batch_size": 1,
    "patch_size": [256, 256],
    "steps": 20000,
    "schedule": "constant",
    "lambda_gan": 1.0,
    "lambda_nce": 1.0,
    "nce_idt": True,
    "nce_temperature": 0.07,
    "num_patches": 256,
}

# the paper's five layers: pixels, both downsampling convs, the first and fifth residual block
DEFAULT_NCE_LAYERS = (0, 2, 3, 4, 8)


# --- G's encoder as feature points ---------------------------------------------------------------


def encoder_points(generator: ResnetGenerator, channels: int) -> list[tuple[int, int]]:
    """The encoder's feature points of ``generator``, in order: ``(index into generator.net after
    which the feature is read (-1: the input itself), channels)``. Point 0 is the input, then
    one point per conv-norm-ReLU block (c7s1-w, d2w, d4w) and one per residual block; the decoder
    (from the first transposed conv) has none."""
    points, width = [(-1, channels)], channels
    for index, layer in enumerate(generator.net):
        if isinstance(layer, nn.ConvTranspose2d):
            break
        if isinstance(layer, nn.Conv2d):
            width = layer.out_channels
        if isinstance(layer, nn.ReLU | ResidualBlock):
            points.append((index, width))
    return points


def run_recording(
    generator: ResnetGenerator, images: torch.Tensor, indices: Sequence[int], full: bool
) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
    """Run ``generator.net`` on (N, C, H, W) ``images``, keeping the outputs of the layers at
    ``indices`` (-1: the input). ``full``: run every layer and return the generator's output as
    well; else stop after the last recorded layer (an encode-only pass) and return None."""
    wanted, recorded = set(indices), {}
    if -1 in wanted:
        recorded[-1] = images
    last = len(generator.net) - 1 if full else max(wanted)
    x = images
    for index, layer in enumerate(generator.net):
        if index > last:
            break
        x = layer(x)
        if index in wanted:
            recorded[index] = x
    return (x if full else None), recorded


# --- PatchNCE ------------------------------------------------------------------------------------


class PatchNCEHeads(nn.Module):
    """One 2-layer MLP per NCE layer (Linear(C_l, d), ReLU, Linear(d, d), d = ``width``).

    Each head maps sampled (N, P, C_l) feature vectors to (N, P, d) embeddings (in the autocast
    dtype); L2 normalisation happens in float32 in :func:`patch_nce_loss`'s caller.
    """

    def __init__(self, channels: Sequence[int], width: int = 256) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, width), nn.ReLU(inplace=True), nn.Linear(width, width))
            for c in channels
        )

    def forward(self, vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [mlp(v) for mlp, v in zip(self.mlps, vectors, strict=True)]


def sample_locations(features: torch.Tensor, count: int) -> torch.Tensor:
    """(P,) int64 flat positions in an (N, C, H, W) feature map: ``min(count, H * W)`` distinct
    positions drawn uniformly (torch's global CPU generator, so resume repeats the draws on any
    device), on the features' device."""
    positions = features.shape[2] * features.shape[3]
    return torch.randperm(positions)[:count].to(features.device)


def gather_locations(features: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) features at (P,) flat positions -> (N, P, C) feature vectors."""
    return features.flatten(2)[:, :, locations].transpose(1, 2)


def patch_nce_loss(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over the sampled locations of each image (Eq. 3 with internal negatives only).

    Args:
        query: (N, P, D) embeddings of the output's features, L2-normalised along D.
        key: (N, P, D) embeddings of the input's features at the same P locations, L2-normalised;
            treated as constants (no gradient).
        temperature: tau (0.07), dividing the cosine similarities.

    Returns:
        A float32 scalar: the mean over the N * P locations of the cross-entropy of choosing the
        same location's key among the P keys of the same image. Its floor is 0; the value for
        unrelated embeddings is about log P.
    """
    query, key = query.float(), key.detach().float()
    similarities = torch.bmm(query, key.transpose(1, 2)) / temperature  # (N, P, P)
    # row i's positive is column i; every other column of the row is a negative of that image
    count = similarities.shape[1]
    positives = torch.arange(count, device=similarities.device).repeat(similarities.shape[0])
    return F.cross_entropy(similarities.flatten(0, 1), positives)


# --- the translator ------------------------------------------------------------------------------


class CUTDirection(nn.Module):
    """One direction of CUT: generator G, discriminator D on G's output domain, NCE heads."""

    def __init__(
        self, channels: int, width: int, blocks: int, disc_width: int, mlp_width: int, layers
    ) -> None:
        super().__init__()
        self.G = ResnetGenerator(channels, width=width, blocks=blocks)
        self.D = PatchDiscriminator(channels, width=disc_width)
        points = encoder_points(self.G, channels)
        self.heads = PatchNCEHeads([points[layer][1] for layer in layers], mlp_width)


def parse_nce_layers(value: str | Sequence[int] | int, points: int) -> tuple[int, ...]:
    """``nce_layers`` as given (``"0,2,3"`` from ``--set``, a list, one int) -> a tuple of
    distinct feature points in ``0 .. points - 1``, in the given order.

    Raises:
        UdasegError: naming ``--set nce_layers``, for a point outside the encoder or a repeat.
    """
    layers = tuple(parse_ints(value, "--set nce_layers"))
    bad = [layer for layer in layers if not 0 <= layer < points]
    if bad or not layers or len(set(layers)) != len(layers):
        raise UdasegError(
            f"--set nce_layers={','.join(map(str, layers))}: need distinct feature points in "
            f"0..{points - 1}" + (f" ({bad} outside the encoder)" if bad else ""),
            hint="0 input, 1 first conv, 2 and 3 the downsampling convs, 3+k the k-th residual "
            "block (so the blocks setting limits the largest point)",
            exit_code=2,
        )
    return layers


@register_translator(
    "cut.v1",
    has_style_codes=False,
    hparams=CUT_HPARAMS,
    tiny={
        "width": 4,
        "blocks": 1,
        "disc_width": 4,
        "mlp_width": 8,
        "nce_layers": [0, 2, 3, 4],
        "num_patches": 16,
    },
)
class CUT(nn.Module):
    """Contrastive Unpaired Translation (Park et al. 2020): one generator, PatchNCE, no cycle.

    Args:
        channels: image channels (1).
        width: w of the ResNet generator (64: c7s1-64, d128, d256).
        blocks: residual blocks of the generator (9).
        disc_width: first-layer width of the PatchGAN discriminator (64).
        mlp_width: output width (and hidden width) of each NCE head's MLP (256).
        nce_layers: encoder feature points used by PatchNCE (see the module docstring), a list
            or ``"0,2,3,4,8"``.
        num_patches: locations sampled per layer and image (256).
        nce_temperature: tau of the InfoNCE softmax (0.07).
        lambda_gan: weight of the generator's LSGAN term (1).
        lambda_nce: weight of the PatchNCE term (1).
        nce_idt: also apply PatchNCE between target images y and G(y) (the paper's identity
            term; True for CUT, False for FastCUT).
        bidirectional: add a target -> source generator with its own discriminator and heads, so
            ``translate_back`` works (BiGL needs it); off by default, as the paper.

    Raises:
        UdasegError: a bad ``nce_layers``, ``num_patches`` < 1 or ``nce_temperature`` <= 0.
    """

    def __init__(
        self,
        channels: int = 1,
        width: int = 64,
        blocks: int = 9,
        disc_width: int = 64,
        mlp_width: int = 256,
        nce_layers: str | Sequence[int] = DEFAULT_NCE_LAYERS,
        num_patches: int = 256,
        nce_temperature: float = 0.07,
        lambda_gan: float = 1.0,
        lambda_nce: float = 1.0,
        nce_idt: bool = True,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if int(num_patches) < 1 or float(nce_temperature) <= 0:
            raise UdasegError(
                f"cut.v1 needs num_patches >= 1 and nce_temperature > 0 (got {num_patches}, "
                f"{nce_temperature})",
                hint="the paper's values: --set num_patches=256 --set nce_temperature=0.07",
                exit_code=2,
            )
        self.nce_layers = parse_nce_layers(nce_layers, 4 + int(blocks))
        self.num_patches, self.temperature = int(num_patches), float(nce_temperature)
        self.lambda_gan, self.lambda_nce = float(lambda_gan), float(lambda_nce)
        self.nce_idt, self.bidirectional = bool(nce_idt), bool(bidirectional)
        args = (channels, width, blocks, disc_width, mlp_width, self.nce_layers)
        self.st = CUTDirection(*args)  # source -> target, D on the target domain
        self.ts = CUTDirection(*args) if self.bidirectional else None
        # layer indices in G.net of the NCE feature points (the same layout in both directions)
        points = encoder_points(self.st.G, channels)
        self._indices = [points[layer][0] for layer in self.nce_layers]

    @property
    def translates_back(self) -> bool:
        """Whether :meth:`translate_back` works (a target -> source generator was trained)."""
        return self.bidirectional

    @property
    def directions(self) -> list[tuple[str, CUTDirection]]:
        """``[("st", source -> target)]``, plus ``("ts", target -> source)`` when bidirectional."""
        return [("st", self.st)] + ([("ts", self.ts)] if self.ts is not None else [])

    @property
    def generators(self) -> list[nn.Module]:
        """What the "generator" optimiser updates: each G and its NCE heads."""
        return [m for _, d in self.directions for m in (d.G, d.heads)]

    @property
    def discriminators(self) -> list[nn.Module]:
        return [d.D for _, d in self.directions]

    def optimizers(self, hparams: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
        """Adam over the generator(s) and NCE heads (``lr_g``) and the discriminator(s)
        (``lr_d``), both with ``betas``."""
        return generator_discriminator_adams(self.generators, self.discriminators, hparams)

    # --- training ---------------------------------------------------------------------------

    def train_step(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        optimizers: dict[str, torch.optim.Optimizer],
        autocast: Autocast,
    ) -> dict[str, float]:
        """One CUT iteration on unpaired (N, 1, H, W) batches: forward, discriminator(s), then
        generator(s) and heads (the paper's order).

        Returns floats: ``g_adv_t`` (LSGAN term of G_st), ``nce_st`` (PatchNCE between source
        images and their translations), ``nce_idt_st`` (between target images and G_st of them,
        only with ``nce_idt``), ``d_t`` (D_t's loss); when bidirectional also ``g_adv_s``,
        ``nce_ts``, ``nce_idt_ts``, ``d_s``; and ``total`` (the weighted generator objective).
        """
        renders = {}
        with autocast():
            for key, direction in self.directions:
                x, y = (source, target) if key == "st" else (target, source)
                renders[key] = (x, y, *self._render(direction, x, y))
        d_losses = self._update_discriminators(renders, optimizers["discriminator"], autocast)
        g_losses = self._update_generators(renders, optimizers["generator"], autocast)
        return {k: float(v.detach()) for k, v in {**g_losses, **d_losses}.items()}

    def _render(
        self, direction: CUTDirection, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """G on x (and on y with ``nce_idt``, in one batch: instance norm keeps images apart):
        (2N or N, 1, H, W) outputs and the input's features at the NCE points."""
        images = torch.cat([x, y]) if self.nce_idt else x
        output, features = run_recording(direction.G, images, self._indices, full=True)
        return output, features

    def _update_discriminators(self, renders, optimizer, autocast) -> dict[str, torch.Tensor]:
        """One step of each D: real images of its domain against the fresh fakes (detached)."""
        optimizer.zero_grad(set_to_none=True)
        losses = {}
        for key, direction in self.directions:
            _, y, output, _ = renders[key]
            fake = output[: len(renders[key][0])].detach()
            with autocast():
                real_out, fake_out = direction.D(y), direction.D(fake)
            losses["d_t" if key == "st" else "d_s"] = discriminator_loss(real_out, fake_out)
        sum(losses.values()).backward()
        optimizer.step()
        return losses

    def _update_generators(self, renders, optimizer, autocast) -> dict[str, torch.Tensor]:
        """One step of the generator(s) and heads, the discriminator(s) frozen."""
        set_requires_grad(self.discriminators, False)
        try:
            optimizer.zero_grad(set_to_none=True)
            losses: dict[str, torch.Tensor] = {}
            total = torch.zeros((), device=renders["st"][0].device)
            for key, direction in self.directions:
                terms = self._generator_terms(direction, key, *renders[key], autocast)
                losses.update(terms)
                total = total + self._weighted(terms, key)
            losses["total"] = total
            total.backward()
            optimizer.step()
        finally:
            set_requires_grad(self.discriminators, True)
        return losses

    def _generator_terms(
        self, direction, key, x, y, output, features, autocast
    ) -> dict[str, torch.Tensor]:
        """The unweighted float32 generator terms of one direction."""
        n = len(x)
        with autocast():
            pred = direction.D(output[:n])
            # re-encode the outputs (translations and, with nce_idt, identity renders) with G's
            # encoder: the queries of PatchNCE
            _, encoded = run_recording(direction.G, output, self._indices, full=False)
        terms = {("g_adv_t" if key == "st" else "g_adv_s"): gan_loss(pred, True, "lsgan")}
        halves = [("nce_" + key, slice(0, n))]
        if self.nce_idt:
            halves.append(("nce_idt_" + key, slice(n, None)))
        for name, part in halves:
            keys = [features[i][part] for i in self._indices]
            queries = [encoded[i][part] for i in self._indices]
            terms[name] = self.patch_nce(direction.heads, keys, queries, autocast)
        return terms

    def _weighted(self, terms: dict[str, torch.Tensor], key: str) -> torch.Tensor:
        """Eq. 5: lambda_gan * GAN + lambda_nce * NCE, NCE the mean of the NCE and identity terms
        with ``nce_idt``."""
        adversarial = terms["g_adv_t" if key == "st" else "g_adv_s"]
        nce = terms["nce_" + key]
        if self.nce_idt:
            nce = 0.5 * (nce + terms["nce_idt_" + key])
        return self.lambda_gan * adversarial + self.lambda_nce * nce

    def patch_nce(
        self,
        heads: PatchNCEHeads,
        keys: Sequence[torch.Tensor],
        queries: Sequence[torch.Tensor],
        autocast: Autocast,
    ) -> torch.Tensor:
        """PatchNCE averaged over the NCE layers: per layer, ``keys`` (input features) and
        ``queries`` (the output's features), both (N, C_l, H_l, W_l), are read at the same
        ``num_patches`` random locations, embedded by the layer's head, L2-normalised in float32
        and compared by :func:`patch_nce_loss`. Returns a float32 scalar."""
        locations = [sample_locations(k, self.num_patches) for k in keys]
        with autocast():
            q = heads([gather_locations(f, at) for f, at in zip(queries, locations, strict=True)])
            with torch.no_grad():  # keys are constants: no graph through their embedding
                k = heads([gather_locations(f, at) for f, at in zip(keys, locations, strict=True)])
        losses = [
            patch_nce_loss(
                F.normalize(qi.float(), dim=-1), F.normalize(ki.float(), dim=-1), self.temperature
            )
            for qi, ki in zip(q, k, strict=True)
        ]
        return torch.stack(losses).mean()

    # --- inference --------------------------------------------------------------------------

    def translate(self, source: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """G_st: (N, 1, H, W) source images -> target appearance, in [-1, 1]. ``style`` is
        ignored (one fixed style)."""
        return self.st.G(source)

    def translate_back(
        self, target: torch.Tensor, style: torch.Tensor | None = None
    ) -> torch.Tensor:
        """G_ts: (N, 1, H, W) target images -> source appearance, in [-1, 1].

        Raises:
            UdasegError: the model is one-way (``bidirectional`` false): it has no target ->
                source generator.
        """
        if self.ts is None:
            raise UdasegError(
                "cut.v1 was trained one-way (source -> target): it has no target -> source "
                "generator, so it cannot translate back",
                hint="retrain with `udaseg translate train --method cut.v1 --set "
                "bidirectional=true` (needed by bigl.v1 and by cycle checks), or use a "
                "two-way translator such as cyclegan.v1",
                exit_code=2,
            )
        return self.ts.G(target)

    def encode_style(self, images: torch.Tensor, domain: str = "target") -> torch.Tensor:
        raise UdasegError(
            "cut.v1 has no style codes",
            hint="style encoding applies only to translators registered with has_style_codes",
            exit_code=2,
        )

    @torch.no_grad()
    def samples(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Panels for the PNG grids, (N, 1, H, W) detached CPU float32 tensors in [-1, 1].

        One-way there is no cycle, so "reconstructed" is the identity mapping G_st(target): the
        target slices as G renders them (what the identity NCE term keeps close to the "target"
        row below it), not a source -> target -> source round trip. Bidirectional models give
        the contract's round trip G_ts(G_st(source)) (not trained to close: CUT has no cycle
        loss) and "target_translated" / "target_reconstructed" as CycleGAN does.
        """
        translated = self.st.G(source)
        if self.ts is None:
            panels = {
                "source": source,
                "translated": translated,
                "reconstructed": self.st.G(target),
                "target": target,
            }
        else:
            back = self.ts.G(target)
            panels = {
                "source": source,
                "translated": translated,
                "reconstructed": self.ts.G(translated),
                "target": target,
                "target_translated": back,
                "target_reconstructed": self.st.G(back),
            }
        return {k: v.detach().float().cpu() for k, v in panels.items()}
