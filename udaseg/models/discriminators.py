"""Discriminators, in one module for every adversarial method (translation and adaptation).

- :class:`PatchDiscriminator` — the 70x70 PatchGAN of CycleGAN/SIFA: 4x4 convolutions with
  widths 64-128-256-512-1, stride 2 except the last two layers, instance norm and leaky ReLU 0.2
  after every layer but the first and the last. Input (N, C, H, W) -> patch map
  (N, 1, H/8 - 2, W/8 - 2).
- :class:`MultiScaleDiscriminator` — several patch discriminators on the image downsampled by
  2, 4, ... (MUNIT / DAR-UNet); returns a list of maps.
- :class:`PixelDiscriminator` — 1x1-conv discriminator judging each feature vector (GLUA D1).
- :class:`FCDiscriminator` — the fully-convolutional output-space discriminator of
  AdaptSegNet/ADVENT (4x4 convs, stride 2, widths 64-128-256-512-1, leaky ReLU 0.2, no norm), for
  softmax or entropy maps.
- :class:`AuxPatchDiscriminator` — SIFA's source discriminator D_s: the PatchGAN with a second
  output head for its auxiliary task.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator.

    Args:
        in_channels: image (or feature/probability map) channels.
        width: channels of the first layer (64 in the papers), doubled per layer up to 8x.
        layers: number of stride-2 layers (3 gives the 70x70 receptive field).
        norm: "instance" (CycleGAN), "batch" or "none".
    """

    def __init__(
        self, in_channels: int = 1, width: int = 64, layers: int = 3, norm: str = "instance"
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = width
        for i in range(1, layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [
                nn.Conv2d(channels, out, 4, stride, 1),
                _norm(norm, out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiScaleDiscriminator(nn.Module):
    """``scales`` patch discriminators on the input at full, 1/2, 1/4, ... resolution."""

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        layers: int = 3,
        scales: int = 3,
        norm: str = "none",
    ) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(in_channels, width, layers, norm) for _ in range(scales)
        )
        self.down = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, discriminator in enumerate(self.discriminators):
            if i:
                x = self.down(x)
            outputs.append(discriminator(x))
        return outputs


class FCDiscriminator(nn.Module):
    """Output-space discriminator of AdaptSegNet/ADVENT on (N, C, H, W) probability/entropy
    maps -> (N, 1, H/32, W/32) logits (five stride-2 layers)."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        widths = [in_channels, width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class PixelDiscriminator(nn.Module):
    """Pixel-wise discriminator on feature maps (GLUA's D1): 1x1 convolutions widths
    in -> width -> width/2 -> 1 with leaky ReLU 0.2, so each position is judged on its own feature
    vector. (N, C, h, w) -> (N, 1, h, w) logits at the input's resolution."""

    def __init__(self, in_channels: int, width: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width // 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 2, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallMapDiscriminator(nn.Module):
    """Discriminator that accepts maps of any size down to 1x1 (BiGL's bottleneck features and
    attention matrices, which can be 4x4 to 16x16 where the 4x4 kernels of the patch and FC
    discriminators shrink them to nothing): ``layers`` 3x3 convolutions with stride 2 and padding
    1 (a side s becomes ceil(s / 2), never 0), widths width, 2 width, ... capped at 8 width, leaky
    ReLU 0.2, no normalisation (instance norm is undefined on 1x1 maps), then a 3x3 convolution to
    one channel. (N, C, H, W) -> (N, 1, ceil(H / 2**layers), ceil(W / 2**layers)) logits."""

    def __init__(self, in_channels: int, width: int = 64, layers: int = 4) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_channels
        for i in range(layers):
            out = width * min(2**i, 8)
            blocks += [nn.Conv2d(channels, out, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 3, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AuxPatchDiscriminator(nn.Module):
    """SIFA's D_s (Chen et al., TMI 2020, Sec. III-B.3): a PatchGAN with two output heads.

    The shared layers are those of :class:`PatchDiscriminator` up to its last convolution;
    ``head`` tells real source images from generated ones (the usual GAN task), ``aux_head`` tells
    source images reconstructed from translated source, U(E(x_s->t)), from source-like images
    made from real target, U(E(x_t)) (the auxiliary task that aligns E's features).

    (N, C, H, W) -> two (N, 1, H/8 - 2, W/8 - 2) maps of logits: (main, auxiliary).
    """

    def __init__(
        self, in_channels: int = 1, width: int = 64, layers: int = 3, norm: str = "instance"
    ) -> None:
        super().__init__()
        patch = PatchDiscriminator(in_channels, width, layers, norm)
        self.trunk = patch.net[:-1]
        self.head = patch.net[-1]
        self.aux_head = nn.Conv2d(self.head.in_channels, 1, 4, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return self.head(features), self.aux_head(features)
