"""``report.html``: the report's Markdown as one self-contained HTML page.

MLflow's artifact viewer shows an ``.html`` artifact in a sandboxed iframe loaded from a
``blob:`` URL (MLflow 3.17's ``ShowArtifactHtmlView``), where a relative link such as
``pareto_matrix.png`` resolves to nothing; so the plots go inline, as ``data:image/png;base64``
URIs, and the page needs no other file (nor a network).

The page is converted from ``report.md`` itself (:func:`markdown_html`), so the two always hold
the same text. The converter knows exactly the Markdown :mod:`analysis.report.render` writes:
``#`` headings, paragraphs, pipe tables (``\\|`` inside a cell), images on a line of their own,
indented code lines, `` `code` `` and ``**bold**``; anything else is kept as escaped text.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Final

__all__ = ["markdown_html", "write_html"]

_IMAGE: Final = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)$")
_HEADING: Final = re.compile(r"^(?P<level>#{1,6}) (?P<text>.*)$")
_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _inline(text: str) -> str:
    """Escape ``text`` and render its `` `code` `` and ``**bold**`` spans."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            escaped = html.escape(part)
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped))
    return "".join(out)


def _cells(line: str) -> list[str]:
    """The cells of a pipe-table row; ``\\|`` is a literal bar."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", body)]


def _numeric(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?|-", cell))


def _table(lines: list[str]) -> str:
    header, rows = _cells(lines[0]), [_cells(line) for line in lines[2:]]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        cells = "".join(
            f'<td class="num">{_inline(c)}</td>' if _numeric(c) else f"<td>{_inline(c)}</td>"
            for c in row
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _image(alt: str, src: str, folder: Path) -> str:
    """``src`` (a file of ``folder``) inline as a data URI; a missing file keeps its name."""
    path = folder / src
    if "/" in src or not path.is_file():
        return f'<p><img alt="{html.escape(alt)}" src="{html.escape(src)}"></p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    kind = "png" if src.lower().endswith(".png") else src.rpartition(".")[2].lower()
    return f'<p><img alt="{html.escape(alt)}" src="data:image/{kind};base64,{data}"></p>'


def markdown_html(markdown: str, *, folder: Path, title: str) -> str:
    """``markdown`` (as :mod:`analysis.report.render` writes it) as a whole HTML page; images
    are read from ``folder`` and inlined."""
    blocks: list[str] = []
    paragraph: list[str] = []
    lines = markdown.splitlines()

    def flush() -> None:
        if paragraph:
            blocks.append("<p>" + _inline(" ".join(paragraph)) + "</p>")
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            flush()
        elif stripped.startswith("|"):
            flush()
            table = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                table.append(lines[i])
                i += 1
            blocks.append(_table(table))
            continue
        elif (heading := _HEADING.match(stripped)) is not None:
            flush()
            level = len(heading["level"])
            blocks.append(f"<h{level}>{_inline(heading['text'])}</h{level}>")
        elif (image := _IMAGE.match(stripped)) is not None:
            flush()
            blocks.append(_image(image["alt"], image["src"], folder))
        elif line.startswith("    "):
            flush()
            blocks.append(f"<pre><code>{html.escape(line[4:])}</code></pre>")
        else:
            paragraph.append(stripped)
        i += 1
    flush()
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_STYLE}</style>",
            "</head><body>",
            *blocks,
            "</body></html>",
            "",
        ]
    )


def write_html(markdown_path: Path, html_path: Path, *, title: str) -> Path:
    """Write ``html_path`` from the Markdown file ``markdown_path`` (images beside it)."""
    text = markdown_path.read_text("utf-8")
    html_path.write_text(markdown_html(text, folder=markdown_path.parent, title=title), "utf-8")
    return html_path
