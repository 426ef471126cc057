"""Witnesses cosign the broker's checkpoints (issue 24): two witnesses cosign, and the lines
verify with an independent C2SP implementation and with ``audit verify --quorum 2``; a database
restored from a backup and continued (the fork) is refused by both witnesses and reported
(metric, audit event, health), its export fails ``--quorum 1`` while the original one verifies;
a witness that does not answer blocks no publish, and the quorum catches up when it returns."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy.engine import make_url

from broker.client import BrokerClient, WitnessError, verify_witnessed
from broker.crypto import pki
from broker.services import ledger
from broker.services.context import Context
from broker.settings import Settings
from broker.witness_settings import WitnessSettings
from tests.conftest import PG_DEFAULT, _pg_exec
from tests.integration import c2sp_reference as c2sp
from tests.integration import witnesses
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import Cli, body

TIMEOUT = 2.0


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 15.0) -> None:
    """Until ``check`` (an observation through a public interface) holds; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, f"not within {seconds} s"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def serving(witness: c2sp.ReferenceWitness, port: int = 0) -> AsyncIterator[TestServer]:
    server = TestServer(witness.app(), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def as_settings(witness: witnesses.WitnessProcess) -> WitnessSettings:
    return WitnessSettings(name=witness.name, url=witness.url, vkey=witness.vkey)


def configured(witness: c2sp.ReferenceWitness, port: int) -> WitnessSettings:
    return WitnessSettings(name=witness.name, url=f"http://127.0.0.1:{port}", vkey=witness.vkey)


async def log_vkey(api: Api) -> str:
    status, key = await api.get("/.well-known/alliance-broker/checkpoint-key")
    assert status == 200
    return str(key["vkey"])


async def health(api: Api) -> dict[str, Any]:
    status, answer = await api.get("/v1/health")
    assert status == 200
    return dict(answer)


async def sign_now(api: Api, auditor: str) -> int:
    status, checkpoint = await api.call("POST", "/v1/audit/checkpoints", auditor)
    assert status == 201, checkpoint
    return int(checkpoint["size"])


async def witnessed_at(api: Api, auditor: str, size: int, count: int) -> dict[str, Any]:
    """The latest checkpoint once it is at least ``size`` and carries ``count`` cosigners."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        status, checkpoint = await api.get("/v1/audit/checkpoints/latest", auditor)
        assert status == 200
        found.update(checkpoint)
        return checkpoint["size"] >= size and len(checkpoint["cosigners"]) >= count

    await eventually(check)
    return found


def names(settings: Settings) -> tuple[str, str]:
    tag = secrets.token_hex(3)  # metric series are per process: each test its own witnesses
    return f"witness.fra/{tag}", f"witness.deu/{tag}"


async def export(api: Api, auditor: str, path: Path) -> Path:
    status, text = await api.get("/v1/audit/export", auditor)
    assert status == 200
    path.write_text(text)
    return path


async def verify(cli: Cli, path: Path, key: str, witnesses: list[str], quorum: int) -> tuple[int, str]:
    """`broker audit verify`, offline: no configuration, database or keyring behind it."""
    args = ["audit", "verify", str(path), "--key", key, "--quorum", str(quorum)]
    for vkey in witnesses:
        args += ["--witness", vkey]
    result = await cli.use().run(*args)
    return result.returncode, result.stdout + result.stderr


async def test_two_witnesses_cosign_and_the_lines_verify_independently(
    start_server: StartServer, settings: Settings, ctx: Context, tmp_path: Path, cli: Cli
) -> None:
    """Two nations' witnesses, two implementations: ``broker witness serve`` and the reference."""
    key = ledger.public_key(ctx)["vkey"]
    fra_name, deu_name = names(settings)
    fra_vkey = await asyncio.to_thread(witnesses.init, tmp_path / "fra", fra_name)
    deu = c2sp.ReferenceWitness(deu_name, log_vkey=key)
    async with witnesses.serve(tmp_path / "fra", fra_name, fra_vkey, key) as fra, serving(deu) as w2:
        pair = (as_settings(fra), configured(deu, w2.port or 0))
        api = await start_server(witnesses=pair, witness_quorum=2, witness_timeout_seconds=TIMEOUT)
        assert await log_vkey(api) == key
        publisher = await api.node("usa-pub", "USA")
        auditor = await api.node("usa-aud", "USA", roles=("audit",))
        for _ in range(3):
            assert (await api.publish(publisher, body()))[0] == 201
        size = await sign_now(api, auditor)
        latest = await witnessed_at(api, auditor, size, 2)
        note = latest["note"]
        assert c2sp.log_signed(note, key)
        assert c2sp.cosigned_by(note, fra.vkey) is not None
        assert c2sp.cosigned_by(note, deu.vkey) is not None
        assert {c["name"] for c in latest["cosigners"]} == {fra.name, deu.name}
        assert (await health(api))["witnessed"] is True
        # The SDK's check says the same, and names what is missing when it does not hold.
        async with BrokerClient(api.base_url, auditor) as client:
            held = await client.witnessed_checkpoint(
                log_key=key, witnesses=[fra.vkey, deu.vkey], quorum_size=2
            )
        verdict = verify_witnessed(held["note"], log_key=key, witnesses=[fra.vkey, deu.vkey], quorum_size=2)
        assert set(verdict.cosigners) == {fra.name, deu.name}
        stranger_vkey = c2sp.ReferenceWitness("witness.swe/x", log_vkey=key).vkey
        with pytest.raises(WitnessError) as short:
            verify_witnessed(note, log_key=key, witnesses=[fra.vkey, stranger_vkey], quorum_size=2)
        assert short.value.verdict is not None and short.value.verdict.missing == ("witness.swe/x",)
        exported = await export(api, auditor, tmp_path / "export.ndjson")
    final = json.loads(exported.read_text().splitlines()[-1])["checkpoint"]
    assert c2sp.cosigned_by(final["note"], fra.vkey) and c2sp.cosigned_by(final["note"], deu.vkey)
    code, out = await verify(cli, exported, key, [fra.vkey, deu.vkey], 2)
    assert code == 0, out
    assert "cosigned by 2 of 2" in out
    stranger = c2sp.ReferenceWitness("witness.swe/x", log_vkey=key)
    code, out = await verify(cli, exported, key, [fra.vkey, stranger.vkey], 2)
    assert code == 1 and "missing: witness.swe/x" in out, out


async def _backup(settings: Settings, api: Api) -> Callable[[], Awaitable[None]]:
    """Back the database up now (the broker stopped); return what restores it."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        live, saved = Path(str(url.database)), Path(str(url.database) + ".backup")
        with sqlite3.connect(live) as src, sqlite3.connect(saved) as dst:
            src.backup(dst)

        async def restore_sqlite() -> None:
            with sqlite3.connect(saved) as src, sqlite3.connect(live) as dst:
                src.backup(dst)

        return restore_sqlite
    server = make_url(PG_DEFAULT).render_as_string(hide_password=False)
    name, copy = str(url.database), f"{url.database}_backup"
    await api.ctx.db.dispose()
    await _pg_exec(server, f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')

    async def restore_postgres() -> None:
        await api.ctx.db.dispose()
        await _pg_exec(
            server,
            f'DROP DATABASE "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}" TEMPLATE "{copy}"',
            f'DROP DATABASE "{copy}"',
        )

    return restore_postgres


def refusals(text: str, witness: str) -> float:
    pattern = rf'^broker_witness_refusals_total\{{status="\d+",witness="{re.escape(witness)}"\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


async def test_the_fork_is_caught(
    start_server: StartServer, settings: Settings, ctx: Context, tmp_path: Path, cli: Cli
) -> None:
    key = ledger.public_key(ctx)["vkey"]
    pair = names(settings)
    vkeys = [await asyncio.to_thread(witnesses.init, tmp_path / n.split("/")[0], n) for n in pair]
    async with (
        witnesses.serve(tmp_path / pair[0].split("/")[0], pair[0], vkeys[0], key) as fra,
        witnesses.serve(tmp_path / pair[1].split("/")[0], pair[1], vkeys[1], key) as deu,
    ):

        async def start() -> Api:
            both = (as_settings(fra), as_settings(deu))
            return await start_server(witnesses=both, witness_quorum=2, witness_timeout_seconds=TIMEOUT)

        api = await start()
        publisher = await api.node("usa-pub", "USA")
        auditor = await api.node("usa-aud", "USA", roles=("audit",))
        await witnessed_at(api, auditor, await sign_now(api, auditor), 2)
        await api.client.close()
        restore = await _backup(settings, api)

        api = await start()
        for i in range(50):
            assert (await api.publish(publisher, body(payload={"type": "note", "original": i})))[0] == 201
        await witnessed_at(api, auditor, await sign_now(api, auditor), 2)
        original = await export(api, auditor, tmp_path / "original.ndjson")
        await api.client.close()

        await restore()  # same keyring: the broker signs the fork with the key auditors pinned
        api = await start()
        for i in range(10):
            assert (await api.publish(publisher, body(payload={"type": "note", "forked": i})))[0] == 201
        await sign_now(api, auditor)

        async def both_refuse() -> bool:
            return set((await health(api)).get("refused_by", [])) == {fra.name, deu.name}

        await eventually(both_refuse)
        assert (await health(api))["witnessed"] is False
        _, metrics_text = await api.get("/metrics", auditor)
        assert refusals(metrics_text, fra.name) >= 1 and refusals(metrics_text, deu.name) >= 1
        status, events = await api.get("/v1/audit/events?action=witness&decision=deny", auditor)
        assert status == 200
        # Each witness remembers the original, larger log: a 409 naming a size this log never had.
        assert {e["reason"] for e in events["events"]} == {"witness_remembers_another_log"}
        assert {e["details"]["witness"] for e in events["events"]} == {fra.name, deu.name}
        forked = await export(api, auditor, tmp_path / "forked.ndjson")

    code, out = await verify(cli, forked, key, [fra.vkey, deu.vkey], 1)
    assert code == 1 and f"missing: {fra.name}, {deu.name}" in out, out
    code, out = await verify(cli, original, key, [fra.vkey, deu.vkey], 2)
    assert code == 0, out


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_stalled_witness_blocks_no_publish_and_the_quorum_catches_up(
    start_server: StartServer, settings: Settings, ctx: Context, tmp_path: Path
) -> None:
    key = ledger.public_key(ctx)["vkey"]
    fra_name, deu_name = names(settings)
    fra_vkey = await asyncio.to_thread(witnesses.init, tmp_path / "fra", fra_name)
    deu_vkey = await asyncio.to_thread(witnesses.init, tmp_path / "deu", deu_name)
    async with witnesses.serve(tmp_path / "fra", fra_name, fra_vkey, key) as fra:
        async with witnesses.never_answering() as (port, accepted):
            deu_settings = WitnessSettings(name=deu_name, url=f"http://127.0.0.1:{port}", vkey=deu_vkey)
            both = (as_settings(fra), deu_settings)
            api = await start_server(witnesses=both, witness_quorum=2, witness_timeout_seconds=0.5)
            publisher = await api.node("usa-pub", "USA")
            auditor = await api.node("usa-aud", "USA", roles=("audit",))
            size = await sign_now(api, auditor)
            await eventually(lambda: _true_when(bool(accepted)))  # the broker is stuck on the stalled one
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(20):
                assert (await api.publish(publisher, body()))[0] == 201
            assert loop.time() - started < 5.0  # nothing waits for the witness's deadline
            latest = await witnessed_at(api, auditor, size, 1)
            assert [c["name"] for c in latest["cosigners"]] == [fra_name]
            state = await health(api)
            assert state["witnessed"] is False and state["cosigners"] == 1 and state["refused_by"] == []
        async with witnesses.serve(tmp_path / "deu", deu_name, deu_vkey, key, port=port):
            latest = await witnessed_at(api, auditor, size, 2)

            async def witnessed() -> bool:
                return bool((await health(api))["witnessed"])

            await eventually(witnessed)
    assert c2sp.cosigned_by(latest["note"], deu_vkey) is not None


async def _true_when(value: bool) -> bool:
    return value


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_over_mutual_tls_only_the_broker_with_its_client_certificate_gets_cosignatures(
    start_server: StartServer, settings: Settings, ctx: Context, tmp_path: Path
) -> None:
    ca = pki.create_ca(name="witness test CA")
    certs = tmp_path / "pki"
    pki.save_ca(certs, ca)
    pki.save_issued(
        certs, "server", pki.issue_server_certificate(["127.0.0.1"], ca=ca), chain=[ca.certificate]
    )
    pki.save_issued(certs, "broker", pki.issue_node_certificate("broker", ca=ca))
    tls = ("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
           "--tls-client-ca", str(certs / "ca.pem"), "--tls-client-auth", "required")  # fmt: skip
    key = ledger.public_key(ctx)["vkey"]
    name = names(settings)[0]
    vkey = await asyncio.to_thread(witnesses.init, tmp_path / "fra", name)
    async with witnesses.serve(tmp_path / "fra", name, vkey, key, tls=tls) as fra:
        assert fra.url.startswith("https://")
        mutual = WitnessSettings(
            name=name, url=fra.url, vkey=vkey, ca=certs / "ca.pem",
            cert=certs / "broker.pem", key=certs / "broker.key",
        )  # fmt: skip
        api = await start_server(witnesses=(mutual,), witness_quorum=1, witness_timeout_seconds=TIMEOUT)
        auditor = await api.node("usa-aud", "USA", roles=("audit",))
        latest = await witnessed_at(api, auditor, await sign_now(api, auditor), 1)
        assert c2sp.cosigned_by(latest["note"], vkey) is not None
        await api.client.close()

        # Without its client certificate the handshake fails: no cosignature, counted, no refusal.
        anonymous = WitnessSettings(name=name, url=fra.url, vkey=vkey, ca=certs / "ca.pem")
        api = await start_server(witnesses=(anonymous,), witness_quorum=1, witness_timeout_seconds=0.5)
        await api.node("usa-pub", "USA")  # a new event: a new checkpoint to submit
        size = await sign_now(api, auditor)

        async def counted() -> bool:
            _, text = await api.get("/metrics", auditor)
            pattern = rf'^broker_witness_unreachable_total\{{witness="{re.escape(name)}"\}} (\S+)$'
            return any(float(v) >= 1 for v in re.findall(pattern, text, re.MULTILINE))

        await eventually(counted)
        _, latest = await api.get("/v1/audit/checkpoints/latest", auditor)
        assert latest["size"] >= size and latest["cosigners"] == []
        assert (await health(api))["refused_by"] == []
