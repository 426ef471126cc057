"""docs/ stands on its own and its configuration reference matches the settings code."""

from __future__ import annotations

import re

from broker.settings import KNOWN_KEYS
from tests.conftest import ROOT

DOCS = ROOT / "docs"


def test_the_configuration_reference_names_exactly_the_keys_the_settings_read() -> None:
    text = (DOCS / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(\w+\.\w+)` \|", text, re.MULTILINE))
    known = {f"{table}.{key}" for table, keys in KNOWN_KEYS.items() for key in keys}
    assert documented == known


def test_the_shipped_broker_toml_sets_only_known_keys_and_the_documented_defaults() -> None:
    reference = (DOCS / "operations.md").read_text()
    shipped = (ROOT / "config" / "broker.toml").read_text()
    table = ""
    for line in shipped.splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line.strip()):
            table = header.group(1)
        elif setting := re.fullmatch(r"(\w+) = (.+)", line.strip()):
            key, value = setting.groups()
            assert key in KNOWN_KEYS[table], f"{table}.{key}"
            documented = re.search(rf"^\| `{table}\.{key}` \| `?([^`|]*)`? \|", reference, re.MULTILINE)
            assert documented, f"{table}.{key}"
            assert documented.group(1).strip() == value.strip('"'), f"{table}.{key}"


def test_docs_never_send_a_reader_outside_the_repository() -> None:
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, page.name
