"""Crypto-shredding against backups, on both engines: after `broker report erase` (or retention)
a copy of the database taken before the erasure, opened with the CURRENT keyring, no longer
decrypts the erased report (its KEK is destroyed; the other reports it wrapped were re-wrapped
under a replacement and still read through the broker), while a keyring backup taken before the
erasure still does (what docs/security.md says). The TAXII status resources naming an erased
report go with it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from broker.crypto import envelope
from broker.crypto import keyring as keyring_file
from broker.domain.canonical import canonical
from broker.services import admin, reports, retention, shred
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import statements as st
from tests.conftest import FakeClock
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import Cli, body, chain_holds, events, eventually
from tests.integration.test_taxii import collection_id, indicator, raw

TAXII = "application/taxii+json;version=2.1"


@dataclass(frozen=True)
class BackedUp:
    """A report's row as a database backup holds it."""

    id: str
    label_json: str
    ciphertext: bytes
    wrapped_key: bytes
    kek_id: str


def _sqlite_file(url: str) -> Path:
    return Path(url.split("///", 1)[1])


def _backup(ctx: Context, settings: Settings, into: Path) -> Path | None:
    """A copy of a SQLite database taken with SQLite's online backup (what `sqlite3 .backup`
    does; a plain file copy from this process would drop the broker's POSIX locks on the file);
    None on PostgreSQL, whose rows are dumped with SQL instead (``_dump``)."""
    if not settings.database_url.startswith("sqlite"):
        return None
    into.mkdir()
    copy = into / "copy.db"
    source = sqlite3.connect(_sqlite_file(settings.database_url))
    with closing(source), closing(sqlite3.connect(copy)) as target:
        source.backup(target)
    return copy


def _rows_in_copy(copy: Path) -> dict[str, BackedUp]:
    with closing(sqlite3.connect(copy)) as db:
        found = db.execute("SELECT id, label_json, ciphertext, wrapped_key, kek_id FROM reports").fetchall()
    return {r[0]: BackedUp(*r) for r in found if r[2] is not None}


async def _dump(ctx: Context) -> dict[str, BackedUp]:
    r = st.REPORTS.c
    query = select(r.id, r.label_json, r.ciphertext, r.wrapped_key, r.kek_id).where(r.ciphertext.is_not(None))
    async with ctx.db.read_transaction() as tx:
        found = await tx.run(lambda c: c.execute(query).all())
    return {row[0]: BackedUp(*row) for row in found}


async def _backed_up(ctx: Context, settings: Settings, into: Path) -> dict[str, BackedUp] | Path:
    copy = _backup(ctx, settings, into)
    return await _dump(ctx) if copy is None else copy


def _restored(backup: dict[str, BackedUp] | Path) -> dict[str, BackedUp]:
    return backup if isinstance(backup, dict) else _rows_in_copy(backup)


def _decrypt(row: BackedUp, ring: keyring_file.Keyring) -> Any:
    stored = envelope.StoredPayload(row.ciphertext, row.wrapped_key, row.kek_id)
    label = canonical(json.loads(row.label_json))
    plain = envelope.decrypt_payload(stored=stored, report_id=row.id, canonical_label=label, keyring=ring)
    return json.loads(plain)


async def _publish(api: Api, token: str, n: int, classification: str = "SECRET") -> str:
    status, receipt = await api.publish(
        token, body(classification=classification, payload={"type": "indicator", "n": n})
    )
    assert status == 201, receipt
    return str(receipt["id"])


async def test_an_erased_report_cannot_be_decrypted_from_a_backup_with_the_current_keyring(
    api: Api, settings: Settings, tmp_path: Path, cli: Cli
) -> None:
    usa = await api.node("usa-1", "USA")
    erased, kept, other = [await _publish(api, usa, n) for n in range(3)]
    old_keyring = keyring_file.load(settings.keyring_path)  # a keyring backup from before
    backup = await _backed_up(api.ctx, settings, tmp_path / "backup")
    assert _decrypt(_restored(backup)[erased], old_keyring) == {"type": "indicator", "n": 0}

    await asyncio.to_thread(
        cli.use(settings.database_url, settings.keyring_path).ok, "report", "erase", erased
    )

    current = keyring_file.load(settings.keyring_path)
    rows = _restored(backup)
    with pytest.raises(envelope.EnvelopeError):
        _decrypt(rows[erased], current)  # was "RECOVERED after crypto-shredding"
    # The erased report's KEK is gone from the keyring file, and nothing in the database uses it.
    assert rows[erased].kek_id not in current.keks and not current.retiring
    # The reports it shared a KEK with were re-wrapped, and still read through the broker.
    for n, report_id in ((1, kept), (2, other)):
        status, doc = await api.get(f"/v1/reports/{report_id}", usa)
        assert status == 200 and doc["payload"] == {"type": "indicator", "n": n}
    assert (await api.get(f"/v1/reports/{erased}", usa))[0] == 404
    # What the documentation says of a keyring backup taken before the erasure: it still opens it.
    assert _decrypt(rows[erased], old_keyring) == {"type": "indicator", "n": 0}
    # The next start still accepts the keyring: every KEK that wraps a report is there.
    await api.ctx.check_keyring()
    await chain_holds(api.ctx)


