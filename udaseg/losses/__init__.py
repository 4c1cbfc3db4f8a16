"""Segmentation losses (see :mod:`udaseg.losses.segmentation`)."""

from udaseg.losses.segmentation import (
    LOSSES,
    WEIGHT_MODES,
    SegmentationLoss,
    batch_class_weights,
    create_loss,
    generalized_dice_weights,
    list_losses,
)

__all__ = [
    "LOSSES",
    "WEIGHT_MODES",
    "SegmentationLoss",
    "batch_class_weights",
    "create_loss",
    "generalized_dice_weights",
    "list_losses",
]
