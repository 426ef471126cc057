"""Every file in examples/ runs against a real broker on loopback, as its docstring says."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from broker.crypto.keys import new_sealing_key, new_signing_key, private_b64, public_b64
from tests.conftest import ROOT
from tests.integration.conftest import Api
from tests.integration.helpers import events, streaming

EXAMPLES = ROOT / "examples"
BUNDLE = json.loads((EXAMPLES / "indicator_bundle.json").read_text())


async def _run(*argv: str, env: dict[str, str], seconds: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), seconds)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_the_example_bundle_is_valid_stix() -> None:
    from stix2validator import ValidationOptions, validate_instance

    results = validate_instance(BUNDLE, ValidationOptions(version="2.1"))
    assert results.is_valid, [str(e) for e in results.errors]


async def test_sdk_publisher_and_subscriber(api: Api, tmp_path: Path) -> None:
    signing, sealing = new_signing_key(), new_sealing_key()
    usa = await api.node("usa-1", "USA", ed25519_public_key=public_b64(signing))
    gbr = await api.node("gbr-1", "GBR", x25519_public_key=public_b64(sealing))
    auditor = await api.node("aud", "BEL", roles=("audit",))
    (tmp_path / "usa.key").write_text(private_b64(signing))
    (tmp_path / "gbr.key").write_text(private_b64(sealing))
    base = {**os.environ, "BROKER_URL": api.base_url}
    subscriber = asyncio.create_task(
        _run(
            sys.executable,
            str(EXAMPLES / "subscriber.py"),
            "1",
            env={**base, "BROKER_TOKEN": gbr, "BROKER_SEALING_KEY": str(tmp_path / "gbr.key")},
        )
    )
    await streaming(api, auditor, ["gbr-1"])  # the subscriber's stream is live
    receipt = json.loads(
        await _run(
            sys.executable,
            str(EXAMPLES / "publisher.py"),
            str(EXAMPLES / "indicator_bundle.json"),
            env={**base, "BROKER_TOKEN": usa, "BROKER_SIGNING_KEY": str(tmp_path / "usa.key")},
        )
    )
    line = json.loads(await subscriber)
    assert line["id"] == receipt["id"] and line["sealed"] is True and line["verified"] is True
    assert line["payload"] == BUNDLE


async def test_raw_websocket_client(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    _, receipt = await api.publish(
        usa, {"label": {"classification": "SECRET", "releasable_to": ["NATO"]}, "payload": BUNDLE}
    )
    out = await _run(
        sys.executable,
        str(EXAMPLES / "raw_websocket.py"),
        "1",
        env={**os.environ, "BROKER_URL": api.base_url, "BROKER_TOKEN": swe},
    )
    assert json.loads(out)["id"] == receipt["id"]
    async with api.ctx.db.transaction() as tx:
        assert await tx.cursor(node="swe-1", name="raw") == receipt["sequence"]


async def test_curl_session(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    env = {**os.environ, "BROKER_URL": api.base_url, "PUBLISHER_TOKEN": usa, "READER_TOKEN": swe}
    out = await _run("bash", str(EXAMPLES / "curl_session.sh"), env=env)
    assert "published:" in out and '"recalled": true' in out
    recalls = await events(api.ctx, action="recall", decision="allow")
    assert [e["actor"] for e in recalls] == ["usa-1"]
