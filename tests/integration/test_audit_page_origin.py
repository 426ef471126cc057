"""The auditor page checks that a checkpoint is one of the pinned log: its origin must be the name
the log's key is pinned under (a vkey's name; with a bare key, the name the key signed under),
as the SDK and `broker audit verify` do. A broker holding the key could otherwise show the note
of another log (another origin, signed with the same key) as this log's checkpoint. Headless
Chromium, as tests/integration/test_audit_page.py; the page's own verifyNote is called on notes
made here."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import pytest

from broker.crypto import notes
from tests.integration.conftest import Api
from tests.integration.test_audit_page import (
    Chromium,
    chromium_fixture,  # noqa: F401 (the fixture)
    needs_browser,
    sign_in,
    wait_for,
)

VERIFY = """
const [pinText, note, done] = arguments;
(async () => {
  const result = await verifyNote(note, await parsePin(pinText));
  done([result.ok, result.why || ""]);
})().catch((e) => done([false, "error: " + e.message]));
"""
LOG = "broker.example/audit"


def _verdicts(chromium: Chromium, base: str, token: str, cases: list[tuple[str, str]]) -> list[Any]:
    from selenium.webdriver.common.by import By

    driver = chromium.tab(base)
    sign_in(driver, base, token)
    wait_for(driver, lambda d: d.find_element(By.ID, "checkpoint-verdict").text)
    return [driver.execute_async_script(VERIFY, pin, note) for pin, note in cases]


def _note(origin: str, *, signer: str, key: bytes) -> str:
    body = notes.CheckpointBody(origin=origin, size=3, root=bytes(range(32)))
    return notes.sign(body, name=signer, private_key=key)[0]


@needs_browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the page's own check
async def test_the_page_refuses_a_checkpoint_of_another_log_signed_with_the_pinned_key(
    api: Api, chromium: Chromium
) -> None:
    auditor = await api.node("aud", "BEL", roles=("audit",))
    key = os.urandom(32)
    public = notes.public_key(key)
    vkey, bare = notes.vkey(LOG, public), base64.b64encode(public).decode()
    cases = [
        (vkey, _note(LOG, signer=LOG, key=key)),  # this log's checkpoint
        (vkey, _note("other.example/audit", signer=LOG, key=key)),  # another origin, our name
        (bare, _note(LOG, signer=LOG, key=key)),
        (bare, _note("other.example/audit", signer=LOG, key=key)),  # the key's name is not its origin
    ]
    found = await asyncio.to_thread(_verdicts, chromium, api.base_url, auditor, cases)
    assert found[0] == [True, ""] and found[2] == [True, ""], found
    for ok, why in (found[1], found[3]):
        assert not ok and "origin" in why, found
