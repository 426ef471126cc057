"""An erasure whose process dies after its commit and before ``shred.destroy_retiring``: the
report is erased in the database, but the KEK that wrapped its data key is still in the keyring
file (``retiring``). Until it is deleted, that keyring opens the erased report from any database
backup taken before the erasure. Erasing the report again, and every running broker, must finish
the job; neither did (the KEK survived until some other report happened to be erased)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from broker.crypto import envelope
from broker.crypto import keyring as keyring_file
from broker.services import journal, reports, shred
from broker.services.context import Context
from broker.settings import Settings
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import Cli, eventually
from tests.integration.test_shredding import _backed_up, _decrypt, _publish, _restored


class Killed(BaseException):
    """Stands for kill -9 at the moment the erasure's commit is done."""


async def _erase_killed_after_commit(ctx: Context, report_id: str) -> None:
    async def killed(*_args: Any, **_kwargs: Any) -> list[str]:
        raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shred, "destroy_retiring", killed)
        with pytest.raises(Killed):
            await reports.erase(ctx, report_id, actor="cli")


async def _destroyed(ctx: Context) -> list[tuple[str, Any]]:
    """The ``keys_destroy`` events: actor and details."""
    async with ctx.db.read_transaction() as tx:
        found = await tx.events(limit=1_000, action="keys_destroy")
    return [(e.draft.actor, e.draft.details) for e in found]


async def test_erasing_again_after_a_crash_destroys_the_kek_left_behind(
    api: Api, settings: Settings, cli: Cli, tmp_path: Any
) -> None:
    usa = await api.node("usa-1", "USA")
    erased = await _publish(api, usa, 0)
    kept = await _publish(api, usa, 1)
    backup = _restored(await _backed_up(api.ctx, settings, tmp_path / "backup"))
    doomed = backup[erased].kek_id

    await _erase_killed_after_commit(api.ctx, erased)
    left = keyring_file.load(settings.keyring_path)
    assert doomed in left.retiring  # the state the crash leaves: erased, its KEK still on file
    assert _decrypt(backup[erased], left) == {"type": "indicator", "n": 0}

    # The operator sees the command die and runs it again.
    again = cli.use(settings.database_url, settings.keyring_path)
    await asyncio.to_thread(again.ok, "report", "erase", erased)

    current = keyring_file.load(settings.keyring_path)
    assert doomed not in current.keks and not current.retiring
    with pytest.raises(envelope.EnvelopeError):
        _decrypt(backup[erased], current)
    assert await _destroyed(api.ctx) == [("cli", {"kek_ids": [doomed]})]
    status, doc = await api.get(f"/v1/reports/{kept}", usa)
    assert status == 200 and doc["payload"] == {"type": "indicator", "n": 1}


async def test_a_running_broker_destroys_a_kek_a_crashed_erasure_left_behind(
    start_server: StartServer, settings: Settings
) -> None:
    api = await start_server(kek_period_seconds=1.0)  # its KEK task looks once a second
    usa = await api.node("usa-1", "USA")
    erased = await _publish(api, usa, 0)
    doomed = keyring_file.load(settings.keyring_path).current

    await _erase_killed_after_commit(api.ctx, erased)  # `broker report erase`, killed
    assert doomed in keyring_file.load(settings.keyring_path).retiring

    async def destroyed() -> bool:  # the file changes first, then the event commits
        return bool(await _destroyed(api.ctx))

    await eventually(destroyed, seconds=20)
    assert await _destroyed(api.ctx) == [("broker", {"kek_ids": [doomed]})]
    assert doomed not in keyring_file.load(settings.keyring_path).keks


async def _destroy_killed_before_its_event(ctx: Context) -> None:
    """``destroy_retiring`` killed once the keyring file changed, before its event committed."""

    async def killed(*_args: Any, **_kwargs: Any) -> None:
        raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(journal, "record", killed)
        with pytest.raises(Killed):
            await shred.destroy_retiring(ctx, actor="cli")


async def test_a_kek_destroyed_by_a_process_killed_before_its_event_is_recorded_later(
    api: Api, settings: Settings
) -> None:
    """The KEK leaves the file first (an event before would claim a destruction a crash could
    stop); a crash before the event commits must not leave the destruction out of the log."""
    usa = await api.node("usa-1", "USA")
    erased = await _publish(api, usa, 0)
    doomed = keyring_file.load(settings.keyring_path).current
    await _erase_killed_after_commit(api.ctx, erased)
    await _destroy_killed_before_its_event(api.ctx)
    assert doomed not in keyring_file.load(settings.keyring_path).keks  # destroyed, not logged
    assert await _destroyed(api.ctx) == []

    await shred.destroy_left_behind(api.ctx, actor="broker")  # what every running broker does

    assert await _destroyed(api.ctx) == [("broker", {"kek_ids": [doomed]})]
    assert not keyring_file.load(settings.keyring_path).unrecorded
    await shred.destroy_left_behind(api.ctx, actor="broker")  # once: nothing left to record
    assert len(await _destroyed(api.ctx)) == 1


async def test_a_destruction_already_in_the_log_is_not_recorded_twice(api: Api, settings: Settings) -> None:
    """Killed after the event committed, before the file said so: found in the log, not logged
    again."""
    usa = await api.node("usa-1", "USA")
    erased = await _publish(api, usa, 0)
    doomed = keyring_file.load(settings.keyring_path).current
    await reports.erase(api.ctx, erased, actor="cli")
    assert await _destroyed(api.ctx) == [("cli", {"kek_ids": [doomed]})]
    keyring_file.update(settings.keyring_path, lambda r: replace(r, unrecorded=frozenset({doomed})))

    await shred.destroy_left_behind(api.ctx, actor="broker")

    assert await _destroyed(api.ctx) == [("cli", {"kek_ids": [doomed]})]
    assert not keyring_file.load(settings.keyring_path).unrecorded
