"""README.md, CHANGELOG.md, CONTRIBUTING.md and every page in docs/ render as written with a
CommonMark renderer (markdown-it-py, tables on as GitHub renders them): each table row keeps the
header's column count, every relative link resolves, documents are linked (not named in code
spans), and the close-code tables list every code the websocket sends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from tests.conftest import ROOT

PAGES = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")]
)
RENDERER = MarkdownIt("commonmark").enable("table")


def _tokens(page: Path) -> list[Token]:
    return RENDERER.parse(page.read_text())


def _inline(tokens: list[Token]) -> list[Token]:
    return [child for t in tokens if t.type == "inline" for child in t.children or ()]


def _source_cells(line: str) -> int:
    """The cells GitHub's table extension reads in a source row: an unescaped | splits a cell
    even inside a code span."""
    row = line.strip()
    row = row.removeprefix("|")
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return len(re.split(r"(?<!\\)\|", row))


def test_every_page_exists() -> None:
    for page in PAGES:
        assert page.is_file(), page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_table_rows_keep_the_header_column_count(page: Path) -> None:
    tokens = _tokens(page)
    lines = page.read_text().splitlines()
    for at, token in enumerate(tokens):
        if token.type != "table_open":
            continue
        assert token.map is not None
        header = 0
        for inner in tokens[at:]:
            if inner.type == "th_open":
                header += 1
            if inner.type == "tr_close":
                break
        start, end = token.map
        for number in range(start, end):
            if number == start + 1:
                continue  # the delimiter row
            assert _source_cells(lines[number]) == header, f"{page.name}:{number + 1}: {lines[number]}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    for token in _inline(_tokens(page)):
        if token.type != "link_open":
            continue
        href = str(token.attrs.get("href", ""))
        if re.match(r"[a-z][a-z0-9+.-]*:", href) or href.startswith("#"):
            continue
        target = (page.parent / href.split("#", 1)[0]).resolve()
        assert target.exists(), f"{page.name}: link to {href} resolves to nothing"
        assert ROOT in target.parents or target == ROOT, f"{page.name}: {href} leaves the repository"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_documents_are_links_not_code_spans(page: Path) -> None:
    for token in _inline(_tokens(page)):
        if token.type == "code_inline" and token.content.endswith(".md"):
            for base in (page.parent, ROOT, ROOT / "docs"):
                assert not (base / token.content).is_file(), f"{page.name}: `{token.content}` is not a link"


def test_the_readme_names_config_files_by_their_path() -> None:
    text = (ROOT / "README.md").read_text()
    assert not re.search(r"(?<!config/)broker\.toml", text)


def test_no_page_says_a_document_may_be_absent() -> None:
    for page in PAGES:
        assert "where present" not in page.read_text(), page.name


def _sent_close_codes() -> set[str]:
    source = (ROOT / "broker" / "web" / "ws.py").read_text()
    named = set(re.findall(r"^CLOSE_\w+ = (\d{4})$", source, re.MULTILINE))
    literal = set(re.findall(r"code, reason = (\d{4}),", source))
    return named | literal


def test_close_code_tables_list_every_code_the_websocket_sends() -> None:
    sent = _sent_close_codes()
    assert {"1001", "1011", "4001", "4008", "4400"} <= sent
    for page in (ROOT / "README.md", ROOT / "docs" / "protocol.md"):
        listed = set(re.findall(r"^\| (\d{4}) \|", page.read_text(), re.MULTILINE))
        assert sent <= listed, (page.name, sent - listed)
    docstring = (ROOT / "broker" / "web" / "ws.py").read_text().split('"""')[1]
    assert all(code in docstring for code in sent), sent
