"""A hostile member node with the publish role against other nodes' publishes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from broker.errors import InvalidInput
from broker.services import publishing
from tests.integration.conftest import Api
from tests.integration.helpers import body


async def _raw_publish(api: Api, token: str, key: bytes) -> int:
    """POST a report with ``key`` sent as raw header bytes (aiohttp keeps bytes that are not
    UTF-8 as lone surrogates); the status code."""
    data = json.dumps(body()).encode()
    reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    writer.write(
        b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: {len(data)}\r\n".encode()
        + b"Idempotency-Key: "
        + key
        + b"\r\n\r\n"
        + data
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


async def test_an_idempotency_key_that_is_not_utf8_is_a_422(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    assert await _raw_publish(api, usa, b"\xff\xfe-key") == 422
    _, page = await api.get("/v1/reports", usa)
    assert page["reports"] == []


async def test_an_idempotency_key_that_is_not_utf8_does_not_split_others_batch(api: Api) -> None:
    """It used to reach the database inside the group commit, fail the shared transaction, and
    so make every honest publish of the batch retry in a transaction of its own."""
    outcomes, transactions = await _beside_twenty_honest(api, body(), "key-\udcff")
    assert all(isinstance(o, dict) for o in outcomes[:-1])
    assert isinstance(outcomes[-1], InvalidInput) and outcomes[-1].code == "invalid_idempotency_key"
    assert transactions <= 2


async def test_a_payload_object_with_a_long_spec_version_does_not_split_others_batch(api: Api) -> None:
    """A STIX object's ``spec_version`` goes to the TAXII index (8 characters on PostgreSQL):
    a longer one failed the shared transaction, and every honest publish of the batch was
    retried alone, and the report itself answered 400 (SQLite, which does not enforce string
    lengths, stored it)."""
    odd = {
        "type": "indicator",
        "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
        "spec_version": "2.1" + "x" * 300,
    }
    outcomes, transactions = await _beside_twenty_honest(api, body(payload=odd), None)
    assert all(isinstance(o, dict) for o in outcomes), outcomes[-1]  # the odd one is stored too
    assert transactions <= 2


async def _beside_twenty_honest(
    api: Api, hostile: dict[str, Any], key: str | None
) -> tuple[list[object], int]:
    """Twenty honest publishes from gbr-1 and ``hostile`` (with ``key``) from usa-1, at once:
    each outcome (the hostile one last), and the write transactions they took."""
    await api.node("usa-1", "USA")
    await api.node("gbr-1", "GBR")
    ctx = api.server_ctx
    async with ctx.db.transaction() as tx:
        usa, gbr = await tx.node("usa-1"), await tx.node("gbr-1")
    assert usa is not None and gbr is not None
    await publishing.publish(ctx, gbr, body(), idempotency_key=None)  # caches warm, group commit made
    assert ctx.publishes is not None
    before = ctx.publishes.transactions
    honest = [publishing.publish(ctx, gbr, body(payload={"n": i}), idempotency_key=None) for i in range(20)]
    outcomes = await asyncio.gather(
        *honest, publishing.publish(ctx, usa, hostile, idempotency_key=key), return_exceptions=True
    )
    return list(outcomes), ctx.publishes.transactions - before
