"""Every relative link in README.md and docs/ leads somewhere: a file that exists and, with an
anchor, a heading of that file (GitHub's anchors). A link to `benchmarks.md#scale`, a heading
that never existed, once sent readers to the top of a 300-line page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """The page without its code: a link-like text in code is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0)[1:-1], heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M):
        name, n = anchor(heading), 1
        while name in found:  # a repeated heading gets -1, -2...
            name, n = f"{anchor(heading)}-{n}", n + 1
        found.add(name)
    return found


def links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(page.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:...
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT)}")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: no heading #{fragment} in {file.name}")
    assert broken == []


def test_the_checker_sees_links_and_anchors():
    """The checker itself: it finds a page's links and GitHub's anchors."""
    operations = ROOT / "docs" / "operations.md"
    assert any(link.endswith(".md") or ".md#" in link for link in links(ROOT / "README.md"))
    assert "data-lifecycle-retention-and-erasure" in anchors(operations)
    assert anchor("Data lifecycle: retention and erasure") == "data-lifecycle-retention-and-erasure"
    assert anchor("`make run` on a `fresh` machine") == "make-run-on-a-fresh-machine"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_table_renders_whole(page):
    """A table's rows follow its header without a break: after a blank line, a row of cells
    is no longer in the table and shows as text (docs/providers.md's status table once lost
    its last three providers' rows to a blank line)."""
    lines = FENCE.sub("", page.read_text()).splitlines()
    stray = [
        f"line {n + 1}: {line[:60]}"
        for n, line in enumerate(lines)
        if line.startswith("|")
        and (n == 0 or not lines[n - 1].startswith("|"))
        and not (n + 1 < len(lines) and re.match(r"^\|[ :|-]+\|?\s*$", lines[n + 1]))
    ]
    assert stray == []
