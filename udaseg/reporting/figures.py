"""The report's pictures as PNG bytes, drawn on matplotlib ``Figure`` objects (no pyplot, no
display): label maps over scans, predictions over references, and Dice box plots (training
curves: :mod:`udaseg.reporting.curves`). Classes have the colours of the label tables
``udaseg predict`` writes (:mod:`udaseg.inference.label_tables`)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from udaseg.reporting.discovery import Evaluation


@dataclass(frozen=True)
class Panel:
    """One panel of a picture: ``image`` (H, W) float32 intensities or None (black), ``label``
    (H, W) class ids 0..C or None, drawn with rows ``aspect`` times as tall as columns are wide
    (row spacing / column spacing, mm)."""

    title: str
    image: np.ndarray | None
    label: np.ndarray | None = None
    aspect: float = 1.0


def png_bytes(figure, exact: list[tuple[float, float, float]] | None = None) -> bytes:
    """A matplotlib ``Figure`` as PNG bytes; with ``exact`` colours (RGB 0..1), as a 256-colour
    palette PNG that holds those colours exactly (about half the size of a full-colour one of a
    scan: the report embeds one picture per evaluated case and run)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    if exact is None:
        return buffer.getvalue()
    from PIL import Image

    buffer.seek(0)
    rgb = Image.open(buffer).convert("RGB")
    kept = [tuple(round(255 * c) for c in colour) for colour in dict.fromkeys(exact)]
    rest = rgb.quantize(256 - len(kept), method=Image.Quantize.MEDIANCUT).getpalette() or []
    colours = kept + [tuple(rest[i : i + 3]) for i in range(0, len(rest), 3)]
    palette = Image.new("P", (1, 1))
    palette.putpalette([v for colour in colours[:256] for v in colour])
    compact = io.BytesIO()
    rgb.quantize(palette=palette, dither=Image.Dither.NONE).save(compact, "PNG", optimize=True)
    return compact.getvalue()


def class_colours(n_classes: int) -> list[tuple[float, float, float]]:
    """One RGB colour (0..1) per class id 1..C (index 0 = class 1): the colours of the label
    tables ``udaseg predict`` writes, so a figure colours each organ as ITK-SNAP and Slicer do."""
    from udaseg.inference.label_tables import class_colours as table_colours

    return [(r / 255, g / 255, b / 255) for r, g, b in table_colours(n_classes)]


def _draw_label(ax, label: np.ndarray, colours: list, aspect: float, alpha: float) -> None:
    """Classes as fills of opacity ``alpha`` with solid outlines (label (H, W) ids 0..C)."""
    rgba = np.zeros((*label.shape, 4), np.float32)
    present = [int(c) for c in np.unique(label) if 0 < c <= len(colours)]
    for c in present:
        rgba[label == c] = (*colours[c - 1], alpha)
    ax.imshow(rgba, interpolation="nearest", aspect=aspect)
    for c in present:
        mask = (label == c).astype(np.float32)
        if 0 < mask.sum() < mask.size:
            ax.contour(mask, levels=[0.5], colors=[colours[c - 1]], linewidths=0.8)


