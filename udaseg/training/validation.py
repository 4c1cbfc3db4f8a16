"""Validation during training: how well a segmenter in training does on whole volumes.

The loop (:mod:`udaseg.training.loop`) calls a stage's validator every ``val_every`` steps; the
segmentation stages validate with :func:`dice_on`, predicting each case the way ``udaseg predict``
does (sliding windows over the whole volume, :func:`udaseg.inference.segment_volume`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from udaseg.data.store import Store
from udaseg.training import loop


def dice_on(
    model,
    store: Store,
    cases: list[str],
    dims: int,
    hparams: dict,
    runtime: loop.Runtime,
    context_slices: int = 0,
) -> dict[str, Any]:
    """Mean Dice per class over ``cases`` of ``store`` (whole volumes, as predict does); the
    mean over classes is the ``score``.

    ``model``: a ``dims``-D segmenter (wrapped by DDP or ``torch.compile`` or not), put back in
    training mode afterwards; ``hparams["patch_size"]`` is its window ((H, W) or (D, H, W)
    voxels); ``context_slices`` K: a 2D model reading each slice with its K neighbours on each
    side as 2K + 1 channels. Returns ``{"score": float, "dice": {class name: float},
    "cases": int}``.
    """
    from udaseg.inference import segment_volume
    from udaseg.metrics import compute_dice

    model.eval()
    per_class = {name: [] for name in store.classes}
    for case in cases:
        prediction = segment_volume(
            loop.unwrap(model),
            store.image(case),
            dims=dims,
            patch_size=tuple(hparams["patch_size"]),
            device=runtime.device,
            amp=runtime.amp,
            in_channels=2 * context_slices + 1,
        )
        label = store.label(case)
        for class_id, name in enumerate(store.classes, start=1):
            per_class[name].append(compute_dice(prediction == class_id, label == class_id))
    model.train()
    dice = {name: float(np.mean(values)) for name, values in per_class.items()}
    return {"score": float(np.mean(list(dice.values()))), "dice": dice, "cases": len(cases)}
