"""GET /metrics: Prometheus text for the audit role, fed by the acts the broker records."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp

from broker.crypto.keys import new_sealing_key, public_b64
from broker.services import ledger
from tests.integration.conftest import Api
from tests.integration.helpers import body


async def test_metrics_need_the_audit_role_and_count_what_happened(api: Api) -> None:
    usa, rus = await api.node("usa-1", "USA"), await api.node("rus-1", "RUS")
    gbr = await api.node("gbr-1", "GBR", x25519_public_key=public_b64(new_sealing_key()))
    auditor = await api.node("aud", "BEL", roles=("audit",))
    _, receipt = await api.publish(usa, body(to=["NATO"]))
    assert (await api.get(f"/v1/reports/{receipt['id']}", gbr))[0] == 200  # sealed to gbr-1
    assert (await api.get(f"/v1/reports/{receipt['id']}", rus))[0] == 404
    await ledger.sign_checkpoint(api.server_ctx)
    assert (await api.get("/metrics"))[0] == 401
    assert (await api.get("/metrics", usa))[0] == 403
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{api.base_url}/v1/stream?name=ops", headers={"Authorization": f"Bearer {usa}"}
        )
        async with asyncio.timeout(20):
            assert json.loads((await ws.receive()).data)["type"] == "report"
        status, text = await api.get("/metrics", auditor)
        await ws.close()
    assert status == 200
    assert 'broker_audit_events_total{action="publish",decision="allow",reason="accepted"}' in text
    assert 'broker_audit_events_total{action="read",decision="deny",reason="not_releasable"}' in text
    assert "broker_seal_seconds_count" in text and "broker_checkpoint_age_seconds" in text
    commits = re.search(r"^broker_commit_seconds_count (\S+)$", text, re.MULTILINE)
    assert commits and float(commits.group(1)) >= 1  # the publish's group commit
    held = re.search(r"^broker_write_lock_seconds_count (\S+)$", text, re.MULTILINE)
    assert held and float(held.group(1)) >= 1  # the publish held the write lock once at least
    assert "broker_open_streams 1.0" in text
    assert 'broker_stream_queue_frames{node="usa-1",stream="ops"}' in text
    assert 'broker_stream_lag{node="usa-1",stream="ops"}' in text
    assert usa not in text and receipt["id"] not in text  # no secrets, no report ids
