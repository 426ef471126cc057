"""``GET /v1/audit/export`` and ``broker audit export`` stream the log in pages; the signed
checkpoints at its end (one every ``checkpoint_every_seconds`` of activity, millions over years,
and any auditor can add more with ``POST /v1/audit/checkpoints``) must be paged too, not read
into memory all at once with every cosignature stored for them."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from broker.crypto import notes, verify_export
from broker.domain.records import AuditDraft
from broker.services import admin, audit, ledger
from broker.services.context import Context
from broker.storage import transaction
from tests.integration.conftest import Api
from tests.integration.helpers import events

PAGE = 3
TIMEOUT = 30


async def test_export_reads_checkpoints_in_pages(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(3 * PAGE + 1):  # more checkpoints than three pages hold
        await audit.record_alone(ctx, [AuditDraft(action="noise")])
        await ledger.sign_checkpoint(ctx)
    largest: list[int] = []
    rows = transaction.TxBase.rows

    async def counted(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
        found = await rows(self, *args, **kwargs)
        largest.append(len(found))
        return found

    monkeypatch.setattr(ledger, "EXPORT_PAGE", PAGE)
    monkeypatch.setattr(transaction.TxBase, "rows", counted)
    lines = [line async for line in ledger.export(ctx)]
    monkeypatch.undo()
    checkpoints = [line for line in lines if line.startswith('{"checkpoint"')]
    assert len(checkpoints) >= 3 * PAGE + 1
    assert max(largest) <= PAGE, f"a read of {max(largest)} rows during the export"
    public = notes.public_key(ctx.keyring.checkpoint_key)
    finding = verify_export.verify(lines, public_key=public)
    assert finding.ok, finding.message


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the engine plays no part
async def test_an_export_stops_once_its_auditor_is_revoked(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export under way is an auditor's read like any other: revoked meanwhile, the auditor
    gets no page read after the revocation (the connection is cut, the export left without its
    checkpoints, so it does not verify), and the refusal is audited."""
    monkeypatch.setattr(ledger, "EXPORT_PAGE", PAGE * 40)
    auditor = await api.node("aud", "BEL", roles=("audit",))
    await audit.record_alone(api.ctx, [AuditDraft(action="noise")] * 3_000)
    port = api.client.port
    assert port is not None
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the export waits on us
        sock.setblocking(False)
        async with asyncio.timeout(TIMEOUT):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            request = f"GET /v1/audit/export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {auditor}\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            received = await loop.sock_recv(sock, 4096)
            assert received.startswith(b"HTTP/1.1 200"), received[:200]
            await admin.revoke_node(api.ctx, "aud", actor="cli")
            while not received.endswith(b"0\r\n\r\n"):  # the end of a whole export
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:  # cut
                    break
                received += chunk
    assert b'{"checkpoint"' not in received and not received.endswith(b"0\r\n\r\n"), "exported whole"
    refused = await events(api.ctx, action="audit_export", decision="deny")
    assert [(e["node"], e["reason"]) for e in refused] == [("aud", "node_revoked")]
