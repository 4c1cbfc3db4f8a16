"""DeepLab-v2 (ResNet-50/101 with atrous convolution and ASPP) as ADVENT, AttENT and GLUA use it.

Follows Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs" (TPAMI 2017), in the multi-level form of ADVENT that AttENT
(Li et al., Sec. IV-B "feature alignment in the entropy space") and GLUA (Su et al., Sec. III-B.2,
"Deeplab-ResNet50 as the segmentation backbone") build on:

* ResNet stem (7x7 conv stride 2, 3x3 max-pool stride 2) and four stages of bottleneck blocks;
  layer3 and layer4 keep stride 1 and use dilation 2 and 4 instead, so the output stride is 8;
* the classifier is ASPP-v2: the *sum* of four 3x3 convs with dilations 6/12/18/24 on layer4, and a
  second one on layer3 (ADVENT's auxiliary "conv4" prediction);
* both predictions are upsampled bilinearly to the input size.

No ImageNet weights: udaseg cannot download pretrained weights, so the network is trained from
scratch (as GLUA reports) with ordinary, trainable batch norm rather than DeepLab's frozen BN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from udaseg.errors import UdasegError
from udaseg.models.blocks import as_int_tuple, resize_to
from udaseg.models.registry import register_model

RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
ASPP_DILATIONS = (6, 12, 18, 24)

# ADVENT / GLUA (Sec. IV-A.1): SGD, momentum 0.9, weight decay 5e-4, poly decay with power 0.9,
# base lr 2.5e-4 (ADVENT), CE with the conv4 head weighted 0.1. AttENT trains its DeepLab with Adam
# 1e-4 for 20 epochs at batch 8; we keep the SGD hparams of ADVENT/GLUA and AttENT's batch of 8.
# 20k steps at batch 8 is on the scale of those runs (ADVENT: 120k steps at batch 1).
DEEPLAB_HPARAMS = {
    "optimizer": "sgd",
    "lr": 2.5e-4,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "poly",
    "poly_power": 0.9,
    "loss": "ce",
    "aux_weight": 0.1,
    "batch_size": 8,
    "patch_size": [256, 256],
    "steps": 20000,
}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (dilated) -> 1x1 residual block, 4x expansion.

    (N, cin, H, W) -> (N, 4 * planes, H / stride, W / stride). As in DeepLab-v2's ResNet the stride
    sits on the first 1x1 conv.
    """

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


def _layer(cin: int, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    layers = [Bottleneck(cin, planes, stride, dilation)]
    layers += [Bottleneck(planes * 4, planes, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ASPPClassifier(nn.Module):
    """DeepLab-v2 ASPP head: sum of 3x3 convs at dilations 6/12/18/24, each cin -> num_classes."""

    def __init__(self, cin: int, num_classes: int, dilations: Sequence[int] = ASPP_DILATIONS):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(cin, num_classes, 3, padding=d, dilation=d) for d in dilations
        )
        for conv in self.branches:  # DeepLab's classifier init: N(0, 0.01), zero bias
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


def _block_counts(depth: int, layers: Sequence[int] | None) -> tuple[int, ...]:
    if layers is not None:
        return as_int_tuple(layers, 4, "layers")
    if depth not in RESNET_BLOCKS:
        raise UdasegError(
            f"DeepLab-v2 depth must be 50 or 101, got {depth}",
            hint="pass depth=50 (GLUA) or depth=101 (ADVENT/AttENT)",
            exit_code=2,
        )
    return RESNET_BLOCKS[depth]


@register_model(
    "deeplabv2.v1",
    dims=2,
    hparams=DEEPLAB_HPARAMS,
    tiny={"depth": 50, "width": 8, "layers": [1, 1, 1, 1]},
    description="DeepLab-v2: dilated ResNet-50/101 (output stride 8) + ASPP on layer4 and layer3",
)
class DeepLabV2(nn.Module):
    """DeepLab-v2 ResNet segmenter, trained from scratch (no pretrained weights are available).

    Input (N, in_channels, H, W), any size. Output dict: "logits" (N, num_classes, H, W) from the
    layer4 ASPP head, "aux" = [layer3 ASPP head] (same shape), "features" = layer4 output
    (N, 32 * width, ~H/8, ~W/8), the map GLUA's feature discriminator D1 reads.

    Args:
        in_channels: image channels (1 for grey slices).
        num_classes: classes including background.
        depth: 50 or 101, the ResNet variant (block counts 3-4-6-3 or 3-4-23-3).
        width: base width of the ResNet (64); stage outputs are 4, 8, 16, 32 times it.
        layers: four block counts overriding ``depth`` (e.g. [1, 1, 1, 1] for tests).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 101,
        width: int = 64,
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        blocks = _block_counts(depth, layers)
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.layer1 = _layer(w, w, blocks[0], stride=1, dilation=1)
        self.layer2 = _layer(4 * w, 2 * w, blocks[1], stride=2, dilation=1)
        self.layer3 = _layer(8 * w, 4 * w, blocks[2], stride=1, dilation=2)
        self.layer4 = _layer(16 * w, 8 * w, blocks[3], stride=1, dilation=4)
        self.aux_classifier = ASPPClassifier(16 * w, num_classes)
        self.classifier = ASPPClassifier(32 * w, num_classes)
        self._init_backbone()

    def _init_backbone(self) -> None:
        # He init for the ResNet convs; the ASPP heads keep their own N(0, 0.01) init
        for stage in (self.stem, self.layer1, self.layer2, self.layer3, self.layer4):
            for m in stage.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> dict:
        c3 = self.layer3(self.layer2(self.layer1(self.stem(x))))
        c4 = self.layer4(c3)
        size = x.shape[2:]
        return {
            "logits": resize_to(self.classifier(c4), size),
            "aux": [resize_to(self.aux_classifier(c3), size)],
            "features": c4,
        }
