"""The README renders as written: every fence closed, the sections are headings (not swallowed
by a code block), its Python blocks compile, and it sends nobody outside the repository."""

from __future__ import annotations

from markdown_it import MarkdownIt

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
TOKENS = MarkdownIt("commonmark").parse(README)


def test_every_fence_is_closed() -> None:
    lines = README.splitlines()
    for token in TOKENS:
        if token.type == "fence":
            assert token.map is not None
            end = token.map[1]
            assert end <= len(lines) and lines[end - 1].strip().startswith("```"), (
                f"unclosed fence at {token.map}"
            )


def test_sections_are_headings() -> None:
    headings = [TOKENS[i + 1].content for i, t in enumerate(TOKENS) if t.type == "heading_open"]
    for wanted in ("The two commands", "Using it", "Streams", "Python SDK", "Audit log", "Configuration"):
        assert wanted in headings


def test_python_blocks_compile() -> None:
    blocks = [t.content for t in TOKENS if t.type == "fence" and t.info.strip() == "python"]
    assert blocks
    for block in blocks:
        compile(block, "README.md", "exec")


def test_no_reference_outside_the_repository() -> None:
    assert "../shared" not in README and "DESIGN.md" not in README
