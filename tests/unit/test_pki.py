"""The development CA: what its certificates say, the files it writes, and real TLS handshakes
with Python's ``ssl`` (OpenSSL) for both key types, including the ones that must fail."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.crypto import pki
from broker.errors import BrokerError, InvalidInput

CA = pki.create_ca()
TLS_VERSIONS = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}
NODE_IDS = st.from_regex(pki.NODE_ID, fullmatch=True)


T = TypeVar("T", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[T]) -> x509.Extension[T]:
    return cert.extensions.get_extension_for_class(kind)


def _der(issued: pki.CertifiedKey) -> bytes:
    return issued.certificate.public_bytes(Encoding.DER)


# --- certificates -----------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", pki.KEY_TYPES)
def test_ca_is_a_self_signed_ca_for_end_entities_only(key_type: pki.KeyType) -> None:
    ca = pki.create_ca(name="Test CA", key_type=key_type, days=30)
    cert = ca.certificate
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test CA"
    cert.verify_directly_issued_by(cert)
    constraints = _ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert _ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        ca.key.public_key()
    )
    assert ca.key_type == key_type
    expected_key = Ed25519PrivateKey if key_type == "ed25519" else ec.EllipticCurvePrivateKey
    assert isinstance(ca.key, expected_key)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=30) + pki.CLOCK_SKEW


def test_default_key_type_is_p256() -> None:
    assert pki.DEFAULT_KEY_TYPE == "p256"
    assert isinstance(CA.key, ec.EllipticCurvePrivateKey) and CA.key.curve.name == "secp256r1"


@pytest.mark.parametrize("key_type", pki.KEY_TYPES)
def test_node_certificate_names_the_node_for_client_auth(key_type: pki.KeyType) -> None:
    ca = pki.create_ca(key_type=key_type)
    node = pki.issue_node_certificate("usa-1", ca=ca, key_type=key_type)
    cert = node.certificate
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.issuer == ca.certificate.subject
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:alliance-broker:node:usa-1"]
    assert _ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert not _ext(cert, x509.BasicConstraints).value.ca
    ca_ski = _ext(ca.certificate, x509.SubjectKeyIdentifier).value
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski.digest
    assert _ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        node.key.public_key()
    )
    assert pki.node_id_from_certificate(_der(node)) == "usa-1"


def test_every_certificate_gets_a_fresh_key_and_a_random_serial() -> None:
    first, second = (pki.issue_node_certificate("usa-1", ca=CA) for _ in range(2))
    assert first.certificate.serial_number != second.certificate.serial_number
    assert first.certificate.serial_number.bit_length() > 64
    assert first.key_pem() != second.key_pem()


@settings(max_examples=50, deadline=None)
@given(NODE_IDS)
def test_any_valid_node_id_round_trips_through_a_certificate(node_id: str) -> None:
    node = pki.issue_node_certificate(node_id, ca=CA)
    assert pki.node_id_from_certificate(_der(node)) == node_id


@given(st.text(max_size=80).filter(lambda s: pki.NODE_ID.fullmatch(s) is None))
def test_invalid_node_ids_are_refused(node_id: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        pki.issue_node_certificate(node_id, ca=CA)
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("node_id", ["", "-a", ".hidden", "a/b", "a b", "alice\n", "é", "x" * 65, "../ca"])
def test_node_ids_that_are_not_names_are_refused(node_id: str) -> None:
    with pytest.raises(InvalidInput):
        pki.node_uri(node_id)


def _certificate_with_uris(*uris: str) -> bytes:
    """A certificate (signed by CA) whose SAN holds exactly ``uris`` (none: no SAN at all)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(CA.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if uris:
        names = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    assert isinstance(CA.key, ec.EllipticCurvePrivateKey)
    return builder.sign(CA.key, hashes.SHA256()).public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    ("uris", "expected"),
    [
        ((), None),
        (("spiffe://example.org/node/a",), None),
        (("urn:alliance-broker:node:alice",), "alice"),
        (("spiffe://example.org/x", "urn:alliance-broker:node:alice"), "alice"),
        (("urn:alliance-broker:node:alice", "urn:alliance-broker:node:bob"), None),
        (("urn:alliance-broker:node:alice", "urn:alliance-broker:node:alice"), None),
        (("urn:alliance-broker:node:",), None),
        (("urn:alliance-broker:node:a/b",), None),
        (("URN:alliance-broker:node:alice",), None),
        (("urn:alliance-broker:node:alice:extra",), None),
    ],
)
def test_node_id_comes_from_exactly_one_node_uri(uris: tuple[str, ...], expected: str | None) -> None:
    assert pki.node_id_from_certificate(_certificate_with_uris(*uris)) == expected


