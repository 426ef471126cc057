"""Retention on both engines: expired reports are crypto-shredded with one audit event each,
the others are kept, the counter moves, a second pass does nothing, two brokers never erase one
report twice, the background task does it on its own, and the audit export still verifies after
retention and `broker report erase` alike."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from broker.domain.labels import Policy
from broker.errors import ConfigError
from broker.services import reports, retention
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import retention as store
from tests.conftest import CONFIG, FakeClock
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import Cli, body, chain_holds, events, eventually

DAY = timedelta(days=1)


def _policy(settings: Settings) -> Policy:
    return replace(settings.policy, retention=(("RESTRICTED", 30 * DAY), ("SECRET", 365 * DAY)))


async def _publish(api: Api, token: str, classification: str) -> str:
    status, receipt = await api.publish(token, body(classification=classification))
    assert status == 201, receipt
    return str(receipt["id"])


async def _stored(ctx: Context, report_id: str) -> tuple[bool, bool]:
    """(erased_at set, ciphertext or wrapped key still present) of a stored report."""
    async with ctx.db.transaction() as tx:
        report = await tx.report(report_id)
    assert report is not None  # the metadata row stays
    material = report.ciphertext is not None or report.wrapped_key is not None or report.kek_id is not None
    return report.erased_at is not None, material


async def _last_pass(api: Api, auditor: str) -> float:
    """When the retention task last completed a pass, as /metrics shows it."""
    status, text = await api.get("/metrics", auditor)
    assert status == 200
    found = re.search(r"^broker_retention_last_run_timestamp_seconds (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


async def _erased_total(api: Api, auditor: str, cause: str) -> float:
    status, text = await api.get("/metrics", auditor)
    assert status == 200
    found = re.search(rf'^broker_reports_erased_total{{cause="{cause}"}} (\S+)$', text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


async def test_expired_reports_are_shredded_once_audited_counted_and_the_log_verifies(
    start_server: StartServer, settings: Settings, clock: FakeClock, tmp_path: Path, cli: Cli
) -> None:
    api = await start_server(policy=_policy(settings))  # the task's own interval (60 s) never comes
    ctx = api.server_ctx
    usa = await api.node("usa-1", "USA")
    auditor = await api.node("aud", "BEL", roles=("audit",))
    old_restricted = await _publish(api, usa, "RESTRICTED")
    old_secret = await _publish(api, usa, "SECRET")
    forever = await _publish(api, usa, "UNCLASSIFIED")
    manual = await _publish(api, usa, "UNCLASSIFIED")
    clock.advance(days=350)
    young_restricted = await _publish(api, usa, "RESTRICTED")
    young_secret = await _publish(api, usa, "SECRET")
    clock.advance(days=20)  # old: 370 days (past 30 and 365); young: 20 days
    before = await _erased_total(api, auditor, "retention")

    progress = retention.Progress()
    assert await retention.expire(ctx, progress=progress) == 2
    for rid in (old_restricted, old_secret):
        assert await _stored(api.ctx, rid) == (True, False)  # shredded: no ciphertext, no key
        assert (await api.get(f"/v1/reports/{rid}", usa))[0] == 404
    for rid in (forever, manual, young_restricted, young_secret):
        assert await _stored(api.ctx, rid) == (False, True)
        assert (await api.get(f"/v1/reports/{rid}", usa))[0] == 200
    _, page = await api.get("/v1/reports?after=0", usa)
    assert {r["id"] for r in page["reports"]} == {forever, manual, young_restricted, young_secret}

    erasures = await events(api.ctx, action="erase")
    assert sorted(e["report"] for e in erasures) == sorted([old_restricted, old_secret])
    assert {(e["actor"], e["decision"], e["reason"]) for e in erasures} == {
        ("retention", "allow", "retention_expired")
    }
    denied = await events(api.ctx, report=old_secret, action="read")
    assert denied[-1]["reason"] == "erased"  # the same answer as after `broker report erase`
    assert await _erased_total(api, auditor, "retention") == before + 2

    # A second pass, with the walk's progress and from scratch, finds nothing more to do.
    assert await retention.expire(ctx, progress=progress) == 0
    assert await retention.expire(ctx) == 0
    assert len(await events(api.ctx, action="erase")) == 2
    assert await _erased_total(api, auditor, "retention") == before + 2

    # Time moves on: the young RESTRICTED report's turn (the SECRET one has 345 days left).
    clock.advance(days=15)
    assert await retention.expire(ctx, progress=progress) == 1
    assert await _stored(api.ctx, young_restricted) == (True, False)
    assert await _stored(api.ctx, young_secret) == (False, True)

    # Manual erasure next to retention: counted under its own cause, by the broker and the CLI.
    manual_before = await _erased_total(api, auditor, "manual")
    await reports.erase(ctx, manual, actor="test")
    assert await _erased_total(api, auditor, "manual") == manual_before + 1
    cli.use(settings.database_url, settings.keyring_path)
    await asyncio.to_thread(cli.ok, "report", "erase", forever, "--json")
    assert await _stored(api.ctx, forever) == (True, False)
    by_report = {e["report"]: (e["actor"], e["reason"]) for e in await events(api.ctx, action="erase")}
    assert by_report == {
        old_restricted: ("retention", "retention_expired"),
        old_secret: ("retention", "retention_expired"),
        young_restricted: ("retention", "retention_expired"),
        manual: ("test", "erased"),
        forever: ("cli", "erased"),
    }
    assert await retention.expire(ctx) == 0  # an erased UNCLASSIFIED report stays as it is

    # The trail is whole: the chain and tree in the database, and an export checked offline.
    await chain_holds(api.ctx)
    export = tmp_path / "audit.ndjson"
    await asyncio.to_thread(cli.ok, "audit", "export", str(export), "--json")
    verified = await cli.run("audit", "verify", str(export))
    assert (verified.returncode, verified.stderr) == (0, ""), verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK intact")


async def test_the_background_task_erases_within_its_interval(
    start_server: StartServer, settings: Settings, clock: FakeClock
) -> None:
    api = await start_server(policy=_policy(settings), retention_interval_seconds=1.0)
    usa, auditor = await api.node("usa-1", "USA"), await api.node("aud", "BEL", roles=("audit",))
    expired = await _publish(api, usa, "RESTRICTED")
    clock.advance(days=31)
    kept = await _publish(api, usa, "RESTRICTED")

    async def erased() -> bool:
        return bool(await events(api.ctx, action="erase"))

    await eventually(erased, seconds=20)
    # At least one more whole pass: the one that erased may still be finishing, so two more ends.
    passes = [await _last_pass(api, auditor)]

    async def another_pass() -> bool:
        if (now := await _last_pass(api, auditor)) != passes[-1]:
            passes.append(now)
        return len(passes) == 3

    await eventually(another_pass, seconds=20)  # and still exactly one erasure:
    assert [(e["report"], e["reason"]) for e in await events(api.ctx, action="erase")] == [
        (expired, "retention_expired")
    ]
    assert await _stored(api.ctx, expired) == (True, False)
    assert await _stored(api.ctx, kept) == (False, True)


async def test_two_brokers_never_erase_a_report_twice(api: Api, settings: Settings, clock: FakeClock) -> None:
    usa = await api.node("usa-1", "USA")
    expired = [await _publish(api, usa, level) for level in ["RESTRICTED", "SECRET"] * 12]
    clock.advance(days=400)
    kept = await _publish(api, usa, "RESTRICTED")
    # Two broker processes' views of the database, walking in small slices at the same time.
    both = replace(settings, policy=_policy(settings), retention_batch_size=5)
    first, second = Context.open(both, clock=clock), Context.open(both, clock=clock)
    try:
        counts = await asyncio.gather(retention.expire(first), retention.expire(second))
    finally:
        await first.close()
        await second.close()
    assert sum(counts) == len(expired)
    erasures = await events(api.ctx, action="erase")
    assert sorted(e["report"] for e in erasures) == sorted(expired)  # each exactly once
    assert await _stored(api.ctx, kept) == (False, True)
    await chain_holds(api.ctx)


async def test_lock_for_erasure_leaves_out_what_is_already_erased(api: Api, clock: FakeClock) -> None:
    usa = await api.node("usa-1", "USA")
    first, second = await _publish(api, usa, "SECRET"), await _publish(api, usa, "SECRET")
    await reports.erase(api.ctx, first, actor="test")
    async with api.ctx.db.transaction() as tx:
        rows = await store.scan(tx, after=0, limit=10)
        assert [(r.id, r.classification, r.erased) for r in rows] == [
            (first, "SECRET", True),
            (second, "SECRET", False),
        ]
        locked = await store.lock_for_erasure(tx, [r.seq for r in rows], set())
    assert [(age.id, kek is not None) for age, kek in locked] == [(second, True)]


def test_bad_retention_stops_the_broker_with_file_key_and_problem(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    for name in ("broker.toml", "alliances.toml"):
        (folder / name).write_text((CONFIG / name).read_text())
    (folder / "policy.toml").write_text((CONFIG / "policy.toml").read_text() + "\n[retention]\nSECRET = 0\n")
    with pytest.raises(ConfigError) as info:
        Settings.load(env={"BROKER_CONFIG_DIR": str(folder)})
    assert info.value.file == str(folder / "policy.toml") and info.value.key == "retention.SECRET"
    monkeypatch.chdir(tmp_path)
    line = cli.use(CONFIG_DIR=str(folder)).refused("config", "check")
    assert "policy.toml" in line and "retention.SECRET" in line
