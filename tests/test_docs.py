"""The documentation holds together: README is a front page, its links and docs/'s resolve.

README.md stays short and links into docs/; these checks keep the links (files and heading
anchors), the docs/ pages the code's docstrings cite, and README's command table in step with
the files and with the command line that ``study.cli`` defines.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The Markdown pages whose relative links must resolve.
PAGES = sorted([README, *(ROOT / "docs").glob("*.md"), *ROOT.glob("CHANGELOG.md")])
#: Where Python docstrings and comments may cite docs/ pages.
PACKAGES = ("study", "analysis", "trainables", "search_spaces", "bench", "tests")
MAX_README_LINES = 200

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_CITATION = re.compile(r"\bdocs/[\w./-]+?\.md(?:#[\w-]+)?")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and code spans (their brackets are not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation but ``-`` and ``_`` removed,
    spaces to hyphens (markup characters such as backticks go with the punctuation)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link: its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The heading anchors of ``page``; a repeated slug gets ``-1``, ``-2`` as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def _link_problems(page: Path) -> list[str]:
    problems = []
    for target in _LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}: link {target!r}"
        if not linked.exists():
            problems.append(f"{where}: {path_part} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: no heading with anchor #{anchor} in {linked.name}")
    return problems


def test_slug_follows_github() -> None:
    assert slug("A study's lifecycle") == "a-studys-lifecycle"
    assert slug("Evaluation, PIEs and attribution methods") == (
        "evaluation-pies-and-attribution-methods"
    )
    assert slug("`apc report`") == "apc-report"
    assert slug("Known faults_of the-code") == "known-faults_of-the-code"


def test_the_docs_pages_exist() -> None:
    names = {page.name for page in (ROOT / "docs").glob("*.md")}
    assert {"design.md", "operations.md", "method.md", "benchmarks.md", "demo.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    assert _link_problems(page) == []


def test_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


def _python_files() -> list[Path]:
    return [
        path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.resolve() != Path(__file__).resolve()
    ]


def test_docs_cited_in_python_exist() -> None:
    problems = []
    for path in _python_files():
        for citation in _CITATION.findall(path.read_text()):
            page, _, anchor = citation.partition("#")
            where = f"{path.relative_to(ROOT)}: {citation}"
            if not (ROOT / page).is_file():
                problems.append(f"{where}: {page} does not exist")
            elif anchor and anchor not in anchors(ROOT / page):
                problems.append(f"{where}: no heading with anchor #{anchor}")
    assert problems == []


def test_python_cites_docs_not_the_old_design_page() -> None:
    """A bare ``design.md`` meant the team's target design; the built contracts are docs/."""
    stale = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _python_files()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"(?<!docs/)\bdesign\.md", line)
    ]
    assert stale == []


def _subcommands() -> set[str]:
    from study.cli import _parser

    actions = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return set(actions[0].choices)


def _readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_readme_command_table_names_every_subcommand() -> None:
    rows = [line for line in _readme_section("Commands").splitlines() if line.startswith("|")]
    named = {m.group(1) for row in rows if (m := re.match(r"\|\s*`apc ([a-z][\w-]*)", row))}
    assert named == _subcommands()
