"""Label description files written beside predictions, so viewers name and colour each value.

* ``labels.itksnap.txt``: an ITK-SNAP label description file (Segmentation > Import Label
  Descriptions). Comment lines start with ``#``; then one line per label: the value, red, green
  and blue (0..255), opacity (0..1), visible in the slice views and in 3D (0 or 1), and the name
  in double quotes.
* ``labels.ctbl``: a 3D Slicer colour table (load it, then choose it as the label map's or
  segmentation's colour table). A ``# Color table file`` header line and a count; then one line
  per label: the value, the name (no spaces), red, green, blue and opacity (0..255).

Both list background (0, transparent) and each class with the value the predictions hold for it
(dataset codes or class ids, :class:`~udaseg.data.label_values.LabelValues`) and one colour per
class *position* in the manifest's ``classes``: the colours of ``udaseg report``'s figures
(matplotlib's tab10, tab20 past 10 classes). The colour follows the class, not the value, so a
dataset's ground truth opened with the same table shows each organ in the colour of the
prediction, and CT and MR predictions of one dataset (different codes) colour liver alike.
"""

from __future__ import annotations

from pathlib import Path

from udaseg import layout
from udaseg.data.label_values import BACKGROUND, LabelValues

# matplotlib's tab10 and tab20 as 0..255 RGB (reporting.figures draws classes with these maps)
TAB10 = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
TAB20 = (
    (31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44),
    (152, 223, 138), (214, 39, 40), (255, 152, 150), (148, 103, 189), (197, 176, 213),
    (140, 86, 75), (196, 156, 148), (227, 119, 194), (247, 182, 210), (127, 127, 127),
    (199, 199, 199), (188, 189, 34), (219, 219, 141), (23, 190, 207), (158, 218, 229),
)  # fmt: skip


def class_colours(n_classes: int) -> list[tuple[int, int, int]]:
    """One RGB colour (0..255) per class position 0..C-1 (class id 1..C); the palette repeats
    past 20 classes."""
    palette = TAB10 if n_classes <= len(TAB10) else TAB20
    return [palette[i % len(palette)] for i in range(n_classes)]


def _rows(values: LabelValues) -> list[tuple[int, str, tuple[int, int, int], bool]]:
    """(value, name, colour, visible) for background, then each class in class order."""
    colours = class_colours(len(values.classes))
    table = values.table()
    rows = [(table[BACKGROUND], BACKGROUND, (0, 0, 0), False)]
    rows += [(table[name], name, colours[i], True) for i, name in enumerate(values.classes)]
    return rows


def itksnap_text(values: LabelValues, title: str) -> str:
    """The ITK-SNAP label description file of ``values`` (see the module docstring); ``title``
    goes into the header comments."""
    lines = [
        "# ITK-SNAP label description file (Segmentation > Import Label Descriptions)",
        f"# {title}",
        f"# values: {values.source}",
        "# columns: value, red, green, blue (0..255), opacity (0..1), visible in slices and in 3D",
        "# (0/1), name",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
    ]
    for value, name, (r, g, b), shown in _rows(values):
        flag = int(shown)
        label = name.replace('"', "'")
        lines.append(f'{value:5d} {r:5d} {g:4d} {b:4d} {flag:8d} {flag:2d} {flag:2d}    "{label}"')
    return "\n".join(lines) + "\n"


def slicer_text(values: LabelValues, title: str) -> str:
    """The 3D Slicer colour table of ``values`` (see the module docstring); ``title`` goes into
    a header comment."""
    rows = _rows(values)
    lines = [f"# Color table file {layout.SLICER_COLOURS}", f"# {len(rows)} values", f"# {title}"]
    for value, name, (r, g, b), shown in rows:
        # Slicer splits a line at spaces: a name keeps its words joined by underscores
        lines.append(f"{value} {'_'.join(name.split())} {r} {g} {b} {255 if shown else 0}")
    return "\n".join(lines) + "\n"


def write_label_tables(folder: Path, values: LabelValues, title: str) -> list[Path]:
    """Write ``labels.itksnap.txt`` and ``labels.ctbl`` into ``folder``; returns their paths."""
    written = []
    for name, text in (
        (layout.ITKSNAP_LABELS, itksnap_text(values, title)),
        (layout.SLICER_COLOURS, slicer_text(values, title)),
    ):
        path = Path(folder) / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