def test_node_id_of_garbage_or_a_ca_or_a_server_is_none() -> None:
    assert pki.node_id_from_certificate(b"") is None
    assert pki.node_id_from_certificate(b"\x30\x03\x02\x01\x00") is None
    assert pki.node_id_from_certificate(CA.certificate_pem()) is None  # PEM is not DER
    assert pki.node_id_from_certificate(_der(CA)) is None
    assert pki.node_id_from_certificate(_der(pki.issue_server_certificate(["localhost"], ca=CA))) is None


def test_fingerprint_is_sha256_of_the_der_from_pem_or_der() -> None:
    node = pki.issue_node_certificate("usa-1", ca=CA)
    expected = hashlib.sha256(_der(node)).hexdigest()
    assert pki.fingerprint_sha256(_der(node)) == expected
    assert pki.fingerprint_sha256(node.certificate_pem()) == expected
    assert pki.fingerprint_sha256(b"\n" + node.certificate_pem() + CA.certificate_pem()) == expected
    assert expected == expected.lower() and len(expected) == 64
    with pytest.raises(ValueError, match="asn1"):
        pki.fingerprint_sha256(b"not a certificate")
    with pytest.raises(ValueError, match="asn1"):
        pki.fingerprint_sha256(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_load_certificate_reads_the_leaf_of_a_chain() -> None:
    server = pki.issue_server_certificate(["localhost"], ca=CA)
    loaded = pki.load_certificate(server.certificate_pem() + CA.certificate_pem())
    assert loaded == server.certificate
    with pytest.raises(ValueError, match="PEM"):
        pki.load_certificate(b"")


def test_server_certificate_names_hosts_for_server_auth() -> None:
    server = pki.issue_server_certificate(
        ["localhost", "127.0.0.1", "::1", "Broker.Example.org", "*.nodes.example.org", "localhost"], ca=CA
    )
    cert = server.certificate
    cert.verify_directly_issued_by(CA.certificate)
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "broker.example.org", "*.nodes.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []
    assert _ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert _ext(cert, x509.KeyUsage).value.digital_signature


@pytest.mark.parametrize(
    "hosts",
    [
        [],
        [""],
        ["bad host"],
        ["-x.example"],
        ["a..b"],
        ["exämple.org"],
        ["fe80::1%eth0"],
        ["x" * 64],
        ["a_b"],
    ],
)
def test_hosts_that_are_no_names_or_addresses_are_refused(hosts: list[str]) -> None:
    with pytest.raises(InvalidInput):
        pki.issue_server_certificate(hosts, ca=CA)


def test_validity_days_explicit_bounds_and_the_ca_limit() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    ca = pki.create_ca(days=10, now=now)
    node = pki.issue_node_certificate("n", ca=ca, days=5, now=now)
    assert node.certificate.not_valid_before_utc == now - pki.CLOCK_SKEW
    assert node.certificate.not_valid_after_utc == now + timedelta(days=5)
    longer = pki.issue_node_certificate("n", ca=ca, days=365, now=now)
    assert longer.certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc
    start, end = now - timedelta(days=3), now - timedelta(days=1)
    expired = pki.issue_node_certificate("n", ca=ca, not_before=start, not_after=end, now=now)
    assert (expired.certificate.not_valid_before_utc, expired.certificate.not_valid_after_utc) == (start, end)
    for days in (0, -1, pki.MAX_DAYS + 1):
        with pytest.raises(InvalidInput):
            pki.issue_node_certificate("n", ca=ca, days=days, now=now)
    with pytest.raises(InvalidInput):
        pki.issue_node_certificate("n", ca=ca, not_before=end, not_after=start, now=now)
    with pytest.raises(InvalidInput, match="CA expired"):
        pki.issue_node_certificate("n", ca=ca, now=now + timedelta(days=11))


@pytest.mark.parametrize("name", ["", "x" * 65, "a\nb"])
def test_ca_names_are_bounded(name: str) -> None:
    with pytest.raises(InvalidInput):
        pki.create_ca(name=name)


def test_unknown_key_type_is_refused() -> None:
    with pytest.raises(InvalidInput):
        pki.new_key("rsa")  # type: ignore[arg-type]


# --- files ------------------------------------------------------------------------------------


def test_ca_files_are_private_atomic_and_never_silently_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    cert_path, key_path = pki.save_ca(folder, CA)
    assert (cert_path, key_path) == (folder / "ca.pem", folder / "ca.key")
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["ca.key", "ca.pem"]  # no temporary files left
    loaded = pki.load_ca(folder)
    assert loaded.certificate == CA.certificate and loaded.key_pem() == CA.key_pem()

    other = pki.create_ca()
    with pytest.raises(BrokerError, match="already holds a CA"):
        pki.save_ca(folder, other)
    assert pki.load_ca(folder).certificate == CA.certificate
    key_path.unlink()  # half a CA still counts as one
    with pytest.raises(BrokerError, match="already holds a CA"):
        pki.save_ca(folder, other)
    pki.save_ca(folder, other, force=True)
    assert pki.load_ca(folder).certificate == other.certificate
    assert key_path.stat().st_mode & 0o777 == 0o600


def _broken(folder: Path, how: str) -> None:
    pki.save_ca(folder, CA)
    key = folder / "ca.key"
    if how == "no directory":
        (folder / "ca.pem").unlink()
        key.unlink()
        folder.rmdir()
    elif how == "no key":
        key.unlink()
    elif how == "key is a directory":
        key.unlink()
        key.mkdir()
    elif how == "key readable by others":
        key.chmod(0o644)
    elif how == "garbage key":
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    elif how == "another CA's key":
        key.write_bytes(pki.create_ca().key_pem())
    elif how == "not a CA":
        node = pki.issue_node_certificate("n", ca=CA)
        (folder / "ca.pem").write_bytes(node.certificate_pem())
        key.write_bytes(node.key_pem())
    elif how == "garbage certificate":
        (folder / "ca.pem").write_bytes(b"hello")


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no directory", "no CA directory"),
        ("no key", "ca.key is missing"),
        ("key is a directory", "cannot read"),
        ("key readable by others", "mode 644"),
        ("garbage key", "not a PEM private key"),
        ("another CA's key", "is not the key of"),
        ("not a CA", "not a CA certificate"),
        ("garbage certificate", "not a PEM certificate"),
    ],
)
def test_a_ca_that_cannot_be_used_is_refused_in_one_line(tmp_path: Path, how: str, message: str) -> None:
    folder = tmp_path / "ca"
    _broken(folder, how)
    with pytest.raises(BrokerError, match=message) as caught:
        pki.load_ca(folder)
    assert "\n" not in caught.value.message


