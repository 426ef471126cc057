"""A witness's answer that reaches the broker in pieces (a slow or fragmenting network between
them, a proxy that forwards as it receives) is read whole: its cosignature is kept, not taken
for a bad one and reported as a refusal."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from broker.services import ledger
from broker.services.context import Context
from tests.integration import c2sp_reference as c2sp
from tests.integration.conftest import StartServer
from tests.integration.faultproxy import FaultProxy
from tests.integration.test_witnessing import configured, eventually, health, serving, sign_now

PIECE_BYTES = 16
PIECE_DELAY_SECONDS = 0.005  # the network's pace between two pieces, not a synchronisation


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_cosignature_that_arrives_in_pieces_is_kept_not_refused(
    start_server: StartServer, ctx: Context
) -> None:
    key = ledger.public_key(ctx)["vkey"]
    witness = c2sp.ReferenceWitness(f"witness.deu/{secrets.token_hex(3)}", log_vkey=key)
    async with serving(witness) as server:
        assert server.port is not None
        proxy = FaultProxy("127.0.0.1", server.port)
        proxy.chunk_bytes, proxy.delay = PIECE_BYTES, PIECE_DELAY_SECONDS
        await proxy.start()
        try:
            api = await start_server(
                witnesses=(configured(witness, proxy.port),), witness_quorum=1, witness_timeout_seconds=5.0
            )
            auditor = await api.node("usa-aud", "USA", roles=("audit",))
            size = await sign_now(api, auditor)
            latest: dict[str, Any] = {}
            state: dict[str, Any] = {}

            async def answered() -> bool:  # cosigned, or refused
                status, checkpoint = await api.get("/v1/audit/checkpoints/latest", auditor)
                assert status == 200
                latest.update(checkpoint)
                state.update(await health(api))
                cosigned = checkpoint["size"] >= size and bool(checkpoint["cosigners"])
                return cosigned or bool(state["refused_by"])

            await eventually(answered)
            assert witness.answers == [200]
            assert state["refused_by"] == []
            assert [c["name"] for c in latest["cosigners"]] == [witness.name]
        finally:
            await proxy.close()
