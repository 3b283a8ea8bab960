"""HTML pieces of the report: one self-contained page, no script, no external resource.

Figures are inlined as base64 PNG; clicking one shows it full-size through a CSS ``:target``
overlay (the image is not duplicated, so the page stays as small as its figures).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;padding:1.2em 2em;
max-width:1280px;color:#222;line-height:1.45}
h1{margin:.2em 0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.6em}h4{margin:1.2em 0 .3em}
.meta{color:#444;font-size:14px;margin:.3em 0 1em}.meta b{color:#222}
.banner{background:#fff4e0;border-left:5px solid #d98a00;padding:.6em 1em;margin:1em 0}
.alert{background:#fdecee;border-left:5px solid #b00020;padding:.5em 1em;margin:1em 0}
nav.toc{background:#f6f7f9;border:1px solid #e3e5e8;padding:.4em 1.2em;margin:1em 0;
font-size:14px}nav.toc ul{margin:.2em 0;padding-left:1.3em}
table{border-collapse:collapse;font-size:13px;margin:.6em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
td.text,th.text{text-align:left}td.meaning{text-align:left;color:#555;max-width:32em}
.scroll{overflow-x:auto;max-width:100%}
.note{color:#555;font-size:13px}.small{color:#777;font-size:12px}
.held{color:#1b7f3b;font-weight:bold}.did-not-hold{color:#b00020;font-weight:bold}
.inconclusive{color:#8a6d00;font-weight:bold}
.failed{color:#b00020}
.gallery{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
figure.fig{margin:6px 0;text-align:center;max-width:100%}
figure.fig img{max-width:min(100%,560px);border:1px solid #eee;cursor:zoom-in;background:#fff}
figure.wide img{max-width:100%}
figure.fig figcaption{font-size:12px;color:#555;max-width:560px;margin:auto}
figure.wide figcaption{max-width:none}
figure.fig .close{display:none}
figure.fig:target{position:fixed;inset:0;margin:0;z-index:10;background:rgba(25,25,25,.93);
overflow:auto;padding:2.5em 1em 1em;text-align:center;max-width:none}
figure.fig:target img{max-width:none;cursor:default}
figure.fig:target figcaption{color:#eee;max-width:none}
figure.fig:target .close{display:block;position:fixed;top:.2em;right:.6em;color:#fff;
font-size:2em;text-decoration:none}
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:12px}
a.anchor{color:inherit;text-decoration:none}
"""


def escape(value: object) -> str:
    """Text made safe for HTML."""
    return html.escape(str(value))


def number(value: object, digits: int = 3) -> str:
    """A number as a table shows it; NaN and None as an en dash."""
    if value is None:
        return "–"
    try:
        number_ = float(value)  # pyright: ignore[reportArgumentType]
    except (TypeError, ValueError):
        return escape(value)
    if math.isnan(number_):
        return "–"
    return f"{number_:.{digits}g}"


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    text_columns: Sequence[int] = (0,),
    row_ids: Sequence[str] | None = None,
) -> str:
    """A table from cells that are already HTML (`text_columns` are left-aligned)."""
    head = "".join(
        f"<th class=text>{h}</th>" if i in text_columns else f"<th>{h}</th>"
        for i, h in enumerate(header)
    )
    body = []
    for index, row in enumerate(rows):
        cells = "".join(
            f"<td class=text>{c}</td>" if i in text_columns else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        identifier = f' id="{row_ids[index]}"' if row_ids is not None else ""
        body.append(f"<tr{identifier}>{cells}</tr>")
    return f"<div class=scroll><table><tr>{head}</tr>{''.join(body)}</table></div>"


def frame_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a table (numbers to 4 significant digits, NaN as an en dash)."""
    rows = []
    for record in frame.itertuples(index=False):
        rows.append(
            [
                number(value, 4)
                if isinstance(value, float | int) and not isinstance(value, bool)
                else escape("" if value is None else value)
                for value in record
            ]
        )
    text = [i for i, c in enumerate(frame.columns) if frame[c].dtype == object]
    return table([escape(c) for c in frame.columns], rows, text_columns=text or [0])


class Figures:
    """Inlines figures with unique ids, so each can be enlarged through its own anchor."""

    def __init__(self) -> None:
        self.count = 0

    def html(self, png: Path, caption: str, *, wide: bool = False) -> str:
        """A figure that enlarges to full size when clicked (Escape: the × or Back)."""
        self.count += 1
        identifier = f"figure-{self.count}"
        data = base64.b64encode(Path(png).read_bytes()).decode()
        text = escape(caption)
        kind = "fig wide" if wide else "fig"
        return (
            f'<span id="{identifier}-at"></span><figure class="{kind}" id="{identifier}">'
            f'<a href="#{identifier}" title="enlarge"><img src="data:image/png;base64,{data}" '
            f'alt="{text}"></a><figcaption>{text}</figcaption>'
            f'<a class=close href="#{identifier}-at" title="close">×</a></figure>'
        )


def heading(level: int, identifier: str, title: str) -> str:
    """A heading with an anchor (the TOC links to it)."""
    return (
        f'<h{level} id="{identifier}"><a class=anchor href="#{identifier}">'
        f"{escape(title)}</a></h{level}>"
    )


def toc(entries: Sequence[tuple[int, str, str]]) -> str:
    """A nested table of contents from (depth, anchor, title) entries (depth 0 = top)."""
    parts = ["<nav class=toc><b>Contents</b>"]
    depth = -1
    for level, identifier, title in entries:
        if level > depth:  # a sublist opens inside the item still open
            parts.append("<ul>" * (level - depth))
        else:
            parts.append("</li>" + "</ul></li>" * (depth - level))
        depth = level
        parts.append(f'<li><a href="#{identifier}">{escape(title)}</a>')
    if depth >= 0:
        parts.append("</li>" + "</ul></li>" * depth + "</ul>")
    parts.append("</nav>")
    return "".join(parts)


def page(title: str, body: Sequence[str]) -> str:
    """The whole document."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        + "".join(body)
        + "</body></html>"
    )
