"""Sliding-window inference: class probabilities and label maps of a whole volume.

Layouts: the input ``volume`` is (S, H, W) float32 on the processed grid, as a store holds it
(axis 0 is the slice axis of the dataset's view; intensities normalised as for training). The
output probabilities are (C, S, H, W) float32, the softmax over the C classes (background 0
included), summing to 1 at each voxel; label maps are (S, H, W) uint8 class ids 0..C-1.

How a volume is covered (all sizes in voxels, in (S, H, W) order):

* **Windows.** A 3D model sees windows of ``patch_size`` (D, H, W) (default 32 x 256 x 256, the
  training patch); a 2D model sees one slice at a time in windows of ``patch_size`` (H, W). A 2D
  model without a patch size sees the whole slice, padded up to a multiple of 32 (five 2x
  down-samplings, what the U-Nets and DeepLabs here need).
* **Padding.** An axis shorter than the window is padded to the window's length, centred, with
  the volume's minimum (what preprocessing puts outside the scan, i.e. background); the padding is
  cut off the result. So a volume smaller than the window costs one forward pass.
* **Sliding window.** An axis longer than the window is covered by windows spaced at most
  ``stride`` apart (default half the window: 16 x 128 x 128 for the default 3D window), the first
  at 0 and the last ending at the axis' end, spread evenly in between (nnU-Net's placement). 2D
  models step one slice at a time along S.
* **Overlap.** The softmax of overlapping windows is averaged per voxel, weighted (``gaussian``)
  by a Gaussian importance map centred on the window with sigma = 1/8 of the window per axis
  (nnU-Net's weighting: predictions near a window's border, which saw little context, count less;
  the map is ~3e-4 per axis at the border, never zero), or uniformly.
* **Flip test-time augmentation.** ``tta_flips`` names volume axes (0 = S, 1 = H, 2 = W); the
  volume is also predicted flipped along every non-empty subset of them, each prediction is flipped
  back, and the 2**k softmax maps are averaged.
* **Channels.** A 2D model with ``in_channels`` = k > 1 (odd) gets the slice and its (k - 1) / 2
  neighbours on each side as channels, in slice order, repeating the first/last slice at the
  volume's ends (the 2.5D input of ``segment-train --context-slices (k - 1) / 2``, which
  :func:`udaseg.inference.options.inference_options` reads from model.json); 3D models take one
  channel.

Runs under :func:`torch.inference_mode`; with ``amp`` the forward passes run in bfloat16 autocast
where the device computes bf16 natively (CUDA, or a CPU with AVX512-BF16 / AMX; see
:func:`udaseg.device.resolve_precision`); the softmax and the averaging stay float32.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from udaseg.device import autocast, resolve_precision

DEFAULT_PATCH_3D = (32, 256, 256)
PAD_MULTIPLE = 32
GAUSSIAN_SIGMA_SCALE = 1 / 8
DEFAULT_STRIDE = 0.5

Model = Callable[[torch.Tensor], Any]
Stride = float | Sequence[int] | None


def window_shape(
    volume_shape: Sequence[int], dims: int, patch_size: Sequence[int] | None
) -> tuple[int, int, int]:
    """The window (S, H, W) in voxels that a ``dims``-D model with ``patch_size`` sees."""
    if dims == 2:
        if patch_size is None:
            h, w = (PAD_MULTIPLE * math.ceil(n / PAD_MULTIPLE) for n in volume_shape[1:])
            return (1, h, w)
        if len(patch_size) != 2:
            raise ValueError(f"a 2D model needs a patch size (H, W), got {list(patch_size)}")
        return (1, int(patch_size[0]), int(patch_size[1]))
    if dims == 3:
        patch = DEFAULT_PATCH_3D if patch_size is None else patch_size
        if len(patch) != 3:
            raise ValueError(f"a 3D model needs a patch size (D, H, W), got {list(patch)}")
        return tuple(int(n) for n in patch)  # type: ignore[return-value]
    raise ValueError(f"dims must be 2 or 3, got {dims}")


def window_step(window: tuple[int, int, int], dims: int, stride: Stride) -> tuple[int, int, int]:
    """Largest distance (S, H, W) between neighbouring window starts.

    ``stride``: None (half the window), a fraction in (0, 1] of the window, or voxels per window
    axis ((H, W) for 2D models, (D, H, W) for 3D). 2D models always step one slice along S.
    """
    spatial = window[3 - dims :]
    if stride is None:
        stride = DEFAULT_STRIDE
    if isinstance(stride, int | float):
        if not 0 < stride <= 1:
            raise ValueError(f"a stride fraction must be in (0, 1], got {stride}")
        steps = [max(1, int(n * stride)) for n in spatial]
    else:
        steps = [int(s) for s in stride]
        if len(steps) != dims or min(steps) < 1:
            raise ValueError(f"a {dims}D stride needs {dims} positive voxel counts, got {stride}")
    return tuple([1] * (3 - dims) + steps)  # type: ignore[return-value]


def window_starts(size: int, window: int, step: int) -> list[int]:
    """Starts of windows of length ``window`` covering ``[0, size)`` (``size >= window``), at most
    ``step`` apart: first 0, last ``size - window``, evenly spread in between."""
    if size <= window:
        return [0]
    count = math.ceil((size - window) / step) + 1
    spacing = (size - window) / (count - 1)
    return [round(i * spacing) for i in range(count)]


def gaussian_importance(window: Sequence[int], sigma_scale: float = GAUSSIAN_SIGMA_SCALE):
    """(S, H, W) float32 weights: a Gaussian centred on the window (symmetric, so flipping a window
    does not change its weights) with sigma = ``sigma_scale`` x the window per axis, peak 1."""
    factors = []
    for n in window:
        x = np.arange(n) - (n - 1) / 2
        factors.append(np.exp(-0.5 * (x / (n * sigma_scale)) ** 2))
    weights = factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]
    return (weights / weights.max()).astype(np.float32)


def flip_sets(axes: Iterable[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the empty one first): the flips test-time augmentation averages."""
    axes = sorted(set(axes))
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"flip axes are volume axes 0 (S), 1 (H), 2 (W); got {axes}")
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


