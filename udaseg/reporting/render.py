"""The report rendered: ``report.md`` (images linked as ``figures/<name>.png``) and a
self-contained ``report.html`` (images as base64 ``data:`` URIs, inline stylesheet and script).

A section's groups (one per run) become collapsible ``<details>`` blocks in HTML, so a report of
many runs and cases stays readable, and ``###`` sub-headings in Markdown.
"""

from __future__ import annotations

import base64
import html
import re

from udaseg import layout
from udaseg.reporting.assets import CSS, SCRIPT
from udaseg.reporting.document import Group, Picture, Section, Table, slug


def render_markdown(title: str, meta: str, sections: list[Section]) -> str:
    """report.md: headings, text, images linked as figures/<name>.png, tables, notes; each
    group under a ``###`` heading (its tables before its pictures)."""
    lines = [f"# {title}", "", meta, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        lines += _md_text(section.text)
        lines += _md_pictures(section.pictures) + _md_tables(section.tables)
        lines += _md_notes(section.notes)
        for group in section.groups:
            lines += [f"### {group.title}", ""]
            lines += _md_text(group.text)
            lines += _md_tables(group.tables) + _md_pictures(group.pictures)
            lines += _md_notes(group.notes)
    return "\n".join(lines).rstrip() + "\n"


def _md_text(paragraphs: list[str]) -> list[str]:
    return [line for paragraph in paragraphs for line in (paragraph, "")]


def _md_pictures(pictures: list[Picture]) -> list[str]:
    lines = []
    for picture in pictures:
        lines += [
            f"![{picture.name.removesuffix('.png')}]({layout.FIGURES}/{picture.name})",
            "",
            f"*{picture.caption}*",
            "",
        ]
    return lines


def _md_tables(tables: list[Table]) -> list[str]:
    return [line for table in tables for line in _md_table(table)]


def _md_notes(notes: list[str]) -> list[str]:
    return [*(f"- {note}" for note in notes), *([""] if notes else [])]


def _md_table(table: Table) -> list[str]:
    lines = [f"*{table.caption}*", ""] if table.caption else []
    lines.append("| " + " | ".join(_md_cell(h) for h in table.flat_head()) + " |")
    rule = (" ---: |" if numeric else " --- |" for numeric in _numeric_columns(table))
    lines.append("|" + "".join(rule))
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return [*lines, ""]


def _numeric_columns(table: Table) -> list[bool]:
    """Which columns hold only numbers (or — for a missing one): those are right-aligned."""

    def numeric(cell: str) -> bool:
        return bool(re.fullmatch(r"[-+]?\d+(\.\d+)?( \w+)?|—", cell.strip()))

    return [all(numeric(row[i]) for row in table.rows) for i in range(len(table.head))]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


def render_html(title: str, meta: str, sections: list[Section]) -> str:
    """report.html: self-contained (images as base64 data URIs, inline CSS and script)."""
    e = html.escape
    n_images = sum(len(s.all_pictures()) for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">{e(meta)}</p>',
        f'<p id="render-check" data-images="{n_images}" data-rendered="">'
        f"{n_images} images (not yet checked)</p>",
        "<nav>" + "".join(f'<a href="#{s.key}">{e(s.title)}</a>' for s in sections) + "</nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.key}"><h2>{e(section.title)}</h2>')
        parts += [f"<p>{_inline_code(e(p))}</p>" for p in section.text]
        parts += [_html_figure(picture) for picture in section.pictures]
        parts += [_html_table(table) for table in section.tables]
        parts += [f'<p class="note">{_inline_code(e(n))}</p>' for n in section.notes]
        parts += [_html_group(section.key, group) for group in section.groups]
        parts.append("</section>")
    parts += [f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _html_group(section_key: str, group: Group) -> str:
    e = html.escape
    parts = [
        f'<details id="{section_key}-{slug(group.key)}"{" open" if group.open else ""}>'
        f"<summary>{e(group.title)}</summary>"
    ]
    parts += [f"<p>{_inline_code(e(p))}</p>" for p in group.text]
    parts += [_html_table(table) for table in group.tables]
    parts += [_html_figure(picture) for picture in group.pictures]
    parts += [f'<p class="note">{_inline_code(e(n))}</p>' for n in group.notes]
    parts.append("</details>")
    return "\n".join(parts)


def _html_figure(picture: Picture) -> str:
    e = html.escape
    data = base64.b64encode(picture.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{e(picture.caption)}">'
        f"<figcaption>{e(picture.caption)}</figcaption></figure>"
    )


def _inline_code(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _html_table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in table.head)
    if table.spans:
        spans = "".join(
            f'<th colspan="{width}">{e(title)}</th>' if width > 1 else f"<th>{e(title)}</th>"
            for title, width in table.spans
        )
        head = f"<tr>{spans}</tr><tr>{head}</tr>"
    else:
        head = f"<tr>{head}</tr>"
    numeric = _numeric_columns(table)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if numeric[i] else ''}>{e(cell)}</td>" for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in table.rows
    )
    caption = f"<caption>{_inline_code(e(table.caption))}</caption>" if table.caption else ""
    return f"<table>{caption}<thead>{head}</thead><tbody>{body}</tbody></table>"