def panels_png(panels: list[Panel], classes: list[str]) -> bytes:
    """A row of panels (grey images, labels drawn over them) with a legend of ``classes``;
    each image gets its own 1st..99th percentile grey window."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from udaseg.translation.io import display_window

    colours = class_colours(len(classes))
    height = max(p.aspect * _shape(p)[0] / _shape(p)[1] for p in panels)
    figure = Figure(figsize=(2.6 * len(panels), 2.6 * min(height, 2.0) + 0.9), dpi=100)
    for i, panel in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), i + 1)
        image = panel.image if panel.image is not None else np.zeros(_shape(panel), np.float32)
        low, high = display_window([image])
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.set_aspect(panel.aspect)
        if panel.label is not None:
            # over a scan the anatomy must show through; on black, fills can be bright
            alpha = 0.35 if panel.image is not None else 0.7
            _draw_label(ax, panel.label, colours, panel.aspect, alpha)
        ax.set_title(panel.title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if classes:
        handles = [Patch(color=colours[i], label=name) for i, name in enumerate(classes)]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(classes), 6), fontsize=7)
    figure.tight_layout(rect=(0, 0.08 if classes else 0, 1, 1))
    return png_bytes(figure)


def _shape(panel: Panel) -> tuple[int, int]:
    shown = panel.label if panel.image is None else panel.image
    return shown.shape[-2:]  # type: ignore[union-attr]


def busiest_slice(label: np.ndarray | None, n_slices: int) -> int:
    """Index of the slice (axis 0) with the most labelled voxels; the middle one without any."""
    from udaseg.data.store import foreground_voxels

    if label is None or not label.any():
        return n_slices // 2
    return int(np.argmax(foreground_voxels(label)))


def representative_slices(label: np.ndarray, n: int = 3) -> list[int]:
    """``n`` slices (axis 0) of a (S, H, W) label map that show its foreground: the labelled
    slices split into ``n`` consecutive runs, and in each the slice with the most labelled
    voxels; so the picks spread over the organ instead of being ``n`` near-identical
    neighbours. Fewer when fewer slices are labelled; evenly spaced without any label.
    Returns sorted indices."""
    counts = (label > 0).reshape(len(label), -1).sum(axis=1)
    labelled = np.flatnonzero(counts)
    if labelled.size == 0:
        return sorted({int(i) for i in np.linspace(0, len(label) - 1, n + 2)[1:-1].round()})
    picks = {int(run[np.argmax(counts[run])]) for run in np.array_split(labelled, n) if run.size}
    return sorted(picks)


@dataclass(frozen=True)
class Overlay:
    """One slice of a scored case: ``image`` (H, W) float32 intensities or None (black),
    ``reference`` and ``prediction`` (H, W) class ids 0..C, rows ``aspect`` times as tall as
    columns are wide (row spacing / column spacing, mm)."""

    title: str
    image: np.ndarray | None
    reference: np.ndarray
    prediction: np.ndarray
    aspect: float = 1.0


def overlay_png(title: str, slices: list[Overlay], classes: list[str]) -> bytes:
    """One case in a row of slices: the scan, the prediction filled in its class colours, the
    reference outlined in the same colours (over a dark line, so it shows on a bright fill).
    A line with no fill inside is a miss, a fill with no line around it a false positive.
    Small on purpose (about 200 px per slice): a report has one per evaluated case and run."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from udaseg.translation.io import display_window

    colours = class_colours(len(classes))
    height = max(o.aspect * o.reference.shape[0] / o.reference.shape[1] for o in slices)
    figure = Figure(figsize=(2.3 * len(slices), 2.3 * min(height, 2.0) + 0.75), dpi=80)
    for i, overlay in enumerate(slices):
        ax = figure.add_subplot(1, len(slices), i + 1)
        if overlay.image is not None:
            low, high = display_window([overlay.image])
            ax.imshow(overlay.image, cmap="gray", vmin=low, vmax=high)
        else:
            ax.imshow(np.zeros(overlay.reference.shape, np.float32), cmap="gray", vmin=0, vmax=1)
        ax.set_aspect(overlay.aspect)
        _fill(ax, overlay.prediction, colours, 0.4 if overlay.image is not None else 0.7)
        _outline(ax, overlay.reference, colours)
        ax.set_title(overlay.title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=colours[i], label=name) for i, name in enumerate(classes)]
    handles += [
        Patch(facecolor="grey", alpha=0.5, label="fill: prediction"),
        Line2D([], [], color="grey", linewidth=1.2, label="line: reference"),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=6)
    figure.suptitle(title, fontsize=8)
    legend_rows = math.ceil(len(handles) / 4)
    figure.tight_layout(rect=(0, 0.05 + 0.05 * legend_rows, 1, 1))
    return png_bytes(figure, exact=colours)


def _fill(ax, label: np.ndarray, colours: list, alpha: float) -> None:
    rgba = np.zeros((*label.shape, 4), np.float32)
    for c in (int(c) for c in np.unique(label) if 0 < c <= len(colours)):
        rgba[label == c] = (*colours[c - 1], alpha)
    ax.imshow(rgba, interpolation="nearest", aspect=ax.get_aspect())


def _outline(ax, label: np.ndarray, colours: list) -> None:
    for c in (int(c) for c in np.unique(label) if 0 < c <= len(colours)):
        mask = (label == c).astype(np.float32)
        if 0 < mask.sum() < mask.size:
            ax.contour(mask, levels=[0.5], colors="black", linewidths=1.6, alpha=0.6)
            ax.contour(mask, levels=[0.5], colors=[colours[c - 1]], linewidths=0.9)


def dice_boxplot_png(evaluations: list[Evaluation]) -> bytes:
    """Grouped box plots: x = class, one coloured box per run within each class."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    classes = list(dict.fromkeys(c for e in evaluations for d in e.dice.values() for c in d))
    n_runs = len(evaluations)
    width = 0.8 / n_runs
    figure = Figure(figsize=(max(6.0, 0.3 * len(classes) * n_runs + 2.5), 3.8), dpi=100)
    ax = figure.add_subplot()
    rng = np.random.default_rng(0)  # jitter of the case dots, the same every time
    for r, evaluation in enumerate(evaluations):
        colour = f"C{r % 10}"
        for c, name in enumerate(classes):
            values = [
                d[name] for d in evaluation.dice.values() if math.isfinite(d.get(name, math.nan))
            ]
            if not values:
                continue
            x = c - 0.4 + width * (r + 0.5)
            box = ax.boxplot(
                [values], positions=[x], widths=width * 0.8, patch_artist=True, showfliers=False
            )
            for patch in box["boxes"]:
                patch.set(facecolor=colour, alpha=0.45, edgecolor=colour)
            for line in box["medians"]:
                line.set(color="black")
            jitter = rng.uniform(-0.25, 0.25, len(values)) * width
            ax.scatter(
                x + jitter, values, s=8, color=colour, edgecolors="black", linewidths=0.3, zorder=3
            )
    ax.set_xticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("Dice")
    ax.grid(axis="y", alpha=0.3)
    handles = [
        Patch(color=f"C{r % 10}", alpha=0.6, label=e.name) for r, e in enumerate(evaluations)
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return png_bytes(figure)