@torch.inference_mode()
def predict_volume(
    model: Model,
    volume: np.ndarray,
    *,
    dims: int,
    patch_size: Sequence[int] | None = None,
    batch_size: int = 8,
    stride: Stride = None,
    gaussian: bool = True,
    tta_flips: Iterable[int] = (),
    device: str | torch.device = "cpu",
    amp: bool = False,
    in_channels: int = 1,
) -> np.ndarray:
    """Class probabilities (C, S, H, W) float32 of an (S, H, W) volume (see the module docstring).

    Args:
        model: a segmenter in eval mode on ``device``; ``model(x)`` returns a dict with
            ``"logits"`` (N, C, *x's spatial size) (or the logits tensor itself).
        volume: (S, H, W) float32, normalised like the training data.
        dims: 2 (slice-wise model, input (N, in_channels, H, W)) or 3 (input (N, 1, D, H, W)).
        patch_size: the model's window, (H, W) for 2D or (D, H, W) for 3D; None: whole padded
            slices (2D) or 32 x 256 x 256 (3D).
        batch_size: windows per forward pass (memory only; results are the same).
        stride: None (half the window), a fraction of the window, or voxels per window axis.
        gaussian: Gaussian (True) or uniform (False) weighting of overlapping windows.
        tta_flips: volume axes to flip for test-time augmentation (e.g. (1, 2)); () for none.
        device: where the windows and the accumulated probabilities live.
        amp: bfloat16 autocast for the forward passes where the device supports it natively
            (:func:`udaseg.device.resolve_precision`; float32 elsewhere).
        in_channels: the model's input channels (2D: slices around the centre one).
    """
    return _predict(model, volume, **_options(locals())).cpu().numpy()


@torch.inference_mode()
def segment_volume(
    model: Model,
    volume: np.ndarray,
    *,
    dims: int,
    patch_size: Sequence[int] | None = None,
    batch_size: int = 8,
    stride: Stride = None,
    gaussian: bool = True,
    tta_flips: Iterable[int] = (),
    device: str | torch.device = "cpu",
    amp: bool = False,
    in_channels: int = 1,
) -> np.ndarray:
    """(S, H, W) uint8 label map: the argmax of :func:`predict_volume` (same arguments)."""
    probabilities = _predict(model, volume, **_options(locals()))
    return probabilities.argmax(0).to(torch.uint8).cpu().numpy()


