"""DAR-UNet, the 3D dual-attention residual U-Net of Yao et al., and its ResU-Net ablation baseline.

Follows Sec. III-B of the DAR-UNet paper (Fig. 5):

* five levels (channels 16/32/64/128/256) of pre-activation residual blocks (GroupNorm -> act ->
  conv, twice, plus the skip); the first two downsamplings use stride (1, 2, 2) and the last two
  (2, 2, 2) (Sec. III-B.3, "anisotropic resolution network"), so a 32x256x256 patch gives levels
  32x256x256, 32x128x128, 32x64x64, 16x32x32, 8x16x16;
* VAM (Sec. III-B.1) on every skip connection: a voxel-wise attention map computed from the encoder
  feature X_e and the decoder feature X_d re-weights X_d before it is upsampled and concatenated
  with X_e;
* QAM (Sec. III-B.2, Eq. for y) in every residual block: four branches, one per view (D,H,W),
  (C,H,W), (C,D,W), (C,D,H); each Z-pools (max and mean) the remaining axis, applies a 3D conv of
  size k and a sigmoid, gates its view, and the four gated tensors are averaged;
* deep supervision (Sec. III-B.4): a 1x1x1 head on each of the five levels (the bottleneck and
  the four decoder levels), upsampled trilinearly to the input size, and a primary head that fuses
  the five (a 1x1x1 conv over their concatenation).

Interpretations where the text leaves details open (documented so they can be revisited):

* the first level starts with a plain 3x3x3 conv from the image (pre-activating a 1-channel image
  with GroupNorm would only normalise it), followed by a residual block;
* downsampling is a strided first conv in the level's residual block (with a strided 1x1x1
  projection on the skip); upsampling is a transposed conv with kernel = stride;
* VAM is an additive attention gate evaluated at the decoder's resolution: max-pooled X_e and X_d
  are projected by 1x1x1 convs, summed, GN -> LeakyReLU -> 1x1x1 conv -> sigmoid gives a one-channel
  map that multiplies X_d;
* QAM sits on the residual branch of a block (before the skip is added), convs have k = 7 (as in
  triplet attention, which QAM extends) and no normalisation, as the equation has none;
* activations are LeakyReLU(0.01); GroupNorm uses groups of 8 channels (fewer for narrow variants).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from udaseg.errors import UdasegError
from udaseg.models.blocks import as_int_tuple, group_count, resize_to
from udaseg.models.registry import register_model

DEFAULT_CHANNELS = (16, 32, 64, 128, 256)
DEFAULT_STRIDES = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))

# DAR-UNet Sec. IV-A: AdaBelief (here AdamW, its closest built-in relative; AdaBelief's default has
# no weight decay), lr 5e-4 with cosine decay, 100 epochs at batch 2 of 32x256x256 sub-volumes,
# soft Dice + 10 x Focal on every prediction branch. 25k steps ~ 100 epochs of the CrossMoDA source
# set (105 volumes x 5 styles, one crop each, batch 2).
DARUNET_HPARAMS = {
    "optimizer": "adamw",
    "lr": 5e-4,
    "betas": [0.9, 0.999],
    "weight_decay": 0.0,
    "schedule": "cosine",
    "loss": "dice_focal",
    "aux_weight": 1.0,
    "batch_size": 2,
    "patch_size": [32, 256, 256],
    "steps": 25000,
}

TINY_3D = {"channels": [4, 8, 8, 8, 8]}

# the four QAM views as permutations of (N, C, D, H, W): the pooled axis moves to position 1
QAM_VIEWS = {
    "dhw": (0, 1, 2, 3, 4),  # pool C, gate (D, H, W)
    "chw": (0, 2, 1, 3, 4),  # pool D, gate (C, H, W)
    "cdw": (0, 3, 1, 2, 4),  # pool H, gate (C, D, W)
    "cdh": (0, 4, 1, 2, 3),  # pool W, gate (C, D, H)
}


def _act() -> nn.Module:
    return nn.LeakyReLU(0.01, inplace=True)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels), channels)


class ZPool(nn.Module):
    """Concatenate max and mean over axis 1: (N, A, X, Y, Z) -> (N, 2, X, Y, Z)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)


