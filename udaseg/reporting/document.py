"""The report as content, before it is rendered: sections of paragraphs, pictures, tables and
notes (what is missing or could not be read), and within a section one group per run (a
collapsible block in HTML, a sub-heading in Markdown)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Picture:
    """One image of the report: PNG bytes, the file name under figures/, and its caption."""

    name: str
    png: bytes
    caption: str


@dataclass
class Table:
    """A table: ``head`` names and ``rows`` of already formatted cells.

    ``spans`` optionally groups the columns under a second header above ``head``: (title,
    number of columns) pairs covering every column in order, e.g. ``[("", 1), ("liver", 3)]``
    over ``["case", "Dice", "ASSD", "HD95"]``; Markdown, which has one header row, joins the
    two ("liver Dice").
    """

    head: list[str]
    rows: list[list[str]]
    spans: list[tuple[str, int]] | None = None
    caption: str = ""  # a line above the table saying what it lists

    def flat_head(self) -> list[str]:
        """``head`` with each column's span title in front of it (the Markdown header)."""
        if not self.spans:
            return list(self.head)
        titles = [title for title, width in self.spans for _ in range(width)]
        return [f"{t} {h}".strip() for t, h in zip(titles, self.head, strict=True)]


@dataclass
class Group:
    """Part of a section about one run (its per-case table, its per-case pictures): a
    collapsible ``<details>`` block in HTML (``open``: unfolded on load), a ``###`` heading in
    Markdown. Rendered after the section's own content, in the order text, tables, pictures,
    notes (a table is short; pictures can be many)."""

    key: str
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    open: bool = False


@dataclass
class Section:
    """A section of the report: paragraphs, pictures, tables and notes (missing or unreadable
    artifacts), rendered in that order, then its groups."""

    key: str
    title: str
    text: list[str] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)

    def all_pictures(self) -> list[Picture]:
        """The section's pictures and its groups', in reading order."""
        return [*self.pictures, *(p for g in self.groups for p in g.pictures)]


def slug(text: str) -> str:
    """``text`` as a plain file name: every run of other characters than letters, digits and
    ``._-`` becomes one ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "figure"


def unique_names(sections: list[Section]) -> None:
    """Make every picture's file name a plain, unique file name."""
    seen: set[str] = set()
    for section in sections:
        for picture in section.all_pictures():
            stem = slug(picture.name.removesuffix(".png"))
            name, n = f"{stem}.png", 1
            while name in seen:
                n += 1
                name = f"{stem}_{n}.png"
            seen.add(name)
            picture.name = name
