"""The witness as a process (``python -m broker witness ...``): init, TLS, refusing to start on
lost state, and kill -9 right after it receives a checkpoint, against a log that forks at random.

The TLS test starts the real binary; the others fork their processes from the fork server
(:class:`Forked`), which imported the broker once: a hundred kill -9 rounds start a hundred
witness processes."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import random
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.crypto import merkle, pki
from broker.witness import directory
from tests.integration import c2sp
from tests.integration.helpers import Forked, run_forked
from tests.integration.witness_log import EMPTY_ROOT, ROOT, Tree, read_until, start_witness, witness_env

NAME = "witness.example/w1"


def _cli(*words: str) -> subprocess.CompletedProcess[str]:
    """``broker witness WORDS`` in a process of its own: a refusal to serve that regressed into
    serving times out rather than hanging the test."""
    return run_forked("-m", "broker", "witness", *words, env=witness_env(), cwd=ROOT, timeout=30)


def _forked_witness(folder: Path, log: str) -> tuple[Forked, int]:
    """:func:`start_witness`, its process forked: the process and its port, once it listens."""
    proc = Forked(
        ["-m", "broker", "witness", "serve", "--dir", str(folder), "--port", "0", "--log", log],
        env=witness_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    marker = b"://127.0.0.1:"
    output = read_until(proc, b"serving on", seconds=20)  # type: ignore[arg-type]
    return proc, int(output.rsplit(marker, 1)[1].split(b"\n", 1)[0])


def _init(folder: Path, name: str = NAME) -> str:
    done = _cli("init", "--dir", str(folder), "--name", name, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["name"] == name
    return str(result["vkey"])


@contextlib.contextmanager
def _killed_at_exit(proc: subprocess.Popen[bytes] | Forked) -> Iterator[None]:
    try:
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_init_makes_0600_files_prints_the_vkey_and_never_overwrites(tmp_path: Path) -> None:
    vkey = _init(tmp_path / "w")
    name, kind, public = c2sp.parse_vkey(vkey)  # the independent reading accepts it
    assert (name, kind, len(public)) == (NAME, c2sp.COSIGNATURE_ED25519, 32)
    for entry in (tmp_path / "w").iterdir():
        assert entry.stat().st_mode & 0o777 == 0o600, entry
    again = _cli("init", "--dir", str(tmp_path / "w"), "--name", NAME)
    assert again.returncode == 2 and "already holds a witness" in again.stderr
    assert _cli("init", "--dir", str(tmp_path / "x"), "--name", "has space").returncode == 2


def _lose_database(folder: Path, spare: Path) -> None:
    (folder / "witness.db").unlink()


def _empty_database(folder: Path, spare: Path) -> None:
    (folder / "witness.db").write_bytes(b"")


def _another_witness_database(folder: Path, spare: Path) -> None:
    shutil.copyfile(spare / "witness.db", folder / "witness.db")


@pytest.mark.parametrize("lose", [_lose_database, _empty_database, _another_witness_database])
def test_serve_refuses_to_start_on_lost_state_and_says_how_to_retire(tmp_path: Path, lose: object) -> None:
    vkey = directory.init(tmp_path / "w", name=NAME).vkey
    directory.init(tmp_path / "spare", name="witness.example/spare")
    assert callable(lose)
    lose(tmp_path / "w", tmp_path / "spare")
    log = c2sp.Log("log.example/a")
    done = _cli("serve", "--dir", str(tmp_path / "w"), "--port", "0", "--log", log.vkey)
    assert done.returncode == 2
    assert "refusing to start" in done.stderr and "may already have cosigned" in done.stderr
    assert f"remove its vkey {vkey} from every log's witness list" in done.stderr
    assert "broker witness init --dir NEW_DIR" in done.stderr


def test_serve_needs_tls_off_loopback_and_a_log_vkey(tmp_path: Path) -> None:
    _init(tmp_path / "w")
    log = c2sp.Log("log.example/a")
    wild = _cli("serve", "--dir", str(tmp_path / "w"), "--host", "0.0.0.0", "--log", log.vkey)  # noqa: S104
    assert wild.returncode == 2 and "--tls-cert" in wild.stderr
    cosigner_key = _cli("serve", "--dir", str(tmp_path / "w"), "--log", c2sp.vkey("l", 0x04, log.public))
    assert cosigner_key.returncode == 2 and "type 0x01" in cosigner_key.stderr


def test_serves_over_mutual_tls(tmp_path: Path) -> None:
    ca = pki.create_ca()
    ca_pem, _ = pki.save_ca(tmp_path / "ca", ca)
    server = pki.issue_server_certificate(["127.0.0.1"], ca=ca)
    cert, key = pki.save_issued(tmp_path / "ca", "server", server, chain=[ca.certificate])
    client = pki.save_issued(tmp_path / "ca", "log", pki.issue_node_certificate("log", ca=ca))
    vkey = _init(tmp_path / "w")
    log = c2sp.Log("log.example/a")
    tls = ("--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(ca_pem))
    proc, port = start_witness(tmp_path / "w", log.vkey, extra=(*tls, "--tls-client-auth", "required"))
    with _killed_at_exit(proc):
        context = ssl.create_default_context(cafile=str(ca_pem))
        with pytest.raises((ssl.SSLError, ConnectionError)):  # no client certificate: no handshake
            _post(port, c2sp.add_checkpoint_body(0, [], log.checkpoint(0, EMPTY_ROOT)), context=context)
        context.load_cert_chain(str(client[0]), str(client[1]))
        status, answer = _post(
            port, c2sp.add_checkpoint_body(0, [], log.checkpoint(0, EMPTY_ROOT)), context=context
        )
        assert status == 200
        _, _, public = c2sp.parse_vkey(vkey)
        text = c2sp.checkpoint_text(log.origin, 0, EMPTY_ROOT)
        c2sp.verify_cosignature(answer.decode(), text=text, name=NAME, public=public)


def _connection(port: int, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    if context is not None:
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def _post(port: int, body: bytes, *, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    conn = _connection(port, context)
    try:
        conn.request("POST", "/add-checkpoint", body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class ForkingLog:
    """A log that, now and then, forks: a new branch sharing only a prefix with the current one,
    from at or below the size the witness holds (at: a legitimate extension; below: a fork)."""

    def __init__(self, rng: random.Random, *, size: int = 400) -> None:
        self.rng = rng
        self.size = size
        self.log = c2sp.Log("log.example/forking")
        self.branches = [self._forked(None, 0)]

    def _forked(self, parent: Tree | None, at: int) -> Tree:
        """A branch: ``parent``'s first ``at`` leaves, then leaves of its own."""
        prefix = parent.leaves[:at] if parent is not None else []
        return Tree(prefix + [os.urandom(16) for _ in range(self.size - at)])

    def request(self, held: tuple[int, bytes]) -> tuple[bytes, int, bytes]:
        """An add-checkpoint body from the witness's ``held`` (size, root): body, size, root.
        Mostly the history the witness holds, grown by 0 to 4; a quarter of the time a fork
        from at or below the held size (at: still consistent; below: a split view); now and
        then an old size other than the held one (a replay)."""
        old = held[0]
        honest = next(t for t in reversed(self.branches) if t.root(old) == held[1])
        tree = honest
        if self.rng.random() < 0.25:
            self.branches.append(self._forked(honest, self.rng.randint(max(0, old - 3), old)))
            tree = self.branches[-1]
        new = min(old + self.rng.randint(0, 4), self.size)
        sent_old = old if self.rng.random() < 0.9 else self.rng.randint(0, old)
        note = self.log.checkpoint(new, tree.root(new))
        return c2sp.add_checkpoint_body(sent_old, tree.proof(sent_old, new), note), new, tree.root(new)

    def tree_with(self, size: int, root: bytes) -> Tree:
        return next(t for t in self.branches if t.root(size) == root)


