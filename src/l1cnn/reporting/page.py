"""One look for every l1cnn page: the HTML template and CSS, tables, figures, number formats.

A page is a title and a list of HTML parts (:func:`heading`, :func:`section`, :func:`html_table`,
:func:`figure_grid`); :func:`write_page` wraps them in the shared template and writes the file
atomically. Markdown tables share the cell text of the HTML ones. No matplotlib here.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from l1cnn import runs
from l1cnn.errors import RunError

CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #222; background: #f4f5f7; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 12px; border-bottom: 2px solid #dde1e6; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 20px 0 8px; }
.sub { color: #666; margin: 0 0 18px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border-radius: 8px; padding: 12px 16px; min-width: 130px;
        box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.card .v { font-size: 24px; font-weight: 600; }
.card .k { color: #666; font-size: 13px; }
.warn { background: #fff4e5; border-left: 4px solid #f0a030; padding: 10px 14px; margin: 14px 0;
        border-radius: 4px; }
table { border-collapse: collapse; background: #fff; border-radius: 8px; overflow: hidden;
        box-shadow: 0 1px 3px rgba(0,0,0,.08); font-size: 14px; }
th, td { padding: 6px 12px; text-align: left; border-bottom: 1px solid #eceef1;
         vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.what { color: #555; font-size: 13px; }
.ci { color: #777; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(500px, 1fr)); gap: 16px; }
figure { background: #fff; margin: 0; padding: 12px; border-radius: 8px;
         box-shadow: 0 1px 3px rgba(0,0,0,.08); }
figure.wide { grid-column: 1 / -1; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #555; font-size: 13px; margin-top: 6px; }
figcaption b { color: #222; }
pre { background: #fff; padding: 12px 16px; border-radius: 8px; overflow-x: auto;
      box-shadow: 0 1px 3px rgba(0,0,0,.08); font-size: 13px; }
.scroll { overflow-x: auto; padding-bottom: 4px; }
.two { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; align-items: start; }
@media (max-width: 900px) { .two { grid-template-columns: 1fr; } }
footer { color: #888; font-size: 12px; margin-top: 36px; }
"""

# ------------------------------------------------------------------------------ numbers


def num(value: Any, digits: int = 3) -> str:
    """A metric value as text: floats with ``digits`` decimals, None/NaN as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def interval(low: float, high: float, digits: int = 3, signed: bool = False) -> str:
    """A confidence interval as ``[low, high]`` (``signed``: always show the sign)."""
    sign = "+" if signed else ""
    return f"[{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


# ------------------------------------------------------------------------------- tables


def html_table(
    head: Sequence[str],
    rows: Iterable[Sequence[Any]],
    num_cols: Iterable[int] = (),
    what_col: int | None = None,
) -> str:
    """An HTML table; ``num_cols`` are right-aligned with a trailing ``[...]`` shown as an
    interval, ``what_col`` is a muted description column."""
    numeric = set(num_cols)
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = html.escape(str(cell))
            if i in numeric and " [" in text:
                value, ci = text.split(" [", 1)
                text = f'{value} <span class="ci">[{ci}</span>'
            cls = ' class="num"' if i in numeric else ' class="what"' if i == what_col else ""
            cells.append(f"<td{cls}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def scrolling(table: str) -> str:
    """A table wider than the page, scrolled sideways in place instead of overflowing."""
    return f'<div class="scroll">{table}</div>'


def md_table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The same table as Markdown (``|`` in cells escaped)."""

    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------- figures, sections


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI, so a page needs no files beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_html(src: str, title: str, caption: str = "", wide: bool = False) -> str:
    """One figure: an image (a file name or a :func:`data_uri`) with an optional caption."""
    cls = ' class="wide"' if wide else ""
    text = f"<figcaption><b>{html.escape(title)}.</b> {html.escape(caption)}</figcaption>"
    return (
        f'<figure{cls}><img src="{html.escape(src)}" alt="{html.escape(title)}">'
        f"{text if caption else ''}</figure>"
    )


def figure_grid(figures: Iterable[str]) -> str:
    """Figures (from :func:`figure_html`) laid out two to a row; wide ones take a whole row."""
    return '<div class="grid">\n' + "".join(figures) + "\n</div>"


def heading(title: str, sub: str = "") -> str:
    """The page's ``<h1>`` and an optional muted line under it (``sub`` is HTML)."""
    return f"<h1>{html.escape(title)}</h1>\n" + (f'<p class="sub">{sub}</p>' if sub else "")


def section(title: str, *parts: str, sub: str = "", level: int = 2) -> str:
    """A titled section: ``<h2>`` (or ``level``), an optional muted note (HTML), then ``parts``."""
    note = f'<p class="sub">{sub}</p>\n' if sub else ""
    return f"<h{level}>{html.escape(title)}</h{level}>\n{note}" + "\n".join(parts)


EMBEDDED = "self-contained (images embedded, no scripts, no network)"


def render_page(title: str, parts: Iterable[str], footer: str = EMBEDDED) -> str:
    """The whole page: template, CSS, ``parts`` in order, a footer saying when and ``footer``."""
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>\n{body}\n<footer>Written by l1cnn on "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; {html.escape(footer)}."
        "</footer></main></body></html>\n"
    )


def write_file(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` atomically (temp file, then rename).

    Raises:
        RunError: the file cannot be written.
    """
    path = Path(path)
    try:
        runs.atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as exc:
        raise RunError(f"cannot write '{path}': {exc.strerror}") from None
    return path


def write_page(path: str | Path, title: str, parts: Iterable[str], footer: str = EMBEDDED) -> Path:
    """Render ``parts`` into the shared page template and write it atomically.

    Args:
        path: the HTML file to write.
        title: the browser title.
        parts: HTML fragments in order (headings, sections, tables, figure grids).
        footer: what the footer says about the page after the date.

    Returns:
        ``path`` as a Path.

    Raises:
        RunError: the file cannot be written.
    """
    return write_file(path, render_page(title, parts, footer))
