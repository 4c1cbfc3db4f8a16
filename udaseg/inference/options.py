"""The sliding-window options that fit a model: its dimensions, window and input channels (the
2.5D context slices), from its ``model.json``, with a run's choices (batch size, stride,
weighting, flips, device, bf16)."""

from __future__ import annotations

from typing import Any

from udaseg.inference.models import input_channels, model_dims


def inference_options(
    info: dict[str, Any],
    device: str,
    *,
    batch_size: int,
    amp: bool,
    stride: float | tuple[int, ...] | None = None,
    gaussian: bool = True,
    tta: bool = False,
) -> dict:
    """Keyword arguments of :func:`udaseg.inference.predict_volume` / ``segment_volume`` for a
    model of layout ``info`` (model.json): its dimensions, window and input channels (2K + 1 for
    a 2.5D model of ``context_slices`` K, which then gets each slice with its K neighbours on
    each side as channels), with the run's options (``tta``: the flips of :func:`tta_axes`)."""
    dims = model_dims(info)
    return dict(
        dims=dims,
        patch_size=info.get("patch_size"),
        batch_size=batch_size,
        stride=stride,
        gaussian=gaussian,
        tta_flips=tta_axes(dims) if tta else (),
        device=device,
        amp=amp,
        in_channels=input_channels(info),
    )


def tta_axes(dims: int) -> tuple[int, ...]:
    """Volume axes flipped by ``--tta``: in-plane (H, W) for 2D models, all three for 3D."""
    return (1, 2) if dims == 2 else (0, 1, 2)