def _monitored(port: int, origin: str) -> str | None:
    conn = _connection(port)
    try:
        conn.request("GET", f"/{hashlib.sha256(origin.encode()).hexdigest()}/checkpoint")
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    return body if response.status == 200 else None


def _checked(note: str, *, public: bytes) -> tuple[int, bytes]:
    """The (size, root) a monitoring checkpoint states, once its cosignature verifies."""
    text, lines = c2sp.split_note(note)
    c2sp.verify_cosignature(lines[-1] + "\n", text=text, name=NAME, public=public)
    _, size, root = text.split("\n")[:3]
    return int(size), base64.b64decode(root, validate=True)


def test_kill_9_after_a_checkpoint_never_cosigns_two_inconsistent_checkpoints(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    log = ForkingLog(rng)
    _, _, public = c2sp.parse_vkey(_init(tmp_path / "w"))
    cosigned: set[tuple[int, bytes]] = set()
    statuses: dict[int, int] = {}
    for _ in range(100):
        proc, port = _forked_witness(tmp_path / "w", log.log.vkey)
        with _killed_at_exit(proc):
            note = _monitored(port, log.log.origin)
            held = _checked(note, public=public) if note is not None else (0, EMPTY_ROOT)
            cosigned.add(held)
            for last in [False] * rng.randint(0, 2) + [True]:
                body, size, root = log.request(held)
                conn = _connection(port)
                try:
                    conn.request("POST", "/add-checkpoint", body=body)
                    if last and rng.random() < 0.5:
                        proc.kill()  # right after the checkpoint was sent, before any answer
                        break
                    response = conn.getresponse()
                    answer = response.read()
                finally:
                    conn.close()
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    text = c2sp.checkpoint_text(log.log.origin, size, root)
                    c2sp.verify_cosignature(answer.decode(), text=text, name=NAME, public=public)
                    held = (size, root)
                    cosigned.add(held)
            # else killed right after reading the answer, as the block ends
    assert statuses.get(200, 0) > 20 and statuses.get(422, 0) > 5, (seed, statuses)
    _assert_pairwise_consistent(cosigned, log, seed)


def _assert_pairwise_consistent(cosigned: set[tuple[int, bytes]], log: ForkingLog, seed: int) -> None:
    ordered = sorted(cosigned)
    for i, (small, small_root) in enumerate(ordered):
        for large, large_root in ordered[i + 1 :]:
            if small == 0:
                assert small_root == EMPTY_ROOT
                continue
            tree = log.tree_with(large, large_root)
            consistent = merkle.verify_consistency(
                first=small,
                second=large,
                first_root=small_root,
                second_root=large_root,
                proof=tree.proof(small, large),
            )
            assert consistent, f"seed {seed}: cosigned {small} and {large} from two histories"
