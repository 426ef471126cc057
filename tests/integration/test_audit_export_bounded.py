"""``GET /v1/audit/export`` and ``broker audit export`` stream the log in pages; the signed
checkpoints at its end (one every ``checkpoint_every_seconds`` of activity, millions over years,
and any auditor can add more with ``POST /v1/audit/checkpoints``) must be paged too, not read
into memory all at once with every cosignature stored for them."""

from __future__ import annotations

from typing import Any

import pytest

from broker.crypto import notes, verify_export
from broker.domain.records import AuditDraft
from broker.services import audit, ledger
from broker.services.context import Context
from broker.storage import transaction

PAGE = 3


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
