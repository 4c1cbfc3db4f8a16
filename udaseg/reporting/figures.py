"""The report's pictures as PNG bytes, drawn on matplotlib ``Figure`` objects (no pyplot, no
display): label maps over scans, loss and validation curves, and Dice box plots."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from udaseg.reporting.discovery import Evaluation

# metrics.jsonl keys that are not loss terms
NOT_LOSSES = frozenset({"step", "lr", "seconds", "val"})


@dataclass(frozen=True)
class Panel:
    """One panel of a picture: ``image`` (H, W) float32 intensities or None (black), ``label``
    (H, W) class ids 0..C or None, drawn with rows ``aspect`` times as tall as columns are wide
    (row spacing / column spacing, mm)."""

    title: str
    image: np.ndarray | None
    label: np.ndarray | None = None
    aspect: float = 1.0


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _class_colours(n_classes: int) -> list[tuple[float, float, float]]:
    """One RGB colour per class id 1..C (index 0 = class 1)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n_classes <= 10 else "tab20"]
    return [tuple(cmap(i % cmap.N)[:3]) for i in range(n_classes)]


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

    colours = _class_colours(len(classes))
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
    return _png(figure)


def _shape(panel: Panel) -> tuple[int, int]:
    shown = panel.label if panel.image is None else panel.image
    return shown.shape[-2:]  # type: ignore[union-attr]


def busiest_slice(label: np.ndarray | None, n_slices: int) -> int:
    """Index of the slice (axis 0) with the most labelled voxels; the middle one without any."""
    from udaseg.data.store import foreground_voxels

    if label is None or not label.any():
        return n_slices // 2
    return int(np.argmax(foreground_voxels(label)))


def curves_png(title: str, train: list[dict], val: list[dict]) -> tuple[bytes, list[str]]:
    """Loss terms against the step (log scale when all positive), and beside it the validation
    score and Dice per class when ``val`` has rows. Returns the PNG and the names of terms left
    out because they are zero throughout."""
    from matplotlib.figure import Figure

    terms = _loss_terms(train)
    zero = [t for t, (_, values) in terms.items() if not np.any(values)]
    shown = {t: v for t, v in terms.items() if t not in zero}
    figure = Figure(figsize=(10.0 if val else 6.0, 3.4), dpi=100)
    ax = figure.add_subplot(1, 2 if val else 1, 1)
    for term, (steps, values) in shown.items():
        _plot_series(ax, steps, values, term)
    if shown and all(np.all(v > 0) for _, v in shown.values()):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{title}: training losses", fontsize=9)
    if shown:
        ax.legend(fontsize=7, ncol=2)
    if val:
        _plot_validation(figure.add_subplot(1, 2, 2), title, val)
    figure.tight_layout()
    return _png(figure), zero


def _loss_terms(rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every numeric, finite-valued term: name -> (steps, values), in first-seen order."""
    series: dict[str, tuple[list, list]] = {}
    for row in rows:
        for key, value in row.items():
            if key in NOT_LOSSES or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(row["step"])
                values.append(float(value))
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in series.items()}


def _plot_series(ax, steps: np.ndarray, values: np.ndarray, label: str) -> None:
    """A short series with markers; a long (noisy) one faint, with a moving average on top."""
    if len(values) < 50:
        ax.plot(steps, values, marker=".", linewidth=1, label=label)
        return
    (line,) = ax.plot(steps, values, linewidth=0.6, alpha=0.3)
    width = max(len(values) // 50, 2)
    smooth = np.convolve(values, np.ones(width) / width, mode="valid")
    ax.plot(steps[width - 1 :], smooth, linewidth=1.2, color=line.get_color(), label=label)


def _plot_validation(ax, title: str, rows: list[dict]) -> None:
    steps = [row["step"] for row in rows]
    scores = [row["val"].get("score", math.nan) for row in rows]
    ax.plot(steps, scores, marker="o", linewidth=1.5, color="black", label="score")
    dice = [row["val"].get("dice") for row in rows]
    names = list(dict.fromkeys(k for d in dice if isinstance(d, dict) for k in d))
    for name in names:
        values = [d.get(name, math.nan) if isinstance(d, dict) else math.nan for d in dice]
        ax.plot(steps, values, marker=".", linestyle="--", linewidth=1, label=f"Dice {name}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title}: validation", fontsize=9)
    ax.legend(fontsize=7, ncol=2)


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
    return _png(figure)