async def test_retention_shreds_against_backups_too(
    start_server: StartServer, settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    policy = replace(settings.policy, retention=(("RESTRICTED", timedelta(days=30)),))
    api = await start_server(policy=policy)
    ctx = api.server_ctx
    usa = await api.node("usa-1", "USA")
    expired = await _publish(api, usa, 0, "RESTRICTED")
    kept = await _publish(api, usa, 1, "SECRET")
    clock.advance(days=31)
    backup = await _backed_up(api.ctx, settings, tmp_path / "backup")
    assert await retention.expire(ctx) == 1
    current = keyring_file.load(settings.keyring_path)
    with pytest.raises(envelope.EnvelopeError):
        _decrypt(_restored(backup)[expired], current)
    status, doc = await api.get(f"/v1/reports/{kept}", usa)
    assert status == 200 and doc["payload"] == {"type": "indicator", "n": 1}
    assert [e["report"] for e in await events(api.ctx, action="erase")] == [expired]


async def _status_rows(ctx: Context, report_id: str) -> int:
    query = text("SELECT count(*) FROM taxii_statuses WHERE report_id = :r")
    async with ctx.db.read_transaction() as tx:
        return int(await tx.run(lambda c: c.execute(query, {"r": report_id}).scalar_one()))


async def _index_rows(ctx: Context, report_id: str) -> int:
    query = text(
        "SELECT count(*) FROM taxii_objects JOIN reports ON reports.seq = taxii_objects.report_seq"
        " WHERE reports.id = :r"
    )
    async with ctx.db.read_transaction() as tx:
        return int(await tx.run(lambda c: c.execute(query, {"r": report_id}).scalar_one()))


async def test_erasing_a_report_deletes_the_taxii_statuses_naming_it(
    api: Api, settings: Settings, cli: Cli
) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    path = f"/taxii2/api/collections/{cid}/objects/"
    posted = []
    for n in range(2):
        data = json.dumps({"objects": [indicator(n)]}).encode()
        headers = {"Content-Type": TAXII}
        code, _, status = await raw(api, "POST", path, token=usa, headers=headers, data=data)
        assert code == 202, status
        posted.append(status["id"])
    listing = (await api.get("/v1/reports", usa))[1]["reports"]
    by_object = {r["payload"]["objects"][0]["name"]: r["id"] for r in listing}
    erased, kept = by_object["indicator 0"], by_object["indicator 1"]
    assert await _status_rows(api.ctx, erased) == 1
    assert await _index_rows(api.ctx, erased) == 1

    await asyncio.to_thread(
        cli.use(settings.database_url, settings.keyring_path).ok, "report", "erase", erased
    )

    assert await _status_rows(api.ctx, erased) == 0
    assert await _status_rows(api.ctx, kept) == 1
    # and the object index's keyed digests of what it carried (they link it to other reports)
    assert (await _index_rows(api.ctx, erased), await _index_rows(api.ctx, kept)) == (0, 1)
    assert (await raw(api, "GET", f"/taxii2/api/status/{posted[0]}/", token=usa))[0] == 404
    assert (await raw(api, "GET", f"/taxii2/api/status/{posted[1]}/", token=usa))[0] == 200


def _file_holds(path: Path, needle: bytes) -> bool:
    """Whether the file at ``path`` holds ``needle``, read by another process: opening and closing
    the database file here would drop this process's SQLite locks on it (POSIX locks are per
    process)."""
    script = "import sys; print(bytes.fromhex(sys.argv[2]) in open(sys.argv[1], 'rb').read())"
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), needle.hex()], capture_output=True, text=True, check=True
    )
    return done.stdout.strip() == "True"


# SQLite only: PostgreSQL keeps dead rows until VACUUM (docs/security.md); what holds there is
# the destroyed KEK, which the backup tests above check on both engines.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_overwrites_what_an_erasure_frees(api: Api, settings: Settings) -> None:
    usa = await api.node("usa-1", "USA")
    report_id = await _publish(api, usa, 0)
    stored = (await _dump(api.ctx))[report_id]
    await reports.erase(api.ctx, report_id, actor="test")
    database = _sqlite_file(settings.database_url)
    with closing(sqlite3.connect(database)) as connection:  # the WAL into the file, then emptied
        busy, _frames, _done = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    for material in (stored.ciphertext, stored.wrapped_key):
        assert not _file_holds(database, material)