def keep_largest_component(label: np.ndarray) -> np.ndarray:
    """(S, H, W) or (H, W) class ids with every foreground class cut to its largest connected
    component (26-connected in 3D, so thin or obliquely cut structures stay whole); the removed
    voxels become background. A copy; classes absent from ``label`` stay absent.

    Each abdominal or cardiac structure is one connected body, so detached islands of a class are
    false positives; across modalities they are common (a "spleen" in the CT table or the bowel)
    and dominate the surface distances. nnU-Net applies the same step when it helps on validation.
    """
    from scipy import ndimage

    out = np.array(label, copy=True)
    structure = np.ones((3,) * out.ndim, dtype=bool)
    for cls in np.unique(out):
        if cls == 0:
            continue
        components, count = ndimage.label(out == cls, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[(components != 0) & (components != sizes.argmax())] = 0
    return out


def _options(arguments: dict[str, Any]) -> dict[str, Any]:
    """The keyword options among a public function's arguments (its ``locals()``)."""
    return {k: v for k, v in arguments.items() if k not in ("model", "volume")}


@dataclass(frozen=True)
class _Plan:
    """How one volume is cut into windows and weighted (sizes in voxels, (S, H, W) order)."""

    dims: int
    window: tuple[int, int, int]
    step: tuple[int, int, int]
    weights: torch.Tensor  # (S, H, W) window weights on the device
    batch_size: int
    in_channels: int
    precision: str  # "bf16" (autocast) or "float32", as udaseg.device.resolve_precision says


def _predict(
    model: Model,
    volume: np.ndarray,
    *,
    dims: int,
    patch_size: Sequence[int] | None,
    batch_size: int,
    stride: Stride,
    gaussian: bool,
    tta_flips: Iterable[int],
    device: str | torch.device,
    amp: bool,
    in_channels: int,
) -> torch.Tensor:
    """Probabilities (C, S, H, W) as a float32 tensor on ``device``."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected an (S, H, W) volume, got shape {volume.shape}")
    if dims == 3 and in_channels != 1:
        raise ValueError(f"3D models take one input channel, this one wants {in_channels}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    window = window_shape(volume.shape, dims, patch_size)
    plan = _Plan(
        dims=dims,
        window=window,
        step=window_step(window, dims, stride),
        weights=torch.from_numpy(
            gaussian_importance(window) if gaussian else np.ones(window, np.float32)
        ).to(device),
        batch_size=batch_size,
        in_channels=in_channels,
        precision=resolve_precision(str(device), amp, notice=False),
    )
    x = torch.from_numpy(volume).to(device)
    flips = flip_sets(tta_flips)
    total = None
    for axes in flips:
        probabilities = _sliding_window(model, x.flip(axes) if axes else x, plan)
        if axes:  # back to the unflipped layout (probabilities carry the class axis first)
            probabilities = probabilities.flip([a + 1 for a in axes])
        total = probabilities if total is None else total.add_(probabilities)
    return total if len(flips) == 1 else total.div_(len(flips))


def _sliding_window(model: Model, x: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Probabilities (C, S, H, W) of one (S, H, W) volume tensor."""
    x, crop = _pad(x, plan.window)
    inputs = _channels(x, plan.in_channels)  # (in_channels, S, H, W)
    starts = list(
        itertools.product(
            *(
                window_starts(n, w, s)
                for n, w, s in zip(x.shape, plan.window, plan.step, strict=True)
            )
        )
    )
    total = weight_sum = None
    for first in range(0, len(starts), plan.batch_size):
        batch = starts[first : first + plan.batch_size]
        boxes = [_box(start, plan.window) for start in batch]
        patches = torch.stack([inputs[(slice(None), *box)] for box in boxes])
        probabilities = _forward(model, patches, plan)
        if total is None:
            total = x.new_zeros((probabilities.shape[1], *x.shape))
            weight_sum = x.new_zeros(x.shape)
        for p, box in zip(probabilities, boxes, strict=True):
            total[(slice(None), *box)] += p * plan.weights
            weight_sum[box] += plan.weights
    # every voxel lies in at least one window and the weights are positive: no division by zero
    return (total / weight_sum)[(slice(None), *crop)]


def _pad(x: torch.Tensor, window: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad each axis shorter than the window to the window (centred, with the volume's minimum);
    returns the padded volume and the slices that cut the original back out."""
    before = [max(0, w - n) // 2 for n, w in zip(x.shape, window, strict=True)]
    after = [max(0, w - n) - b for n, w, b in zip(x.shape, window, before, strict=True)]
    crop = tuple(slice(b, b + n) for b, n in zip(before, x.shape, strict=True))
    if not any(before) and not any(after):
        return x, crop
    padded = x.new_full(
        [n + b + a for n, b, a in zip(x.shape, before, after, strict=True)], float(x.min())
    )
    padded[crop] = x
    return padded, crop


def _channels(x: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(in_channels, S, H, W): the volume itself, or for k > 1 channels the volume shifted by
    -(k-1)/2 .. (k-1)/2 slices (edges repeated), so channel (k-1)/2 of slice s is slice s."""
    if in_channels == 1:
        return x[None]
    if in_channels % 2 == 0:
        raise ValueError(f"2.5D input needs an odd number of slices, got {in_channels}")
    half = in_channels // 2
    index = torch.arange(x.shape[0], device=x.device)
    shifted = [(index + k).clamp(0, x.shape[0] - 1) for k in range(-half, half + 1)]
    return torch.stack([x[i] for i in shifted])


def _box(start: Sequence[int], window: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s, s + w) for s, w in zip(start, window, strict=True))


def _forward(model: Model, patches: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Softmax (N, C, D, H, W) float32 of a batch of windows (N, in_channels, D, H, W); a 2D model
    gets (N, in_channels, H, W) (D = 1 dropped and restored around the call)."""
    x = patches[:, :, 0] if plan.dims == 2 else patches
    with autocast(str(x.device), plan.precision):
        out = model(x)
    logits = out["logits"] if isinstance(out, dict) else out
    if logits.ndim != x.ndim or logits.shape[0] != x.shape[0] or logits.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"the model returned logits of shape {tuple(logits.shape)} for input "
            f"{tuple(x.shape)}; expected (N, C, *input spatial size)"
        )
    probabilities = logits.float().softmax(1)
    return probabilities[:, :, None] if plan.dims == 2 else probabilities
