"""The report rendered: ``report.md`` (images linked as ``figures/<name>.png``) and a
self-contained ``report.html`` (images as base64 ``data:`` URIs, inline stylesheet and script)."""

from __future__ import annotations

import base64
import html
import re

from udaseg import layout
from udaseg.reporting.assets import CSS, SCRIPT
from udaseg.reporting.document import Section, Table


def render_markdown(title: str, meta: str, sections: list[Section]) -> str:
    """report.md: headings, text, images linked as figures/<name>.png, tables, notes."""
    lines = [f"# {title}", "", meta, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.text:
            lines += [paragraph, ""]
        for picture in section.pictures:
            lines += [
                f"![{picture.name.removesuffix('.png')}]({layout.FIGURES}/{picture.name})",
                "",
                f"*{picture.caption}*",
                "",
            ]
        for table in section.tables:
            lines.append("| " + " | ".join(_md_cell(h) for h in table.head) + " |")
            rule = (" ---: |" if numeric else " --- |" for numeric in _numeric_columns(table))
            lines.append("|" + "".join(rule))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
            lines.append("")
        for note in section.notes:
            lines.append(f"- {note}")
        if section.notes:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


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
    n_images = sum(len(s.pictures) for s in sections)
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
        for picture in section.pictures:
            data = base64.b64encode(picture.png).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(picture.caption)}">'
                f"<figcaption>{e(picture.caption)}</figcaption></figure>"
            )
        for table in section.tables:
            parts.append(_html_table(table))
        parts += [f'<p class="note">{_inline_code(e(n))}</p>' for n in section.notes]
        parts.append("</section>")
    parts += [f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _inline_code(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _html_table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in table.head)
    numeric = _numeric_columns(table)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if numeric[i] else ''}>{e(cell)}</td>" for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
