"""2D U-Nets: the plain U-Net (udaseg's CPU workhorse) and BiGL's dual-attention U-Net.

The U-Net follows Ronneberger et al. (MICCAI 2015) with normalisation added: per level two
conv3x3-norm-ReLU, 2x2 max-pool down, 2x2 transposed conv (or bilinear + 1x1 conv) up and
concatenation with the skip. The dual-attention U-Net follows He et al. (BiGL), Sec. 3.3: the
position- and channel-attention modules of DANet (Fu et al., CVPR 2019) sit between the encoder and
the decoder, i.e. on the bottleneck.

Input (N, in_channels, H, W) of any size: it is padded (edge-replicated) up to a multiple of
2**depth and the logits are cropped back, so "logits" always has the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.errors import UdasegError
from udaseg.models.blocks import ConvNormAct
from udaseg.models.registry import register_model

# A sensible CPU default (no paper): Adam 1e-3 with cosine decay, CE + Dice, batch 8 of 256x256.
UNET_HPARAMS = {
    "optimizer": "adam",
    "lr": 1e-3,
    "betas": [0.9, 0.999],
    "weight_decay": 0.0,
    "schedule": "cosine",
    "loss": "ce_dice",
    "aux_weight": 0.0,
    "batch_size": 8,
    "patch_size": [256, 256],
    "steps": 20000,
}

# BiGL Sec. 3.6: lr 5e-3 decayed by a poly policy with power 0.75, 150 epochs, random init, CE +
# generalised Dice (class weights 1/num). The optimiser, weight decay and batch size are not given:
# SGD with momentum 0.9 and weight decay 5e-4 is the usual pairing with a poly schedule at that
# rate; batch 8 and 50k steps are our stand-ins for "150 epochs". BraTS slices are 240x240.
BIGL_HPARAMS = {
    "optimizer": "sgd",
    "lr": 5e-3,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "poly",
    "poly_power": 0.75,
    "loss": "gdice_ce",
    "aux_weight": 0.0,
    "batch_size": 8,
    "patch_size": [240, 240],
    "steps": 50000,
}


class DoubleConv(nn.Sequential):
    """Two conv3x3-norm-ReLU layers: (N, cin, H, W) -> (N, cout, H, W)."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__(
            ConvNormAct(cin, cout, 3, norm=norm), ConvNormAct(cout, cout, 3, norm=norm)
        )


def _upsampler(cin: int, cout: int, up: str) -> nn.Module:
    if up == "transpose":
        return nn.ConvTranspose2d(cin, cout, 2, stride=2)
    if up == "bilinear":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(cin, cout, 1),
        )
    raise UdasegError(f'unknown up "{up}"', hint='use "transpose" or "bilinear"', exit_code=2)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


@register_model(
    "unet2d.v1",
    dims=2,
    hparams=UNET_HPARAMS,
    tiny={"base_channels": 4, "depth": 3},
    description="plain 2D U-Net (conv-norm-ReLU x2 per level), the CPU workhorse",
)
class UNet2D(nn.Module):
    """2D U-Net. Output dict: "logits" (N, num_classes, H, W), "aux" = [], "features" = the
    bottleneck (N, base_channels * 2**depth, ceil(H / 2**depth), ceil(W / 2**depth)).

    Args:
        in_channels: image channels (1 for grey slices).
        num_classes: classes including background.
        base_channels: width of the first level (16); each level doubles it.
        depth: number of 2x downsamplings (4).
        norm: "batch" (BatchNorm) or "instance" (InstanceNorm, for batch sizes of 1-2).
        up: "transpose" (2x2 transposed conv) or "bilinear" (bilinear upsampling + 1x1 conv).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 16,
        depth: int = 4,
        norm: str = "batch",
        up: str = "transpose",
    ) -> None:
        super().__init__()
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.bottleneck_channels = widths[-1]
        self.down = nn.ModuleList(
            DoubleConv(cin, cout, norm)
            for cin, cout in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        self.pool = nn.MaxPool2d(2, 2)
        # decoder modules ordered deepest first, the order they run in
        self.up = nn.ModuleList(
            _upsampler(widths[i + 1], widths[i], up) for i in reversed(range(depth))
        )
        self.decode = nn.ModuleList(
            DoubleConv(2 * widths[i], widths[i], norm) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def transform_bottleneck(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Hook for subclasses: change the bottleneck, return extra outputs. Identity here."""
        return x, {}

    def forward(self, x: torch.Tensor) -> dict:
        h_in, w_in = x.shape[2:]
        h = _pad_to_multiple(x, 2**self.depth)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        h, extra = self.transform_bottleneck(skips.pop())
        features = h
        for up, decode in zip(self.up, self.decode, strict=True):
            h = decode(torch.cat([skips.pop(), up(h)], dim=1))
        logits = self.head(h)[:, :, :h_in, :w_in]
        return {"logits": logits, "aux": [], "features": features, **extra}


