"""Discriminators, in one module for every adversarial method (translation and adaptation).

- :class:`PatchDiscriminator` — the 70x70 PatchGAN of CycleGAN/SIFA: 4x4 convolutions with
  widths 64-128-256-512-1, stride 2 except the last two layers, instance norm and leaky ReLU 0.2
  after every layer but the first and the last. Input (N, C, H, W) -> patch map
  (N, 1, H/8 - 2, W/8 - 2).
- :class:`MultiScaleDiscriminator` — several patch discriminators on the image downsampled by
  2, 4, ... (MUNIT / DAR-UNet); returns a list of maps.
- :class:`FCDiscriminator` — the fully-convolutional output-space discriminator of
  AdaptSegNet/ADVENT (4x4 convs, stride 2, widths 64-128-256-512-1, leaky ReLU 0.2, no norm), for
  softmax or entropy maps.
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
