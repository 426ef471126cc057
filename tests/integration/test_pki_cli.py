"""`broker pki` as an operator runs it: a CA, node and server certificates that complete a mutual
TLS handshake, and inputs it refuses (exit 2, one line on stderr, nothing on stdout). The pki
commands read no settings and touch no database or keyring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from broker.crypto import pki
from tests.integration.helpers import Cli, Ran
from tests.unit.test_pki import Files, client_context, handshake, server_context


@pytest.fixture
def env(tmp_path: Path, cli: Cli) -> Cli:
    """The CLI in an environment whose database, keyring and config directory do not exist: a pki
    command that loaded settings (the config directory must exist) would fail, and one that
    opened the database or the keyring would leave a file behind."""
    unused = f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"
    return cli.use(unused, tmp_path / "unused-keyring.json", CONFIG_DIR=str(tmp_path / "no-config"))


@pytest.fixture(autouse=True)
def _nothing_else_written(tmp_path: Path) -> object:
    yield None
    for name in ("unused.db", "unused-keyring.json", "no-config"):
        assert not (tmp_path / name).exists(), name


def _broker(env: Cli, *args: str) -> Ran:
    return env("pki", *args)


def _ok(env: Cli, *args: str) -> dict[str, object]:
    found: dict[str, object] = json.loads(env.ok("pki", *args, "--json").stdout)
    return found


def _refused(env: Cli, *args: str) -> str:
    line = env.refused("pki", *args)
    assert line.startswith("error: "), line
    return line


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("key_type", [None, *pki.KEY_TYPES])
async def test_ca_node_and_server_certificates_complete_a_mutual_tls_handshake(
    tmp_path: Path, env: Cli, key_type: str | None
) -> None:
    kind = [] if key_type is None else ["--key-type", key_type]
    ca_dir, nodes, server_dir = tmp_path / "ca", tmp_path / "nodes", tmp_path / "server"

    ca = _ok(env, "init-ca", str(ca_dir), "--name", "Exercise CA", "--days", "30", *kind)
    assert ca["certificate"] == str(ca_dir / "ca.pem") and ca["key"] == str(ca_dir / "ca.key")
    assert ca["subject"] == "CN=Exercise CA"
    assert ca["key_type"] == key_type or pki.DEFAULT_KEY_TYPE
    assert _mode(ca_dir / "ca.key") == 0o600
    assert ca["fingerprint_sha256"] == pki.fingerprint_sha256((ca_dir / "ca.pem").read_bytes())

    node = _ok(env, "issue", "usa-1.ops_2", "--ca", str(ca_dir), "--out", str(nodes), *kind)
    cert_path, key_path = nodes / "usa-1.ops_2.pem", nodes / "usa-1.ops_2.key"
    assert node == {
        "node": "usa-1.ops_2",
        "certificate": str(cert_path),
        "key": str(key_path),
        "fingerprint_sha256": pki.fingerprint_sha256(cert_path.read_bytes()),
    }
    assert _mode(key_path) == 0o600
    node_cert = pki.load_certificate(cert_path.read_bytes())
    der = pki.certificate_der(node_cert)
    assert pki.node_id_from_certificate(der) == "usa-1.ops_2"

    server = _ok(
        env, "server-cert", "localhost", "127.0.0.1", "::1", "--ca", str(ca_dir), "--out", str(server_dir)
    )
    assert server["certificate"] == str(server_dir / "server.pem")
    assert server["hosts"] == ["localhost", "127.0.0.1", "::1"]
    assert _mode(server_dir / "server.key") == 0o600
    chain = x509.load_pem_x509_certificates((server_dir / "server.pem").read_bytes())
    assert [c.subject for c in chain] == [chain[0].subject, chain[1].issuer]
    assert chain[1] == pki.load_certificate((ca_dir / "ca.pem").read_bytes())

    seen = await handshake(
        server_context(
            Files(server_dir / "server.pem", server_dir / "server.key"), client_ca=ca_dir / "ca.pem"
        ),
        client_context(Files(cert_path, key_path), server_ca=ca_dir / "ca.pem"),
        host="127.0.0.1",
    )
    assert seen.error is None and seen.client_error is None
    assert seen.peer == der
    assert pki.node_id_from_certificate(seen.peer) == "usa-1.ops_2"


def test_text_output_without_json(tmp_path: Path, env: Cli) -> None:
    result = _broker(env, "init-ca", str(tmp_path / "ca"))
    assert result.returncode == 0, result.stderr
    assert f"certificate: {tmp_path / 'ca' / 'ca.pem'}" in result.stdout.splitlines()
    result = _broker(env, "issue", "usa-1", "--ca", str(tmp_path / "ca"), "--out", str(tmp_path / "n"))
    assert result.returncode == 0, result.stderr
    assert "node: usa-1" in result.stdout.splitlines()


def test_init_ca_refuses_to_replace_a_ca_unless_forced(tmp_path: Path, env: Cli) -> None:
    ca_dir = tmp_path / "ca"
    first = _ok(env, "init-ca", str(ca_dir))
    before = (ca_dir / "ca.key").read_bytes()
    line = _refused(env, "init-ca", str(ca_dir))
    assert "already holds a CA" in line and "--force" in line
    assert (ca_dir / "ca.key").read_bytes() == before

    second = _ok(env, "init-ca", str(ca_dir), "--force", "--key-type", "ed25519")
    assert second["fingerprint_sha256"] != first["fingerprint_sha256"]
    assert second["key_type"] == "ed25519"
    assert (ca_dir / "ca.key").read_bytes() != before
    assert _mode(ca_dir / "ca.key") == 0o600
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.key", "ca.pem"]


def test_reissuing_replaces_the_node_certificate(tmp_path: Path, env: Cli) -> None:
    ca_dir, out = str(tmp_path / "ca"), str(tmp_path / "out")
    _ok(env, "init-ca", ca_dir)
    first = _ok(env, "issue", "usa-1", "--ca", ca_dir, "--out", out)
    second = _ok(env, "issue", "usa-1", "--ca", ca_dir, "--out", out, "--days", "7")
    assert first["fingerprint_sha256"] != second["fingerprint_sha256"]
    cert = pki.load_certificate((tmp_path / "out" / "usa-1.pem").read_bytes())
    assert pki.fingerprint_sha256(pki.certificate_der(cert)) == second["fingerprint_sha256"]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 7


def _break(ca_dir: Path, how: str) -> None:
    key = ca_dir / "ca.key"
    if how == "key is unreadable":  # a directory: unreadable even for root, who ignores modes
        key.unlink()
        key.mkdir()
    elif how == "key is garbage":
        key.write_text("this is not a key\n")
    elif how == "key readable by others":
        key.chmod(0o644)
    elif how == "key missing":
        key.unlink()


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("key is unreadable", "cannot read"),
        ("key is garbage", "not a PEM private key"),
        ("key readable by others", "chmod 600"),
        ("key missing", "ca.key is missing"),
    ],
)
def test_a_ca_key_that_cannot_be_used_is_reported_in_one_line(
    tmp_path: Path, env: Cli, how: str, expected: str
) -> None:
    ca_dir = tmp_path / "ca"
    _ok(env, "init-ca", str(ca_dir))
    _break(ca_dir, how)
    for command in (["issue", "usa-1"], ["server-cert", "localhost"]):
        line = _refused(env, *command, "--ca", str(ca_dir), "--out", str(tmp_path / "out"))
        assert expected in line
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def shared_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA for the tests that must leave it alone (each checks it did); made as `pki init-ca`
    makes one (the command itself is tested above)."""
    folder = tmp_path_factory.mktemp("shared") / "ca"
    pki.save_ca(folder, pki.create_ca(name="Shared CA"))
    return folder


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["issue", "usa-1", "--ca", "{tmp}/missing", "--out", "{tmp}/out"], "no CA directory"),
        (["server-cert", "localhost", "--ca", "{tmp}/missing", "--out", "{tmp}/out"], "no CA directory"),
        (["issue", "bad/id", "--ca", "{ca}", "--out", "{tmp}/out"], "node id 'bad/id' must match"),
        (["issue", "-- ", "--ca", "{ca}", "--out", "{tmp}/out"], "must match"),
        (["issue", "a\nb", "--ca", "{ca}", "--out", "{tmp}/out"], "must match"),
        (["issue", "x" * 65, "--ca", "{ca}", "--out", "{tmp}/out"], "must match"),
        (["issue", "ca", "--ca", "{ca}", "--out", "{ca}"], "refusing to overwrite"),
        (["server-cert", "bad host", "--ca", "{ca}", "--out", "{tmp}/out"], "bad host"),
        (["issue", "usa-1", "--ca", "{ca}", "--out", "{tmp}/out", "--days", "0"], "days must be"),
        (["init-ca", "{tmp}/out", "--name", ""], "CA name"),
        (["init-ca", "{ca}"], "already holds a CA"),
        (["init-ca", "{ca}/ca.pem/out"], "cannot create"),
    ],
)
def test_bad_input_is_refused_in_one_line(
    tmp_path: Path, env: Cli, shared_ca: Path, args: list[str], expected: str
) -> None:
    ca_pem, ca_key = (shared_ca / "ca.pem").read_bytes(), (shared_ca / "ca.key").read_bytes()
    line = _refused(env, *(a.replace("{tmp}", str(tmp_path)).replace("{ca}", str(shared_ca)) for a in args))
    assert expected in line
    assert (shared_ca / "ca.pem").read_bytes() == ca_pem and (shared_ca / "ca.key").read_bytes() == ca_key
    assert sorted(p.name for p in shared_ca.iterdir()) == ["ca.key", "ca.pem"]
    assert not (tmp_path / "out").exists()


def test_pki_needs_no_settings_at_all(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not even an environment: no BROKER_* variables, run from an empty directory."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cli.ok("pki", "init-ca", "ca", "--json")
    assert sorted(p.name for p in work.iterdir()) == ["ca"]