async def _keks(ctx: Context) -> dict[str, str | None]:
    r = st.REPORTS.c
    async with ctx.db.read_transaction() as tx:
        rows = await tx.run(lambda c: c.execute(select(r.id, r.kek_id)).all())
    return {row[0]: row[1] for row in rows}


async def test_a_kek_per_period_bounds_what_an_erasure_re_wraps(api: Api, clock: FakeClock) -> None:
    usa = await api.node("usa-1", "USA")
    earlier = [await _publish(api, usa, n) for n in range(2)]
    first = await shred.rotate_if_due(api.ctx, period=timedelta(0))  # another process starts a period
    assert first is not None
    period = [await _publish(api, usa, n) for n in range(2, 5)]
    clock.advance(hours=23)
    assert await shred.rotate_if_due(api.ctx, period=timedelta(days=1)) is None
    clock.advance(hours=2)
    second = await shred.rotate_if_due(api.ctx, period=timedelta(days=1))
    assert second is not None and second != first
    later = await _publish(api, usa, 5)
    before = await _keks(api.ctx)
    assert {before[i] for i in period} == {first} and before[later] == second
    assert first not in {before[i] for i in earlier}

    await reports.erase(api.ctx, period[0], actor="test")

    after = await _keks(api.ctx)
    assert after[period[0]] is None
    replacement = after[period[1]]
    assert replacement not in (None, first, second) and after[period[2]] == replacement
    assert all(after[i] == before[i] for i in (*earlier, later))  # other periods untouched
    ring = keyring_file.load(api.ctx.keyring_path)
    assert first not in ring.keks and ring.current == second and replacement in ring.keks
    for n, report_id in enumerate([*earlier, *period, later]):
        status, doc = await api.get(f"/v1/reports/{report_id}", usa)
        assert (status, doc.get("payload")) == (
            (404, None) if n == 2 else (200, {"type": "indicator", "n": n})
        )
    rotations = [e for e in await events(api.ctx) if e["action"] in ("keys_rotate", "keys_destroy")]
    assert [e["action"] for e in rotations] == ["keys_rotate", "keys_rotate", "keys_destroy"]


async def test_erasures_publishes_and_a_rewrap_at_once_lose_no_report(api: Api, settings: Settings) -> None:
    usa = await api.node("usa-1", "USA")
    stored = [await _publish(api, usa, n) for n in range(8)]
    erased = stored[::2]
    other = api.server_ctx  # another process's view of the same database

    async def erase(ctx: Context, report_id: str) -> None:
        await reports.erase(ctx, report_id, actor="test")

    async def publish(n: int) -> str:
        return await _publish(api, usa, n)

    outcome = await asyncio.gather(
        erase(api.ctx, erased[0]),
        erase(other, erased[1]),
        admin.rotate_keys(api.ctx, rewrap=True, batch=2),
        publish(8),
        erase(other, erased[2]),
        publish(9),
        erase(api.ctx, erased[3]),
    )
    published = [*stored, outcome[3], outcome[5]]
    for n, report_id in enumerate(published):
        status, doc = await api.get(f"/v1/reports/{report_id}", usa)
        expected = (404, None) if report_id in erased else (200, {"type": "indicator", "n": n})
        assert (status, doc.get("payload")) == expected, n
    ring = keyring_file.load(settings.keyring_path)
    assert not ring.retiring and set((await _keks(api.ctx)).values()) - {None} <= set(ring.keks)
    await api.ctx.check_keyring()
    await chain_holds(api.ctx)


async def test_each_broker_starts_a_new_kek_period_on_its_own(start_server: StartServer) -> None:
    api = await start_server(kek_period_seconds=1.0)  # the task looks once a second
    usa = await api.node("usa-1", "USA")
    first = await _publish(api, usa, 0)

    async def rotated() -> bool:  # in the audit log, as the other brokers would see it
        return bool(await events(api.ctx, action="keys_rotate"))

    await eventually(rotated, seconds=20)
    [rotated] = await events(api.ctx, action="keys_rotate")
    assert (rotated["actor"], rotated["reason"]) == ("broker", "period")
    second = await _publish(api, usa, 1)
    keks = await _keks(api.ctx)
    assert keks[first] != keks[second] == keyring_file.load(api.ctx.keyring_path).current
