"""The report as content, before it is rendered: sections of paragraphs, pictures, tables and
notes (what is missing or could not be read)."""

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
    """A table: ``head`` names and ``rows`` of already formatted cells."""

    head: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """A section of the report: paragraphs, pictures, tables and notes (missing or unreadable
    artifacts), rendered in that order."""

    key: str
    title: str
    text: list[str] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    """``text`` as a plain file name: every run of other characters than letters, digits and
    ``._-`` becomes one ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "figure"


def unique_names(sections: list[Section]) -> None:
    """Make every picture's file name a plain, unique file name."""
    seen: set[str] = set()
    for section in sections:
        for picture in section.pictures:
            stem = slug(picture.name.removesuffix(".png"))
            name, n = f"{stem}.png", 1
            while name in seen:
                n += 1
                name = f"{stem}_{n}.png"
            seen.add(name)
            picture.name = name