class QAMBranch(nn.Module):
    """One QAM branch: permute to the view, Z-pool, conv k^3 + sigmoid, gate, permute back."""

    def __init__(self, perm: Sequence[int], kernel: int = 7) -> None:
        super().__init__()
        self.perm = tuple(perm)
        self.inverse = tuple(sorted(range(5), key=lambda i: self.perm[i]))
        self.pool = ZPool()
        self.conv = nn.Conv3d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = x.permute(self.perm)
        gated = view * torch.sigmoid(self.conv(self.pool(view)))
        return gated.permute(self.inverse)


class QuartetAttention(nn.Module):
    """QAM: the mean of the four branch outputs. (N, C, D, H, W) -> same shape."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.branches = nn.ModuleList(QAMBranch(p, kernel) for p in QAM_VIEWS.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches) / len(self.branches)


class PreActBlock(nn.Module):
    """Pre-activation residual block, (N, cin, D, H, W) -> (N, cout, D/sd, H/sh, W/sw).

    residual = [GN -> act -> conv3 (stride)] -> [GN -> act -> conv3] -> QAM (optional);
    skip = identity, or a strided 1x1x1 conv where the width or resolution changes.
    """

    def __init__(
        self, cin: int, cout: int, stride: Sequence[int] = (1, 1, 1), qam_kernel: int | None = 7
    ) -> None:
        super().__init__()
        stride = tuple(stride)
        self.body = nn.Sequential(
            _gn(cin), _act(), nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
            _gn(cout), _act(), nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        )  # fmt: skip
        self.qam = QuartetAttention(qam_kernel) if qam_kernel else nn.Identity()
        self.skip: nn.Module = nn.Identity()
        if cin != cout or stride != (1, 1, 1):
            self.skip = nn.Conv3d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.qam(self.body(x))


class VoxelAttention(nn.Module):
    """VAM: gate the decoder feature X_d with a map from X_e and X_d, upsample, concat with X_e.

    x_e (N, ce, D, H, W) at the finer level, x_d (N, cd, D/s, H/s, W/s) -> (N, 2 * ce, D, H, W).
    """

    def __init__(self, ce: int, cd: int, stride: Sequence[int]) -> None:
        super().__init__()
        stride = tuple(stride)
        self.pool = nn.MaxPool3d(stride, stride)
        self.proj_e = nn.Conv3d(ce, cd, 1)
        self.proj_d = nn.Conv3d(cd, cd, 1, bias=False)
        self.score = nn.Sequential(_gn(cd), _act(), nn.Conv3d(cd, 1, 1))
        self.up = nn.ConvTranspose3d(cd, ce, stride, stride=stride)

    def attention(self, x_e: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """The voxel-wise map (N, 1, D/s, H/s, W/s) in (0, 1)."""
        return torch.sigmoid(self.score(self.proj_e(self.pool(x_e)) + self.proj_d(x_d)))

    def forward(self, x_e: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.up(x_d * self.attention(x_e, x_d)), x_e], dim=1)


class SkipConcat(nn.Module):
    """The plain U-Net skip: upsample X_d (transposed conv), concat with X_e (no attention)."""

    def __init__(self, ce: int, cd: int, stride: Sequence[int]) -> None:
        super().__init__()
        stride = tuple(stride)
        self.up = nn.ConvTranspose3d(cd, ce, stride, stride=stride)

    def forward(self, x_e: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.up(x_d), x_e], dim=1)


def _check_strides(strides: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    strides = list(strides)
    if len(strides) != 4:
        raise UdasegError(f"strides needs 4 (d, h, w) triples, got {len(strides)}", exit_code=2)
    return tuple(as_int_tuple(s, 3, "stride") for s in strides)


class ResUNet3D(nn.Module):
    """3D residual U-Net with anisotropic strides and deep supervision; VAM/QAM optional.

    Input (N, in_channels, D, H, W) with D, H, W divisible by the product of the strides per axis
    (4, 16, 16 by default; a clear UdasegError otherwise). Output dict: "logits" (N, num_classes,
    D, H, W) from the fused primary head, "aux" = the five per-level heads (bottleneck first ...
    full resolution last, each (N, num_classes, D, H, W)), "features" = the bottleneck
    (N, channels[-1], D/4, H/16, W/16 by default).

    Args:
        in_channels: image channels (1).
        num_classes: classes including background.
        channels: widths of the five levels (16, 32, 64, 128, 256).
        strides: the four (d, h, w) downsampling strides ((1,2,2), (1,2,2), (2,2,2), (2,2,2)).
        qam_kernel: QAM conv size k (7); 0 or None disables QAM.
        vam: use VAM on the skip connections (True) or plain concatenation (False).
        deep_supervision: per-level heads fused into the primary head (True), or one head on the
            last decoder level and aux = [] (False).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        strides: Sequence[Sequence[int]] = DEFAULT_STRIDES,
        qam_kernel: int | None = 7,
        vam: bool = True,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        ch = as_int_tuple(channels, 5, "channels")
        self.strides = _check_strides(strides)
        self.encoder = self._build_encoder(in_channels, ch, qam_kernel)
        skip = VoxelAttention if vam else SkipConcat
        # decoder modules ordered deepest first, the order they run in
        self.skips = nn.ModuleList(
            skip(ch[i], ch[i + 1], self.strides[i]) for i in reversed(range(4))
        )
        self.decoder = nn.ModuleList(
            PreActBlock(2 * ch[i], ch[i], qam_kernel=qam_kernel) for i in reversed(range(4))
        )
        self.deep_supervision = deep_supervision
        n_heads = 5 if deep_supervision else 1
        self.heads = nn.ModuleList(
            nn.Conv3d(c, num_classes, 1) for c in list(reversed(ch))[-n_heads:]
        )
        self.fuse = nn.Conv3d(5 * num_classes, num_classes, 1) if deep_supervision else None

    def _build_encoder(self, cin: int, ch: tuple[int, ...], k: int | None) -> nn.ModuleList:
        first = nn.Sequential(
            nn.Conv3d(cin, ch[0], 3, padding=1), PreActBlock(ch[0], ch[0], qam_kernel=k)
        )
        rest = [PreActBlock(ch[i], ch[i + 1], self.strides[i], qam_kernel=k) for i in range(4)]
        return nn.ModuleList([first, *rest])

    def divisor(self) -> tuple[int, int, int]:
        """What D, H, W must be divisible by: the product of the strides per axis."""
        return tuple(math.prod(s[axis] for s in self.strides) for axis in range(3))

    def check_input(self, x: torch.Tensor) -> None:
        size, div = tuple(x.shape[2:]), self.divisor()
        if x.dim() != 5 or any(n % d for n, d in zip(size, div, strict=True)):
            raise UdasegError(
                f"3D U-Net input must be (N, C, D, H, W) with D, H, W divisible by {div}, "
                f"got shape {tuple(x.shape)}",
                hint=f"crop or pad patches to multiples of {div}, e.g. 32x256x256",
            )

    def forward(self, x: torch.Tensor) -> dict:
        self.check_input(x)
        levels = []
        h = x
        for level in self.encoder:
            h = level(h)
            levels.append(h)
        features = levels.pop()
        outs, h = [features], features
        for skip, block in zip(self.skips, self.decoder, strict=True):
            h = block(skip(levels.pop(), h))
            outs.append(h)
        return self._predict(outs, x.shape[2:], features)

    def _predict(self, outs: list[torch.Tensor], size, features: torch.Tensor) -> dict:
        if not self.deep_supervision:
            return {"logits": self.heads[0](outs[-1]), "aux": [], "features": features}
        aux = [resize_to(head(o), size) for head, o in zip(self.heads, outs, strict=True)]
        return {"logits": self.fuse(torch.cat(aux, dim=1)), "aux": aux, "features": features}


