"""The README stays a short front door, and every relative link in it and in docs/ resolves."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_LINES = 300
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def relative_links(text):
    """Link targets that name a file in the repository (no scheme, not a bare anchor), without
    their anchor; links shown inside code are not links."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    out = []
    for target in LINK.findall(text):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def test_link_parser():
    text = ("see [a](docs/a.md#x), ![img](fig/p.png), [web](https://example.org/a.md), "
            "[here](#top), `[code](not/a/link.md)`\n```\n[block](no.md)\n```\n[t](b.md \"title\")")
    assert relative_links(text) == ["docs/a.md", "fig/p.png", "b.md"]


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; keep it under {README_MAX_LINES} and move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(page):
    links = relative_links(page.read_text())
    missing = [t for t in links if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(REPO)}: links to missing files: {missing}"
