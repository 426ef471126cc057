"""Stopping a broker ends its background loops within a deadline.

At shutdown every background loop was awaited until it returned. A loop in a call to a witness
that accepted the connection and never answered kept the broker running for the witness's
deadline, three times over with the retries (``audit.witness_timeout_ms``): longer than a
container's grace period, so the process was killed instead of stopping. A loop still running
``STOP_GRACE_SECONDS`` after the stop is cancelled now."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from broker.app import STOP_GRACE_SECONDS
from broker.witness_settings import WitnessSettings
from tests.integration import witnesses
from tests.integration.conftest import StartServer
from tests.integration.helpers import eventually


# One engine: what is waited for is a witness, not the database.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_witness_that_never_answers_does_not_hold_the_shutdown(
    start_server: StartServer, tmp_path: Path
) -> None:
    name = f"witness.fra/{secrets.token_hex(3)}"
    vkey = await asyncio.to_thread(witnesses.init, tmp_path / "fra", name)
    async with witnesses.never_answering() as (port, accepted):
        witness = WitnessSettings(name=name, url=f"http://127.0.0.1:{port}", vkey=vkey)
        api = await start_server(witnesses=(witness,), witness_quorum=1, witness_timeout_seconds=60.0)
        auditor = await api.node("usa-aud", "USA", roles=("audit",))
        assert (await api.call("POST", "/v1/audit/checkpoints", auditor))[0] == 201

        async def asked() -> bool:
            return bool(accepted)

        await eventually(asked)  # the witness loop waits on the witness's answer
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(STOP_GRACE_SECONDS + 10):
            await api.client.close()
        assert loop.time() - started < STOP_GRACE_SECONDS + 3
