"""SIFA's segmentation network: the dilated residual encoder E with classifiers C1 and C2.

Follows Chen et al., "Unsupervised Bidirectional Cross-Modality Adaptation via Deeply Synergistic
Image and Feature Alignment" (TMI 2020), Sec. III-E (network configurations) and Sec. III-B.2
(deep supervision). The encoder is

    C16, R16, M, R32, M, 2xR64, M, 2xR128, 4xR256, 2xR512, 2xD512, 2xC512

(Ck: 3x3 conv; Rk: residual block of two 3x3 convs; Dk: the same with dilation 2; M: 2x2 max-pool,
stride 2; every conv is followed by batch norm and ReLU), so the output stride is 8. C1 (1x1 conv)
reads the last 2xC512 block, C2 (1x1 conv) the 2xR512 block; both are upsampled bilinearly to the
input size. ``model.encoder`` is the E that SIFA's adaptation shares with the decoder U.
"""

from __future__ import annotations

import torch
from torch import nn

from udaseg.models.blocks import ConvNormAct, resize_to
from udaseg.models.registry import register_model

# Chen et al. TMI 2020, Sec. III-E: Adam 2e-4 for the whole framework, 20k iterations at batch 8,
# 256x256 slices, L_seg = CE + Dice, lambda_seg^2 = 0.1 for C2. The paper gives no Adam betas; the
# authors' release uses beta1 = 0.5 only for the adversarial modules and TensorFlow's default
# (0.9, 0.999) for the segmenter, plus an L2 penalty of 1e-4 on the segmenter's weights.
SIFA_HPARAMS = {
    "optimizer": "adam",
    "lr": 2e-4,
    "betas": [0.9, 0.999],
    "weight_decay": 1e-4,
    "schedule": "constant",
    "loss": "ce_dice",
    "aux_weight": 0.1,
    "batch_size": 8,
    "patch_size": [256, 256],
    "steps": 20000,
}


class ResidualBlock(nn.Module):
    """Rk / Dk: conv-BN-ReLU, conv-BN, plus the input (1x1 conv + BN when widths differ), ReLU.

    (N, cin, H, W) -> (N, cout, H, W). ``dilation=2`` gives SIFA's dilated residual block Dk.
    """

    def __init__(self, cin: int, cout: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, 3, dilation)
        self.conv2 = nn.Sequential(
            nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        )
        # a projection only where the width changes (R16 -> R32 etc.), identity otherwise
        self.skip: nn.Module = nn.Identity()
        if cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


def _stack(kind: str, count: int, cin: int, cout: int) -> list[nn.Module]:
    """``count`` layers of type C / R / D; the first one changes the width cin -> cout."""
    layers: list[nn.Module] = []
    for i in range(count):
        c = cin if i == 0 else cout
        if kind == "C":
            layers.append(ConvNormAct(c, cout, 3))
        else:
            layers.append(ResidualBlock(c, cout, dilation=2 if kind == "D" else 1))
    return layers


class SifaEncoder(nn.Module):
    """SIFA's encoder E: (N, in_channels, H, W) -> (N, 32 * base_channels, H/8, W/8).

    ``lower`` ends with the 2xR512 block (C2's input), ``upper`` is 2xD512 + 2xC512 (C1's input).
    ``widths`` lists the stage widths 16, 32, 64, 128, 256, 512 scaled by base_channels / 16.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 16) -> None:
        super().__init__()
        b = base_channels
        self.widths = [b, 2 * b, 4 * b, 8 * b, 16 * b, 32 * b]
        self.lower = nn.Sequential(
            *_stack("C", 1, in_channels, b),
            *_stack("R", 1, b, b),
            nn.MaxPool2d(2, 2),
            *_stack("R", 1, b, 2 * b),
            nn.MaxPool2d(2, 2),
            *_stack("R", 2, 2 * b, 4 * b),
            nn.MaxPool2d(2, 2),
            *_stack("R", 2, 4 * b, 8 * b),
            *_stack("R", 4, 8 * b, 16 * b),
            *_stack("R", 2, 16 * b, 32 * b),
        )
        self.upper = nn.Sequential(*_stack("D", 2, 32 * b, 32 * b), *_stack("C", 2, 32 * b, 32 * b))
        self.out_channels = 32 * b

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (2xR512 output, final 2xC512 output), both at stride 8."""
        mid = self.lower(x)
        return mid, self.upper(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


@register_model(
    "sifa-encoder.v1",
    dims=2,
    hparams=SIFA_HPARAMS,
    tiny={"base_channels": 2},
    description="SIFA segmenter: dilated residual encoder E + classifiers C1 (main), C2 (aux)",
)
class SifaSegmenter(nn.Module):
    """SIFA segmenter E o C1 with the deeply supervised C2 (TMI 2020, Sec. III-E).

    Input (N, in_channels, H, W); H and W need not be multiples of 8 (max-pools floor, logits are
    resized). Output dict: "logits" = C1 (N, num_classes, H, W), "aux" = [C2] (same shape),
    "features" = E's output (N, 32 * base_channels, ~H/8, ~W/8).

    Args:
        in_channels: image channels (1 for grey slices).
        num_classes: classes including background.
        base_channels: width of the first stage (16 in the paper); every stage scales with it.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 16) -> None:
        super().__init__()
        self.encoder = SifaEncoder(in_channels, base_channels)
        self.classifier = nn.Conv2d(self.encoder.out_channels, num_classes, 1)  # C1
        self.aux_classifier = nn.Conv2d(self.encoder.out_channels, num_classes, 1)  # C2

    def forward(self, x: torch.Tensor) -> dict:
        mid, features = self.encoder.forward_features(x)
        size = x.shape[2:]
        return {
            "logits": resize_to(self.classifier(features), size),
            "aux": [resize_to(self.aux_classifier(mid), size)],
            "features": features,
        }
