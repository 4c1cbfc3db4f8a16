"""Building blocks shared by the segmentation networks.

Layouts: 2D tensors are (N, C, H, W), 3D tensors are (N, C, D, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.errors import UdasegError


def norm2d(kind: str, channels: int) -> nn.Module:
    """A 2D normalisation layer: "batch" (BatchNorm) or "instance" (affine InstanceNorm)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise UdasegError(f'unknown norm "{kind}"', hint='use "batch" or "instance"', exit_code=2)


class ConvNormAct(nn.Sequential):
    """conv k x k -> norm -> ReLU (2D); padding keeps the spatial size at stride 1."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 3, dilation: int = 1, norm: str = "batch"
    ) -> None:
        pad = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
            norm2d(norm, cout),
            nn.ReLU(inplace=True),
        )


def group_count(channels: int, per_group: int = 8) -> int:
    """GroupNorm group count: about ``per_group`` channels per group, always dividing ``channels``.

    DAR-UNet normalises with groups of 8 channels; narrow test variants fall back to fewer groups
    (1 group = layer norm over the channels) instead of failing.
    """
    return math.gcd(channels, max(1, channels // per_group))


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Interpolate logits to ``size`` (bilinear in 2D, trilinear in 3D); no-op when equal."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def as_int_tuple(values: Sequence[int] | int, length: int, what: str) -> tuple[int, ...]:
    """Turn a kwarg given as int, tuple or (from a JSON checkpoint) list into a checked tuple."""
    if isinstance(values, int):
        values = [values] * length
    out = tuple(int(v) for v in values)
    if len(out) != length:
        raise UdasegError(f"{what} needs {length} values, got {len(out)}: {list(out)}", exit_code=2)
    return out
