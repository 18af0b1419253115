"""The documentation stands alone: README.md and docs/ point only inside the repository, and every relative link
resolves to a file that exists."""
import os
import re
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
PAGES = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_a_page_never_points_outside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text and "SPEC.md" not in text and "SPEC §" not in text


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves_inside_the_repository(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (page.parent / target).resolve()
        assert resolved.exists(), f"{page.name} links to {target}, which does not exist"
        assert os.path.commonpath([resolved, PROJECT]) == str(PROJECT), f"{page.name} links outside: {target}"
