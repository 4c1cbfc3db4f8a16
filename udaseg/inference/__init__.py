"""Applying a trained segmenter to whole volumes.

One module per job:

* :mod:`~udaseg.inference.sliding_window`: class probabilities and label maps of an (S, H, W)
  volume (windows, padding, Gaussian weighting, flip test-time augmentation), and the
  largest-component clean-up; its public functions are re-exported here
  (``from udaseg.inference import segment_volume``);
* :mod:`~udaseg.inference.models`: a model directory (``model.json`` and a checkpoint) checked
  and described for a run's record;
* :mod:`~udaseg.inference.sources`: the data to segment (a preprocessed store or a raw dataset
  folder), read case by case, and its compatibility with a model;
* :mod:`~udaseg.inference.cases`: which of the data's cases a run (or one shard of it) takes;
* :mod:`~udaseg.inference.options`: the sliding-window options for a model's layout.

The device a run uses is resolved by :func:`udaseg.device.resolve_device`.
"""

from udaseg.inference.sliding_window import (
    DEFAULT_PATCH_3D,
    DEFAULT_STRIDE,
    GAUSSIAN_SIGMA_SCALE,
    PAD_MULTIPLE,
    flip_sets,
    gaussian_importance,
    keep_largest_component,
    predict_volume,
    segment_volume,
    window_shape,
    window_starts,
    window_step,
)

__all__ = [
    "DEFAULT_PATCH_3D",
    "DEFAULT_STRIDE",
    "GAUSSIAN_SIGMA_SCALE",
    "PAD_MULTIPLE",
    "flip_sets",
    "gaussian_importance",
    "keep_largest_component",
    "predict_volume",
    "segment_volume",
    "window_shape",
    "window_starts",
    "window_step",
]