def test_issued_files_are_replaced_atomically_and_never_over_the_ca(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    pki.save_ca(folder, CA)
    out = tmp_path / "out"
    first = pki.issue_node_certificate("usa-1", ca=CA)
    cert_path, key_path = pki.save_issued(out, "usa-1", first, ca_directory=folder)
    assert key_path.stat().st_mode & 0o777 == 0o600
    second = pki.issue_node_certificate("usa-1", ca=CA)
    pki.save_issued(out, "usa-1", second, ca_directory=folder)
    assert pki.load_certificate(cert_path.read_bytes()) == second.certificate
    assert sorted(p.name for p in out.iterdir()) == ["usa-1.key", "usa-1.pem"]

    server = pki.issue_server_certificate(["localhost"], ca=CA)
    chain_path, _ = pki.save_issued(out, "server", server, chain=[CA.certificate])
    assert x509.load_pem_x509_certificates(chain_path.read_bytes()) == [server.certificate, CA.certificate]

    with pytest.raises(BrokerError, match="refusing to overwrite"):
        pki.save_issued(folder, "ca", first, ca_directory=folder)
    assert pki.load_ca(folder).certificate == CA.certificate


# --- TLS handshakes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Files:
    """A certificate (with its chain) and its key on disk, as ``ssl`` needs them."""

    certificate: Path
    key: Path


def write(
    folder: Path, stem: str, issued: pki.CertifiedKey, *, chain: pki.CertifiedKey | None = None
) -> Files:
    cert, key = pki.save_issued(folder, stem, issued, chain=[chain.certificate] if chain else [])
    return Files(cert, key)


def server_context(server: Files, *, client_ca: Path) -> ssl.SSLContext:
    """Mutual TLS as the broker will run it: a client certificate from ``client_ca`` required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(server.certificate, server.key)
    context.load_verify_locations(cafile=client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(client: Files | None, *, server_ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server_ca))
    if client is not None:
        context.load_cert_chain(client.certificate, client.key)
    return context


@dataclass(frozen=True)
class Handshake:
    """What the server saw (the client's DER certificate, the TLS version, or why its handshake
    failed), and why the client's side failed, if it did."""

    peer: bytes | None
    version: str | None
    error: BaseException | None
    client_error: BaseException | None = None


async def handshake(server: ssl.SSLContext, client: ssl.SSLContext, *, host: str = "localhost") -> Handshake:
    """One TLS connection over 127.0.0.1 with asyncio streams; the server side's outcome."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[Handshake] = loop.create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(server)
            tls = writer.get_extra_info("ssl_object")
            outcome.set_result(Handshake(tls.getpeercert(binary_form=True), tls.version(), None))
            writer.write(b"ok")
            await writer.drain()
        except (ssl.SSLError, ConnectionError) as exc:
            outcome.set_result(Handshake(None, None, exc))
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client_error: BaseException | None = None
    async with listener:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname=host
            )
        except (ssl.SSLError, ConnectionError) as exc:
            client_error = exc
        else:
            try:
                # TLS 1.3 completes the client's handshake before the server checks its
                # certificate: a refusal reaches the client as an alert on its first read.
                if await reader.read(2) != b"ok":
                    client_error = ConnectionError("the server closed the connection")
            except (ssl.SSLError, ConnectionError) as exc:
                client_error = exc
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()
        seen = await asyncio.wait_for(outcome, 10)
    return Handshake(seen.peer, seen.version, seen.error, client_error)


@pytest.fixture(params=pki.KEY_TYPES)
def key_type(request: pytest.FixtureRequest) -> pki.KeyType:
    kind: pki.KeyType = request.param
    return kind


@pytest.fixture
def ca_dir(tmp_path: Path, key_type: pki.KeyType) -> Path:
    folder = tmp_path / "ca"
    pki.save_ca(folder, pki.create_ca(key_type=key_type))
    return folder


async def test_mutual_tls_handshake_names_the_node(
    tmp_path: Path, ca_dir: Path, key_type: pki.KeyType
) -> None:
    ca = pki.load_ca(ca_dir)
    ca_file = ca_dir / "ca.pem"
    server = write(
        tmp_path,
        "server",
        pki.issue_server_certificate(["localhost", "127.0.0.1"], ca=ca, key_type=key_type),
        chain=ca,
    )
    node = pki.issue_node_certificate("usa-1", ca=ca, key_type=key_type)
    client = write(tmp_path, "usa-1", node)
    for version, name in TLS_VERSIONS.items():
        context = client_context(client, server_ca=ca_file)
        context.maximum_version = version
        for host in ("localhost", "127.0.0.1"):
            seen = await handshake(server_context(server, client_ca=ca_file), context, host=host)
            assert seen.error is None and seen.client_error is None
            assert seen.version == name
            assert seen.peer == _der(node)
            assert pki.node_id_from_certificate(seen.peer) == "usa-1"
            assert pki.fingerprint_sha256(seen.peer) == pki.fingerprint_sha256(node.certificate_pem())


async def refused(server: Files, client: Files | None, *, ca_file: Path) -> str:
    """Connect ``client`` over TLS 1.2 and 1.3: the server must refuse both times, for the
    same reason (returned), and the client must see the connection fail."""
    reasons = set()
    for version in TLS_VERSIONS:
        context = client_context(client, server_ca=ca_file)
        context.maximum_version = version
        seen = await handshake(server_context(server, client_ca=ca_file), context)
        assert isinstance(seen.error, ssl.SSLError) and seen.peer is None
        assert seen.client_error is not None
        reasons.add(getattr(seen.error, "verify_message", None) or seen.error.reason)
    assert len(reasons) == 1
    return reasons.pop()


@pytest.fixture
def server_files(tmp_path: Path, ca_dir: Path, key_type: pki.KeyType) -> Files:
    ca = pki.load_ca(ca_dir)
    issued = pki.issue_server_certificate(["localhost"], ca=ca, key_type=key_type)
    return write(tmp_path / "server", "server", issued, chain=ca)


async def test_a_client_certificate_from_another_ca_is_refused(
    tmp_path: Path, ca_dir: Path, key_type: pki.KeyType, server_files: Files
) -> None:
    ca = pki.load_ca(ca_dir)
    # The same subject name as the real CA: only the signature tells them apart.
    stranger = pki.create_ca(name=pki.DEFAULT_CA_NAME, key_type=key_type)
    assert stranger.certificate.subject == ca.certificate.subject
    client = write(tmp_path, "usa-1", pki.issue_node_certificate("usa-1", ca=stranger, key_type=key_type))
    reason = await refused(server_files, client, ca_file=ca_dir / "ca.pem")
    assert reason == "unable to get local issuer certificate"


async def test_an_expired_client_certificate_is_refused(
    tmp_path: Path, ca_dir: Path, key_type: pki.KeyType, server_files: Files
) -> None:
    now = datetime.now(UTC)
    expired = pki.issue_node_certificate(
        "usa-1",
        ca=pki.load_ca(ca_dir),
        key_type=key_type,
        not_before=now - timedelta(days=10),
        not_after=now - timedelta(days=1),
    )
    client = write(tmp_path, "usa-1", expired)
    assert await refused(server_files, client, ca_file=ca_dir / "ca.pem") == "certificate has expired"


async def test_a_client_without_a_certificate_is_refused(ca_dir: Path, server_files: Files) -> None:
    reason = await refused(server_files, None, ca_file=ca_dir / "ca.pem")
    assert reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


async def test_a_server_certificate_is_no_client_certificate(ca_dir: Path, server_files: Files) -> None:
    """extendedKeyUsage keeps the server's own key from logging in as a node."""
    reason = await refused(server_files, server_files, ca_file=ca_dir / "ca.pem")
    assert reason == "unsuitable certificate purpose"


async def test_the_client_checks_the_server_names(tmp_path: Path, ca_dir: Path) -> None:
    ca = pki.load_ca(ca_dir)
    server = write(tmp_path, "server", pki.issue_server_certificate(["broker.example.org"], ca=ca), chain=ca)
    client = write(tmp_path, "usa-1", pki.issue_node_certificate("usa-1", ca=ca))
    context = client_context(client, server_ca=ca_dir / "ca.pem")
    seen = await handshake(server_context(server, client_ca=ca_dir / "ca.pem"), context, host="localhost")
    assert isinstance(seen.client_error, ssl.SSLCertVerificationError)
    assert "mismatch" in str(seen.client_error)
    assert seen.peer is None
