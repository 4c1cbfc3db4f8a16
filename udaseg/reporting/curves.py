"""Training curves of one run: every line its ``metrics.jsonl`` logged, drawn against the step.

Loss terms are drawn in one panel per kind, so terms of very different size (a cycle loss of 0.05
beside a discriminator loss of 1.4) each get a readable axis: the objective (``total``),
segmentation terms, adversarial terms (the segmenter's or generator's side), discriminator losses,
cycle / reconstruction / identity / consistency terms, and the rest; then the validation score and
Dice per class, and the learning rate. Names are sorted into kinds by the patterns in
:data:`KINDS` (the names udaseg's methods log), first match wins.

Nothing is cut or subsampled: every logged point is drawn, from the first logged step to the last
(a long noisy series faint, with a centred moving average over it that also runs from end to
end), and every panel spans the run's whole step range. :func:`~udaseg.reporting.discovery.
read_metrics` keeps one row per step, so a resumed run is one continuous curve.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from udaseg.reporting.figures import png_bytes

# metrics.jsonl keys that are not loss terms
NOT_LOSSES = frozenset({"step", "lr", "seconds", "val"})
TOTAL = "objective (total)"
OTHER = "other terms"
# (panel title, names drawn in it), in the order the panels are drawn; a name goes to the first
# panel whose pattern it matches (udaseg's methods log these names), else to OTHER
KINDS: tuple[tuple[str, re.Pattern], ...] = (
    (TOTAL, re.compile(r"^total$|_objective$")),
    ("segmentation losses", re.compile(r"^ce$|dice|^seg|^main$|^aux$|^on_|focal|^sup|pseudo")),
    ("adversarial losses (segmenter / generator side)", re.compile(r"^(g_)?adv")),
    ("discriminator losses", re.compile(r"^d(\d+|_.+)$")),
    (
        "cycle, reconstruction, identity, consistency",
        re.compile(r"cycle|_rec$|^rec|recon|identity|idt|consist|style_reg"),
    ),
)
# a series longer than this is drawn faint with a moving average on top
SMOOTH_FROM = 60


@dataclass
class CurvePanel:
    """One panel: ``series`` name -> (steps (N,) int, values (N,) float64), in logged order;
    ``ylim`` fixed limits (validation: 0..1) or None."""

    title: str
    ylabel: str
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    ylim: tuple[float, float] | None = None


@dataclass
class Curves:
    """What :func:`curve_panels` found: the panels, the logged step range, terms left out because
    they are zero throughout, and terms with non-finite values (name -> how many steps)."""

    panels: list[CurvePanel]
    first_step: int
    last_step: int
    zero: list[str]
    non_finite: dict[str, int]


def kind_of(term: str) -> str:
    """The panel a loss term is drawn in (see :data:`KINDS`)."""
    return next((kind for kind, pattern in KINDS if pattern.search(term)), OTHER)


def curve_panels(train: list[dict], val: list[dict]) -> Curves:
    """Sort a run's logged rows (as :func:`~udaseg.reporting.discovery.read_metrics` returns
    them) into panels. A run whose only terms besides ``total`` are of one kind draws ``total``
    with them (a segmenter's total is its segmentation loss)."""
    terms, non_finite = _loss_terms(train)
    zero = [t for t, (_, values) in terms.items() if len(values) and not np.any(values)]
    kinds: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for term, series in terms.items():
        if term not in zero and len(series[1]):  # a term NaN throughout is only named
            kinds.setdefault(kind_of(term), {})[term] = series
    if TOTAL in kinds and len(kinds) == 2:
        total = kinds.pop(TOTAL)
        only = next(iter(kinds.values()))
        kinds = {next(iter(kinds)): {**total, **only}}
    order = [kind for kind, _ in KINDS] + [OTHER]
    panels = [CurvePanel(kind, "loss", kinds[kind]) for kind in sorted(kinds, key=order.index)]
    if val:
        panels.append(_validation_panel(val))
    rates = [(row["step"], row["lr"]) for row in train if _number(row.get("lr"))]
    if rates and len({lr for _, lr in rates}) > 1:
        steps, values = zip(*rates, strict=True)
        panels.append(
            CurvePanel("learning rate", "lr", {"lr": (np.asarray(steps), np.asarray(values))})
        )
    steps = [row["step"] for row in train + val]
    first, last = (int(min(steps)), int(max(steps))) if steps else (0, 0)
    return Curves(panels, first, last, zero, non_finite)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _loss_terms(rows: list[dict]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """Every numeric term: name -> (steps, values) over its finite values, in first-seen order;
    and name -> count of its non-finite values (a diverged run logs NaN: said, not hidden)."""
    series: dict[str, tuple[list, list]] = {}
    non_finite: dict[str, int] = {}
    for row in rows:
        for key, value in row.items():
            if key in NOT_LOSSES or not _number(value):
                continue
            steps, values = series.setdefault(key, ([], []))
            if math.isfinite(value):
                steps.append(row["step"])
                values.append(float(value))
            else:
                non_finite[key] = non_finite.get(key, 0) + 1
    arrays = {k: (np.asarray(s), np.asarray(v, np.float64)) for k, (s, v) in series.items()}
    return arrays, non_finite


def _validation_panel(rows: list[dict]) -> CurvePanel:
    steps = np.asarray([row["step"] for row in rows])
    panel = CurvePanel("validation", "score / Dice", ylim=(-0.02, 1.02))
    scores = [row["val"].get("score", math.nan) for row in rows]
    panel.series["score"] = (steps, np.asarray(scores, np.float64))
    dice = [row["val"].get("dice") for row in rows]
    for name in dict.fromkeys(k for d in dice if isinstance(d, dict) for k in d):
        values = [d.get(name, math.nan) if isinstance(d, dict) else math.nan for d in dice]
        panel.series[f"Dice {name}"] = (steps, np.asarray(values, np.float64))
    return panel


def moving_average(values: np.ndarray, width: int) -> np.ndarray:
    """Centred mean over ``width`` points (fewer at both ends), the same length as ``values``:
    the smoothed line starts at the first logged step and ends at the last."""
    half = width // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    low, high = np.maximum(index - half, 0), np.minimum(index + half + 1, len(values))
    return (sums[high] - sums[low]) / (high - low)


def curves_png(title: str, curves: Curves) -> bytes:
    """The panels in a grid of up to 3 columns, every one over the run's whole step range."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n = len(curves.panels)
    columns = min(3, max(n, 1))
    rows = math.ceil(n / columns) if n else 1
    figure = Figure(figsize=(3.7 * columns, 2.7 * rows + 0.3), dpi=90)
    pad = max(1.0, 0.02 * (curves.last_step - curves.first_step))
    for i, panel in enumerate(curves.panels):
        ax = figure.add_subplot(rows, columns, i + 1)
        for name, (steps, values) in panel.series.items():
            _plot_series(ax, steps, values, name, validation=panel.ylim is not None)
        positive = [v for _, v in panel.series.values() if len(v)]
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        elif positive and all(np.all(v > 0) for v in positive):
            low = min(float(v.min()) for v in positive)
            high = max(float(v.max()) for v in positive)
            if high / low > 30:  # terms decades apart: each visible on a log axis
                ax.set_yscale("log")
        ax.set_xlim(curves.first_step - pad, curves.last_step + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel(panel.ylabel, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_title(panel.title, fontsize=8)
        ax.grid(alpha=0.25)
        ax.legend(fontsize=6, ncol=2 if len(panel.series) > 5 else 1)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return png_bytes(figure)


def _plot_series(ax, steps, values, label: str, validation: bool) -> None:
    """A short series with markers; a long (noisy) one faint in full, with a centred moving
    average over the same steps on top."""
    if validation:
        style = {"color": "black", "linewidth": 1.5} if label == "score" else {"linestyle": "--"}
        ax.plot(steps, values, marker="o", markersize=3, label=label, **style)
        return
    if len(values) < SMOOTH_FROM:
        ax.plot(steps, values, marker=".", markersize=3, linewidth=1, label=label)
        return
    (line,) = ax.plot(steps, values, linewidth=0.6, alpha=0.3)
    width = max(len(values) // 40, 3) | 1  # odd: centred
    smooth = moving_average(values, width)
    ax.plot(steps, smooth, linewidth=1.2, color=line.get_color(), label=label)
