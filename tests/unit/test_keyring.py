"""The keyring file under concurrency: one keyring however many processes create it at once,
rewrites that are atomic and private."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from broker.crypto import keyring
from broker.errors import ConfigError
from tests.integration.helpers import fork_server

RACERS = 8


def _race(path: str, barrier: Barrier, results: multiprocessing.Queue[object]) -> None:
    barrier.wait()
    try:
        ring = keyring.load_or_create(Path(path))
        results.put((ring.current, {k: v.hex() for k, v in ring.keks.items()}, ring.checkpoint_key.hex()))
    except Exception as exc:  # reported to the test, which fails on it
        results.put(repr(exc))


def _run_racers(path: Path) -> list[object]:
    """``RACERS`` processes of their own, forked from the fork server, which imported the keyring
    module once, each creating or upgrading the keyring at ``path`` once all have started."""
    mp = fork_server()
    barrier = mp.Barrier(RACERS)
    results: multiprocessing.Queue[object] = mp.Queue()
    procs = [mp.Process(target=_race, args=(str(path), barrier, results)) for _ in range(RACERS)]
    for proc in procs:
        proc.start()
    found = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    return found


def test_processes_creating_the_keyring_together_all_get_the_same_one(tmp_path: Path) -> None:
    for attempt in range(3):
        path = tmp_path / f"round{attempt}" / "keyring.json"
        found = _run_racers(path)
        assert all(isinstance(r, tuple) for r in found), found
        assert len(set(map(repr, found))) == 1, f"{len(set(map(repr, found)))} different keyrings"
        on_disk = keyring.load(path)
        assert found[0] == (
            on_disk.current,
            {k: v.hex() for k, v in on_disk.keks.items()},
            on_disk.checkpoint_key.hex(),
        )
        assert path.stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in path.parent.iterdir()) == ["keyring.json"]  # no temporary left


def test_legacy_keyring_upgraded_by_racing_processes_gets_one_checkpoint_key(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = keyring.load_or_create(path)
    legacy = json.loads(path.read_text())
    del legacy["checkpoint_key"]
    path.write_text(json.dumps(legacy))
    found = _run_racers(path)
    assert all(isinstance(r, tuple) for r in found), found
    assert len(set(map(repr, found))) == 1
    assert keyring.load(path).keks == ring.keks
    assert keyring.load(path).checkpoint_key.hex() == found[0][2]  # type: ignore[index]


def test_rewrite_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    old = os.umask(0o022)
    try:
        ring = keyring.load_or_create(path)
        assert path.stat().st_mode & 0o777 == 0o600
        stop = threading.Event()
        seen: list[str] = []

        def _reader() -> None:
            while not stop.is_set():
                try:
                    keyring.load(path)
                except Exception as exc:  # a torn or missing file would land here
                    seen.append(repr(exc))

        reader = threading.Thread(target=_reader)
        reader.start()
        try:
            for _ in range(200):
                ring = ring.with_new_kek()
                keyring.save(path, ring)
        finally:
            stop.set()
            reader.join()
        assert seen == []
        assert keyring.load(path) == ring
        assert path.stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in tmp_path.iterdir()) == ["keyring.json"]
    finally:
        os.umask(old)


def test_update_rereads_the_file_so_no_kek_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    stale = keyring.load_or_create(path)
    first = keyring.update(path, keyring.Keyring.with_new_kek)
    second = keyring.update(path, keyring.Keyring.with_new_kek)  # not from ``stale``
    assert set(second.keks) == set(stale.keks) | set(first.keks) | {second.current}
    assert keyring.load(path) == second


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_keyring_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keyring.json"
    keyring.load_or_create(path)
    path.chmod(mode)
    with pytest.raises(Exception, match="chmod 600"):
        keyring.load_or_create(path)


def test_an_erasure_replaces_a_kek_and_only_an_unused_retiring_one_is_destroyed(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = keyring.load_or_create(path)
    old = ring.current
    replacement = keyring.new_kek_id()
    replaced = keyring.update(path, lambda r: r.replacing(old, replacement))
    assert replaced.current == replacement and replaced.retiring == {old} and old in replaced.keks
    # Written durably before the re-wrap, and read back as written.
    assert keyring.load(path) == replaced
    assert json.loads(path.read_text())["retiring"] == [old]
    assert keyring.update(path, lambda r: r.replacing(old, replacement)) == replaced  # idempotent
    destroyed = keyring.update(path, lambda r: r.without(r.retiring))
    assert set(destroyed.keks) == {replacement} and not destroyed.retiring
    assert destroyed.without(frozenset({replacement})) == destroyed  # never the current KEK
    with pytest.raises(KeyError):
        destroyed.replacing(old, keyring.new_kek_id())  # a destroyed KEK cannot come back


def test_a_keyring_whose_current_kek_is_retiring_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = keyring.load_or_create(path)
    raw = json.loads(path.read_text())
    raw["retiring"] = [ring.current]
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="retiring"):
        keyring.load(path)


def test_a_kek_name_carries_when_it_was_made() -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert keyring.created_at(keyring.new_kek_id(at)) == at
    assert keyring.created_at("kek-legacy") is None


def test_a_link_planted_at_the_lock_files_name_is_refused(tmp_path: Path) -> None:
    """``update`` opens ``.<name>.lock`` beside the keyring with O_CREAT: a symbolic link planted
    there (a writable folder) made it create or open the link's target, as the broker's user."""
    path = tmp_path / "keyring.json"
    keyring.load_or_create(path)
    target = tmp_path / "elsewhere"
    (tmp_path / ".keyring.json.lock").symlink_to(target)
    with pytest.raises(ConfigError) as info:
        keyring.update(path, lambda r: r.with_new_kek())
    assert "link" in str(info.value)
    assert not target.exists()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give a file to another user"
)
def test_a_keyring_another_user_owns_is_refused(tmp_path: Path) -> None:
    # Its owner may rewrite it (mode 600 is the owner's): swap the checkpoint key, or the KEK
    # new reports are sealed under. Refused unless the broker's own user or root owns it.
    path = tmp_path / "keyring.json"
    ring = keyring.load_or_create(path)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534, who may replace its keys"):
        keyring.load(path)
    os.chown(path, 0, 0)
    assert keyring.load(path) == ring
