"""Reading translate runs back, rendering volumes with them, and the translation pictures.

A translate run is the ``translate-train`` artifact ``W/translate/<run>/`` (see
:mod:`udaseg.stages.translate_train`): ``model.json`` says which registered method it is and what
stores it was trained on, ``checkpoint_final.pt`` holds the translator in state ``"model"``::

    {"model": {"name": "cyclegan.v1", "kwargs": {...}}, "state_dict": {...}, ...}

so :func:`load_translator` rebuilds it with ``create_translator(name, **kwargs)`` without relying on
the code's defaults. Pictures are drawn with matplotlib's Agg canvas (no display, no global pyplot
state), grey-scale on one intensity window per picture so panels compare with each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from udaseg import artifacts, layout
from udaseg.errors import UdasegError

STAGE = "translate-train"
CHECKPOINTS = ("final", "latest")
# slices are padded to a multiple of this before translation or encoding: generators that
# downsample up to 5 times by 2 then get whole feature maps and return the input's size
PAD_MULTIPLE = 32


@dataclass
class TranslateRun:
    """A translate-train artifact: its folder, manifest, ``model.json`` and the paths of the
    source and target store artifacts it was trained on (from the manifest's inputs). A run
    still training (its ``.partial`` folder, read only to measure it) has no manifest: None."""

    directory: Path
    manifest: artifacts.Manifest | None
    info: dict[str, Any]
    source: Path
    target: Path

    @property
    def name(self) -> str:
        return self.directory.resolve().name

    @property
    def method(self) -> str:
        return str(self.info["name"])

    @property
    def has_style_codes(self) -> bool:
        return bool(self.info.get("has_style_codes"))

    def record(self) -> dict[str, str]:
        """This run as an entry of a consumer's manifest ``inputs``."""
        return artifacts.input_record(self.directory, self.manifest)


def open_run(directory: Path, *, force: bool = False) -> TranslateRun:
    """Check ``directory`` is a complete, current translate-train artifact and read it.

    Raises:
        UdasegError: not a translate run (missing, unfinished, another stage's output), or
            (without ``force``) changed since it was written or trained on stores rebuilt since.
    """
    directory = Path(directory)
    manifest = artifacts.require_input(
        directory, stage=STAGE, rerun="udaseg translate train", force=force
    )
    info = read_model_json(directory)
    return TranslateRun(
        directory,
        manifest,
        info,
        Path(manifest.inputs["source"]["path"]),
        Path(manifest.inputs["target"]["path"]),
    )


def open_unfinished_run(
    directory: Path, source_store: Path | None = None, target_store: Path | None = None
) -> TranslateRun:
    """A translate run that has no manifest yet (still training, or killed), to measure it: its
    folder (the ``.partial`` one where it exists), ``model.json`` and its stores:
    ``source_store`` / ``target_store``, else the store artifacts of the ``dataset`` and
    ``domain`` its model.json names, where the workspace layout puts them
    (``W/preprocessed/<dataset>__<domain>``, ``W`` being the folder above ``W/translate``).

    Raises:
        UdasegError: no model.json, or no store where one is looked for.
    """
    from udaseg.data.sampling import store_path

    directory = Path(directory)
    partial = artifacts.partial_dir(directory)
    if not directory.name.endswith(layout.PARTIAL_SUFFIX) and partial.is_dir():
        directory = partial
    info = read_model_json(directory)
    work = directory.resolve().parent.parent
    stores = []
    for side, given in (("source", source_store), ("target", target_store)):
        store_dir = given or layout.run_dir(
            work, layout.PREPROCESSED, layout.joined(info[side]["dataset"], info[side]["domain"])
        )
        if not store_path(store_dir).is_file():
            raise UdasegError(
                f"the {side} store of {directory.name} is not at {store_dir}",
                hint=f"name it with --{side}-store W/preprocessed/<dataset>__<domain>",
                path=store_dir,
            )
        stores.append(store_dir)
    return TranslateRun(directory, None, info, *stores)


def read_model_json(directory: Path) -> dict[str, Any]:
    """A translate run's ``model.json`` (method, kwargs, the stores' identities), also while the
    run still trains in its ``.partial`` folder."""
    from udaseg.training.checkpoint import read_model_json as read

    return read(directory, hint="pass the folder `udaseg translate train` writes (W/translate/RUN)")


def checkpoint_path(directory: Path, which: str = "final") -> Path:
    """``checkpoint_<which>.pt`` of a translate run, falling back to ``latest`` when absent.

    Raises:
        UdasegError: the folder holds neither.
    """
    from udaseg.training.checkpoint import find_checkpoint

    return find_checkpoint(
        directory, which, CHECKPOINTS, hint="train it first with `udaseg translate train`"
    )


def load_translator(
    directory: Path, which: str = "final", device: str = "cpu", *, reverse: bool = False
):
    """Rebuild the translator of a translate run from its checkpoint, in eval mode on ``device``.

    ``reverse``: wrap it in :class:`udaseg.translation.reverse.ReversedTranslator`, to translate
    from its target domain to its source domain (see :func:`orientation`).

    Returns:
        (translator module, the checkpoint's model spec ``{"name", "kwargs"}``).
    """
    from udaseg.training.checkpoint import load_checkpoint
    from udaseg.translation.registry import create_translator

    checkpoint = load_checkpoint(checkpoint_path(directory, which))
    spec = checkpoint["model"]
    translator = create_translator(spec["name"], **dict(spec["kwargs"]))
    translator.load_state_dict(checkpoint["state_dict"])
    if reverse:
        from udaseg.translation.reverse import ReversedTranslator

        translator = ReversedTranslator(translator)
    return translator.to(device).eval(), spec


def orientation(info: dict[str, Any], source: Any, target: Any) -> str:
    """How a translate run with ``model.json`` ``info`` maps a ``source`` -> ``target`` pair of
    stores (anything with ``dataset`` and ``domain``): ``"forward"`` when it was trained from
    the source's domain to the target's, ``"reversed"`` when trained the other way round, and
    ``"other"`` when its domains are not this pair (e.g. a translated source store)."""

    def same(side: str, store: Any) -> bool:
        return (info[side]["dataset"], info[side]["domain"]) == (store.dataset, store.domain)

    if same("source", source) and same("target", target):
        return "forward"
    if same("source", target) and same("target", source):
        return "reversed"
    return "other"


def pad_to_multiple(images: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Pad (N, H, W) slices on all sides to H, W divisible by ``multiple`` with each slice's
    minimum (the normalised background), so generators that downsample get whole feature maps.

    Returns:
        the padded (N, H', W') array and the (rows, cols) slices that cut the original back out.
    """
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    top, left = pad_h // 2, pad_w // 2
    low = images.reshape(len(images), -1).min(axis=1)[:, None, None]
    out = np.broadcast_to(low, (len(images), height + pad_h, width + pad_w)).copy()
    out[:, top : top + height, left : left + width] = images
    return out.astype(np.float32, copy=False), (
        slice(top, top + height),
        slice(left, left + width),
    )


def inference_autocast(device: str, amp: bool = True):
    """bf16 autocast for inference where ``amp`` resolves to bf16 on ``device`` (CUDA, or a CPU
    with native bf16: :func:`udaseg.device.resolve_precision`); a no-op context otherwise."""
    from udaseg.device import autocast, resolve_precision

    return autocast(str(device), resolve_precision(str(device), amp, notice=False))


def encode_styles(
    translator,
    slices: np.ndarray,
    batch_size: int,
    device: str,
    amp: bool = True,
    domain: str = "target",
) -> np.ndarray:
    """(S, style_dim) float32 style codes of an (S, H, W) stack of ``domain`` slices, encoded in
    batches of ``batch_size``, each padded as :func:`pad_to_multiple` (as rendering pads)."""
    import torch

    codes = []
    for start in range(0, len(slices), batch_size):
        padded, _ = pad_to_multiple(slices[start : start + batch_size], PAD_MULTIPLE)
        batch = torch.from_numpy(padded)[:, None].to(device)
        with torch.no_grad(), inference_autocast(device, amp):
            codes.append(translator.encode_style(batch, domain=domain).float().cpu().numpy())
    return np.concatenate(codes).astype(np.float32, copy=False)


def render_volume(
    translator,
    volume: np.ndarray,
    style: np.ndarray | None,
    batch_size: int,
    device: str,
    amp: bool = True,
    back: bool = False,
) -> np.ndarray:
    """Translate an (S, H, W) float32 volume slice by slice in ``style``: one code
    (style_dim,), one per slice (S, style_dim), or the default style (None); returns (S, H, W)
    float32. ``back``: render a target-domain volume in the source appearance instead
    (``translate_back``, used to check cycle consistency)."""
    import torch

    out = np.empty(volume.shape, np.float32)
    code = None if style is None else torch.as_tensor(style, dtype=torch.float32, device=device)
    for start in range(0, len(volume), batch_size):
        padded, (rows, cols) = pad_to_multiple(volume[start : start + batch_size], PAD_MULTIPLE)
        batch = torch.from_numpy(padded)[:, None].to(device)
        if code is None:
            codes = None
        elif code.dim() == 2:  # one code per slice: they follow their slices
            codes = code[start : start + len(batch)]
        else:
            codes = code.expand(len(batch), -1)
        with torch.no_grad(), inference_autocast(device, amp):
            render = translator.translate_back if back else translator.translate
            result = render(batch, codes)
        out[start : start + len(batch)] = result.float().cpu().numpy()[:, 0, rows, cols]
    return out


# --- pictures ------------------------------------------------------------------------------------


def display_window(images: Sequence[np.ndarray]) -> tuple[float, float]:
    """One grey-level window (1st..99th percentile) over ``images``, shared by every panel of a
    picture so brightness compares across panels and across pictures of the same slices."""
    values = np.concatenate([np.asarray(a, np.float32).ravel() for a in images])
    low, high = np.percentile(values, [1, 99])
    return float(low), float(max(high, low + 1e-6))


def mosaic(rows: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Tile rows of (N, H, W) images into one (R * (H + gap), N * (W + gap)) array, NaN in the
    gaps and in the cells of rows shorter than the longest (drawn as background)."""
    height, width = rows[0].shape[-2:]
    n_cols = max(len(images) for images in rows)
    out = np.full((len(rows) * (height + gap) - gap, n_cols * (width + gap) - gap), np.nan)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            top, left = r * (height + gap), c * (width + gap)
            out[top : top + height, left : left + width] = image
    return out.astype(np.float32)


def save_grid(
    path: Path,
    rows: Sequence[tuple[str, np.ndarray]],
    *,
    title: str = "",
    window: tuple[float, float] | None = None,
) -> None:
    """Write a PNG grid: one row per ``(name, images (N, H, W))``, one column per sample, the
    names on the left. ``window`` (low, high) fixes the grey levels; default
    :func:`display_window` of all rows.

    The grid is one image (a :func:`mosaic`) on one axis: a figure of one axis per panel takes
    ~10x longer to draw, which shows in training with frequent samples.
    """
    from matplotlib.figure import Figure

    images = [np.asarray(a, np.float32) for _, a in rows]
    low, high = window or display_window(images)
    tiled = mosaic(images)
    height = images[0].shape[-2]
    scale = 1.2 / max(height, 1)  # inches per pixel: each panel ~1.2 in high
    figure = Figure(figsize=(tiled.shape[1] * scale + 1.6, tiled.shape[0] * scale + 0.5), dpi=100)
    ax = figure.add_subplot()
    ax.imshow(tiled, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    ax.set_yticks([r * (height + 2) + height / 2 for r in range(len(rows))])
    ax.set_yticklabels([name for name, _ in rows], fontsize=8)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(Path(path), format="png")


def save_styles_figure(
    path: Path,
    embedding: np.ndarray,
    clusters: np.ndarray,
    chosen: Sequence[int],
    renders: Sequence[tuple[str, np.ndarray]],
    *,
    method: str,
    title: str = "",
) -> None:
    """Write the cluster-styles picture: left, every style code's 2D ``embedding`` (N, 2)
    coloured by its cluster (N,), the ``chosen`` codes (indices) marked with numbered triangles
    and the mean of all codes with a star (as DAR-UNet's Fig. 4); right, one source slice and
    its ``renders`` in each chosen style (name, (H, W) image)."""
    from matplotlib.figure import Figure

    k = len(chosen)
    figure = Figure(figsize=(5.0 + 2.0 * len(renders), 4.2), dpi=100)
    grid = figure.add_gridspec(2, 1 + len(renders), width_ratios=[2.5] + [1.0] * len(renders))
    ax = figure.add_subplot(grid[:, 0])
    colours = [f"C{c % 10}" for c in clusters]
    ax.scatter(embedding[:, 0], embedding[:, 1], c=colours, s=8, alpha=0.6, linewidths=0)
    ax.scatter(*embedding.mean(axis=0), marker="*", s=200, c="red", edgecolors="black")
    for j, index in enumerate(chosen):
        x, y = embedding[index]
        ax.scatter(x, y, marker="^", s=120, c=f"C{j % 10}", edgecolors="black", linewidths=1.2)
        ax.annotate(str(j), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_title(f"{method}: {len(embedding)} target style codes, {k} clusters", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    low, high = display_window([image for _, image in renders])
    for j, (name, image) in enumerate(renders):
        panel = figure.add_subplot(grid[:, 1 + j])
        panel.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        panel.set_title(name, fontsize=9)
        panel.set_xticks([])
        panel.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(Path(path), format="png")
