"""report.html: report.md as one self-contained page (tables as tables, plots inline)."""

from __future__ import annotations

import base64
from pathlib import Path

from analysis.report.html import markdown_html

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_the_page_holds_the_markdowns_table_text_and_images_inline(tmp_path: Path) -> None:
    (tmp_path / "plot.png").write_bytes(PNG)
    markdown = "\n".join(
        [
            "# Report: study `s<1>`",
            "",
            "**Table.** Study `s` (run `abc`),",
            "last-epoch metrics.",
            "",
            "| method | row | map |",
            "|---|---|---|",
            "| distillation | a \\| b | 61.5 |",
            "| distillation | swa | - |",
            "",
            "## Pareto front",
            "",
            "![Pareto front](plot.png)",
            "",
            "![gone](missing.png)",
            "",
            '    tags.apc.pareto = "true"',
        ]
    )
    page = markdown_html(markdown, folder=tmp_path, title="Report & co")
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Report &amp; co</title>" in page
    assert "<h1>Report: study <code>s&lt;1&gt;</code></h1>" in page
    assert (
        "<p><strong>Table.</strong> Study <code>s</code> (run <code>abc</code>), "
        "last-epoch metrics.</p>"
    ) in page
    assert "<thead><tr><th>method</th><th>row</th><th>map</th>" in page
    assert '<tr><td>distillation</td><td>a | b</td><td class="num">61.5</td></tr>' in page
    assert '<td class="num">-</td>' in page
    data = base64.b64encode(PNG).decode()
    assert f'<img alt="Pareto front" src="data:image/png;base64,{data}">' in page
    assert '<img alt="gone" src="missing.png">' in page  # kept by name, not dropped silently
    assert "<pre><code>tags.apc.pareto = &quot;true&quot;</code></pre>" in page
    assert "<h2>Pareto front</h2>" in page