@register_model(
    "dar-unet.v1",
    dims=3,
    hparams=DARUNET_HPARAMS,
    tiny=TINY_3D,
    description="DAR-UNet: 3D anisotropic residual U-Net with VAM, QAM and deep supervision",
)
class DARUNet(ResUNet3D):
    """DAR-UNet (VAM on skips, QAM in every residual block). See :class:`ResUNet3D` for the
    layouts and kwargs; ``vam`` is always on here."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        strides: Sequence[Sequence[int]] = DEFAULT_STRIDES,
        qam_kernel: int = 7,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__(
            in_channels, num_classes, channels, strides, qam_kernel, True, deep_supervision
        )


@register_model(
    "resunet3d.v1",
    dims=3,
    hparams=DARUNET_HPARAMS,
    tiny=TINY_3D,
    description="3D anisotropic residual U-Net: DAR-UNet without VAM and QAM (ablation baseline)",
)
class PlainResUNet3D(ResUNet3D):
    """DAR-UNet's ablation baseline: same network without VAM and QAM. Kwargs as
    :class:`ResUNet3D` minus ``qam_kernel`` and ``vam``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        strides: Sequence[Sequence[int]] = DEFAULT_STRIDES,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__(in_channels, num_classes, channels, strides, None, False, deep_supervision)