class PositionAttention(nn.Module):
    """DANet position attention: every position attends to all positions of the map.

    (N, C, H, W) -> (gamma * attended (N, C, H, W), attention (N, HW, HW)); attention rows (one per
    query position) sum to 1. Query/key use C/8 channels as in DANet; gamma starts at 0.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (N, HW, C')
        k = self.key(x).flatten(2)  # (N, C', HW)
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # (N, HW, HW)
        v = self.value(x).flatten(2)  # (N, C, HW)
        out = torch.bmm(v, attn.transpose(1, 2)).view(n, c, h, w)
        return self.gamma * out, attn


class ChannelAttention(nn.Module):
    """DANet channel attention: each channel is a softmax-weighted sum of all channels.

    (N, C, H, W) -> (gamma * attended (N, C, H, W), attention (N, C, C)); gamma starts at 0. The
    affinity is the plain Gram matrix of the flattened channels, as in DANet's paper (Eq. 3).
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        flat = x.flatten(2)  # (N, C, HW)
        attn = torch.softmax(torch.bmm(flat, flat.transpose(1, 2)), dim=-1)  # (N, C, C)
        out = torch.bmm(attn, flat).view(n, c, h, w)
        return self.gamma * out, attn


class DualAttention(nn.Module):
    """x + gamma_p * PAM(x) + gamma_c * CAM(x): the two attention-masked features of BiGL Eq. (3),
    aggregated by summation with the shared identity counted once, so the block is exactly the
    identity at initialisation (both gammas 0). Returns (features, position attn, channel attn).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.position = PositionAttention(channels)
        self.channel = ChannelAttention()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos, pos_attn = self.position(x)
        cha, cha_attn = self.channel(x)
        return x + pos + cha, pos_attn, cha_attn


@register_model(
    "dual-attention-unet.v1",
    dims=2,
    hparams=BIGL_HPARAMS,
    tiny={"base_channels": 4, "depth": 3},
    description="BiGL's dual-attention U-Net: DANet position + channel attention at the bottleneck",
)
class DualAttentionUNet(UNet2D):
    """U-Net with DANet's dual attention on the bottleneck (BiGL, Sec. 3.3).

    Same kwargs and outputs as ``unet2d.v1``, plus, for BiGL's attention alignment:
    "position_attention" (N, hw, hw) and "channel_attention" (N, Cb, Cb), where hw is the number of
    bottleneck positions and Cb = base_channels * 2**depth. "features" is the post-attention
    bottleneck. Memory grows with hw**2: 256x256 inputs at depth 4 give hw = 256.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 16,
        depth: int = 4,
        norm: str = "batch",
        up: str = "transpose",
    ) -> None:
        super().__init__(in_channels, num_classes, base_channels, depth, norm, up)
        self.attention = DualAttention(self.bottleneck_channels)

    def transform_bottleneck(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        out, pos_attn, cha_attn = self.attention(x)
        return out, {"position_attention": pos_attn, "channel_attention": cha_attn}
