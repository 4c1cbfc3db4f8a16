"""Building blocks of the AdaIN translators ``disentangled.v1`` and ``domain-style.v1``.

Convolutions with instance norm, AdaIN (affine parameters from an MLP on a style code), content
and style encoders, the AdaIN decoder, the domain-conditioned PatchGAN discriminator and small
loss helpers. Images are (N, 1, H, W) float32 in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.errors import UdasegError
from udaseg.models.discriminators import PatchDiscriminator

Autocast = Callable[[], AbstractContextManager]


def conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Convolution with reflection padding ("same" size at stride 1): no dark zero borders."""
    return nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, padding_mode="reflect")


def conv_norm_relu(cin: int, cout: int, kernel: int, stride: int = 1, norm: str = "instance"):
    """conv -> norm ("instance" or "none") -> ReLU."""
    layers: list[nn.Module] = [conv(cin, cout, kernel, stride)]
    if norm == "instance":
        layers.append(nn.InstanceNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def adain(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Adaptive instance normalisation (Huang & Belongie 2017): ``gamma * IN(x) + beta``.

    Args:
        x: (N, C, H, W) features.
        params: (N, 2C) = [gamma, beta] straight from an MLP (as MUNIT, no +1 offset on the
            scale): styles start with independent random scales, so they differ from step 0.
    """
    gamma, beta = params.float().chunk(2, dim=1)
    normed = F.instance_norm(x.float())
    out = normed * gamma[:, :, None, None] + beta[:, :, None, None]
    return out.to(x.dtype)


class ResBlock(nn.Module):
    """Residual block conv3-IN-ReLU-conv3-IN (+ input): the content encoder's blocks."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_norm_relu(channels, channels, 3),
            conv(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class AdaINResBlock(nn.Module):
    """Residual block conv3-AdaIN-ReLU-conv3-AdaIN (+ input); ``params`` (N, 4C) per call."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv(channels, channels, 3)
        self.conv2 = conv(channels, channels, 3)
        self.num_params = 4 * channels

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        first, second = params.chunk(2, dim=1)
        h = F.relu(adain(self.conv1(x), first))
        return x + adain(self.conv2(h), second)


class AdaINConv(nn.Module):
    """conv -> AdaIN -> ReLU; ``params`` (N, 2 * cout) per call. In every decoder block (as
    StarGAN v2, not only MUNIT's residual blocks) because a style that must flip or remap
    intensities needs a style-controlled affine right before the output convolution."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = conv(cin, cout, kernel, stride)
        self.num_params = 2 * cout

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return F.relu(adain(self.conv(x), params))


class AdaINUp(AdaINConv):
    """nearest x2 upsampling -> conv5 -> AdaIN -> ReLU (upsampling without checkerboards)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 5)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, scale_factor=2.0, mode="nearest"), params)


class Styled(nn.Module):
    """Blocks that each take a slice of one parameter vector (N, num_params), split in order."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.sizes = [b.num_params for b in blocks]
        self.num_params = sum(self.sizes)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        for block, p in zip(self.blocks, params.split(self.sizes, dim=1), strict=True):
            x = block(x, p)
        return x


class ContentEncoder(nn.Module):
    """(N, C_in, H, W) image -> (N, 4 * width, H / 4, W / 4) content code.

    conv7 -> two stride-2 conv4 (width doubling) -> ``n_res`` residual blocks. Plain (DAR-UNet's
    shared G_enc_c, as MUNIT): instance norm everywhere, which strips the style statistics.
    ``adain=True`` (GLUA's c_i = G_E(x_i, d_i)): every normalisation is AdaIN driven by the input
    domain's parameters (N, num_params), so the encoder can undo each domain's rendering.
    """

    def __init__(self, in_channels: int, width: int, n_res: int, adain: bool = False) -> None:
        super().__init__()
        widths = [in_channels, width, 2 * width, 4 * width]
        kernels, strides = [7, 4, 4], [1, 2, 2]
        self.out_channels = 4 * width
        self.adain = adain
        layers = zip(widths[:-1], widths[1:], kernels, strides, strict=True)
        if adain:
            blocks = [AdaINConv(a, b, k, s) for a, b, k, s in layers]
            blocks += [AdaINResBlock(self.out_channels) for _ in range(n_res)]
            self.net: nn.Module = Styled(blocks)
            self.num_params = self.net.num_params
        else:
            convs = [conv_norm_relu(a, b, k, s) for a, b, k, s in layers]
            self.net = nn.Sequential(*convs, *(ResBlock(self.out_channels) for _ in range(n_res)))
            self.num_params = 0

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, params) if self.adain else self.net(x)


class StyleEncoder(nn.Module):
    """(N, C_in, H, W) image -> (N, style_dim) style code.

    conv7 -> four stride-2 conv4 (width doubling twice, then kept) -> global average pooling ->
    1x1 conv. No normalisation: instance norm would erase the statistics that are the style.
    """

    def __init__(self, in_channels: int, width: int, style_dim: int, downs: int = 4) -> None:
        super().__init__()
        layers, channels = [conv_norm_relu(in_channels, width, 7, norm="none")], width
        for i in range(downs):
            out = channels * 2 if i < 2 else channels
            layers.append(conv_norm_relu(channels, out, 4, 2, norm="none"))
            channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, style_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class Decoder(nn.Module):
    """(N, C, h, w) content code + (N, num_params) AdaIN parameters -> (N, C_out, 4h, 4w) in
    [-1, 1]: ``n_res`` AdaIN residual blocks, two AdaIN upsampling blocks (channels halved),
    conv7, tanh."""

    def __init__(self, channels: int, n_res: int, out_channels: int = 1) -> None:
        super().__init__()
        blocks: list[nn.Module] = [AdaINResBlock(channels) for _ in range(n_res)]
        blocks += [AdaINUp(channels, channels // 2), AdaINUp(channels // 2, channels // 4)]
        self.body = Styled(blocks)
        self.num_params = self.body.num_params
        self.head = nn.Sequential(conv(channels // 4, out_channels, 7), nn.Tanh())

    def forward(self, content: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(content, params))


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 3) -> nn.Sequential:
    """Linear-ReLU-...-Linear: code -> AdaIN parameters (MUNIT uses 3 layers of 256)."""
    dims = [in_dim] + [hidden] * (layers - 1)
    modules: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        modules += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    modules.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*modules)


class StyleDecoder(nn.Module):
    """DAR-UNet's shared decoder G_dec(c, s): content (N, C, h, w) + style (N, style_dim) ->
    image (N, 1, 4h, 4w) in [-1, 1]; an MLP maps the style code to every AdaIN parameter."""

    def __init__(self, channels: int, n_res: int, style_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.decoder = Decoder(channels, n_res)
        self.mlp = mlp(style_dim, mlp_dim, self.decoder.num_params)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.decoder(content, self.mlp(style))


class ConditionalPatchDiscriminator(nn.Module):
    """GLUA's domain-conditioned Markovian discriminator D(x | d).

    The one-hot domain label is broadcast to ``num_domains`` constant maps and concatenated to the
    image channels in front of a :class:`PatchDiscriminator` (why a new class: the project's
    discriminators take no condition). Input (N, C, H, W) and domain labels (N,) or an int ->
    patch map (N, 1, H/8 - 2, W/8 - 2) for the default three layers.
    """

    def __init__(
        self, in_channels: int = 1, num_domains: int = 2, width: int = 64, layers: int = 3
    ) -> None:
        super().__init__()
        self.num_domains = num_domains
        self.net = PatchDiscriminator(in_channels + num_domains, width, layers, norm="instance")

    def forward(self, x: torch.Tensor, domain: torch.Tensor | int) -> torch.Tensor:
        return self.net(torch.cat([x, domain_maps(domain, x, self.num_domains)], dim=1))


def domain_maps(domain: torch.Tensor | int, x: torch.Tensor, num_domains: int) -> torch.Tensor:
    """(N, num_domains, H, W) one-hot maps of the domain label(s), in ``x``'s dtype/device."""
    labels = torch.as_tensor(domain, device=x.device).expand(x.shape[0])
    onehot = F.one_hot(labels.long(), num_domains).to(x.dtype)
    return onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])


# --- shared helpers ---------------------------------------------------------------------------


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in float32 (losses stay float32 under bf16 autocast)."""
    return F.l1_loss(a.float(), b.float())


def adam(params, lr: float, hparams: dict[str, Any]) -> torch.optim.Adam:
    betas = tuple(float(b) for b in hparams["betas"])
    decay = float(hparams.get("weight_decay", 0.0))
    return torch.optim.Adam(list(params), lr=float(lr), betas=betas, weight_decay=decay)


def pad_to_multiple(x: torch.Tensor, multiple: int = 4) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad (N, C, H, W) at the bottom/right so H and W divide by ``multiple`` (the two
    stride-2 layers); returns the padded tensor and the original (H, W) to crop back to."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def check_images(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise UdasegError(
            f"{what} must be (N, 1, H, W) images, got shape {tuple(x.shape)}",
            hint="pass a batch of single-channel 2D slices",
        )


def scalars(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(value.detach()) for name, value in losses.items()}


def weighted_total(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    return sum(weights[name] * terms[name] for name in weights)


# --- disentangled.v1 (DAR-UNet) ---------------------------------------------------------------
