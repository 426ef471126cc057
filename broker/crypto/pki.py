"""A small development CA for mutual TLS: a CA, node (client) certificates, server certificates.

Production deployments bring their own CA; this one exists so a test or a demo can stand up
mutual TLS in a minute. What the broker relies on, whoever issued the certificate:

* a node certificate names its node in exactly one SAN URI, ``urn:alliance-broker:node:<id>``
  (``node_id_from_certificate`` reads it), with extendedKeyUsage clientAuth;
* a server certificate names its DNS names and IP addresses in the SAN, with serverAuth.

Key types: P-256 (ECDSA with SHA-256) by default, Ed25519 on request. Python's ``ssl`` (OpenSSL 3)
completes TLS 1.2 and 1.3 handshakes with either (``tests/unit/test_pki.py`` does both), but
browsers and several other TLS stacks accept no Ed25519 certificate anywhere in a chain, and the
broker also serves a browser page: a P-256 CA keeps that page reachable over TLS.

On disk: certificates are PEM (``.pem``, mode 0644), private keys unencrypted PKCS#8 PEM
(``.key``, mode 0600). Every file is written to a temporary file, synced and renamed into place,
so a crash never leaves half a key; the CA's files are linked into place, so ``init-ca`` never
overwrites a CA it did not mean to (``force``).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.crypto.files import write_atomically
from broker.errors import BrokerError, InvalidInput

KeyType = Literal["p256", "ed25519"]
KEY_TYPES: tuple[KeyType, ...] = get_args(KeyType)
DEFAULT_KEY_TYPE: KeyType = "p256"
PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey

NODE_URI_PREFIX = "urn:alliance-broker:node:"
# Always fullmatch: with match a ``$`` would also accept a trailing newline. The same rule as the
# node registry's (broker/services/admin.py), so every registrable node can have a certificate.
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DNS_NAME = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*")  # always fullmatch
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

DEFAULT_CA_NAME = "Alliance Broker development CA"
CA_DAYS = 3650
LEAF_DAYS = 365
MAX_DAYS = 100 * 366
# Certificates start a little in the past, so a peer whose clock is slightly behind accepts them.
CLOCK_SKEW = timedelta(minutes=5)

CA_CERTIFICATE = "ca.pem"
CA_KEY = "ca.key"
SERVER_STEM = "server"


@dataclass(frozen=True)
class CertifiedKey:
    """A certificate with its private key."""

    certificate: x509.Certificate
    key: PrivateKey

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM: write it only to a mode-0600 file."""
        return self.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

    @property
    def key_type(self) -> str:
        return key_type_of(self.key)


# --- pure helpers ------------------------------------------------------------------------------


def is_node_id(value: str) -> bool:
    return NODE_ID.fullmatch(value) is not None


def node_uri(node_id: str) -> str:
    """The SAN URI that names ``node_id``; InvalidInput unless it is a valid node id."""
    if not is_node_id(node_id):
        raise InvalidInput(f"node id {node_id!r} must match {NODE_ID.pattern}", code="invalid_node")
    return NODE_URI_PREFIX + node_id


def node_id_from_certificate(cert_der: bytes) -> str | None:
    """The node id a DER certificate names in its SAN URI ``urn:alliance-broker:node:<id>``.

    None when the certificate names no node, names several (or one URI several times), names an
    invalid id, or cannot be parsed at all: the caller then has no node to authenticate. This
    reads the certificate only; checking it (chain, validity, key usage) is the TLS layer's job,
    so call it on what ``getpeercert(binary_form=True)`` returns from a verified connection."""
    try:
        certificate = x509.load_der_x509_certificate(cert_der)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound, x509.DuplicateExtension):
        return None
    named = [uri.removeprefix(NODE_URI_PREFIX) for uri in uris if uri.startswith(NODE_URI_PREFIX)]
    if len(named) != 1 or not is_node_id(named[0]):
        return None
    return named[0]


def load_certificate(pem: bytes) -> x509.Certificate:
    """The first certificate in ``pem`` (a chain file gives its leaf); ValueError if there is none."""
    return x509.load_pem_x509_certificate(pem)


@functools.lru_cache(maxsize=4096)
def certificate_expires_at(cert_der: bytes) -> datetime | None:
    """When a DER certificate stops being valid (its notAfter, UTC), or None when the bytes are
    no certificate. Like ``node_id_from_certificate``, for what a verified connection presented;
    remembered per certificate, since every request on its connection asks again."""
    try:
        return x509.load_der_x509_certificate(cert_der).not_valid_after_utc
    except ValueError:
        return None


def fingerprint_sha256(cert: bytes) -> str:
    """Lower-case hex SHA-256 of the DER certificate; ``cert`` is PEM (first one) or DER.

    ValueError when the bytes are no certificate."""
    if cert.lstrip().startswith(b"-----BEGIN"):
        certificate = load_certificate(cert)
    else:
        certificate = x509.load_der_x509_certificate(cert)
    return certificate.fingerprint(hashes.SHA256()).hex()


def certificate_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def new_key(key_type: KeyType = DEFAULT_KEY_TYPE) -> PrivateKey:
    if key_type == "ed25519":
        return Ed25519PrivateKey.generate()
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise InvalidInput(f"key type must be one of {', '.join(KEY_TYPES)}, not {key_type!r}")


def key_type_of(key: PrivateKey) -> str:
    if isinstance(key, Ed25519PrivateKey):
        return "ed25519"
    return {"secp256r1": "p256"}.get(key.curve.name, key.curve.name)


def create_ca(
    *,
    name: str = DEFAULT_CA_NAME,
    key_type: KeyType = DEFAULT_KEY_TYPE,
    days: int = CA_DAYS,
    now: datetime | None = None,
) -> CertifiedKey:
    """A self-signed CA: basicConstraints CA:TRUE with pathlen 0 (it signs only end entities),
    keyUsage keyCertSign and cRLSign, a subject key identifier."""
    if not 1 <= len(name) <= 64 or _CONTROL.search(name):
        raise InvalidInput("CA name must be 1 to 64 characters, without control characters")
    key = new_key(key_type)
    not_before, not_after = _validity(now=now, days=days, not_before=None, not_after=None)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return CertifiedKey(certificate=builder.sign(key, _hash_for(key)), key=key)


def issue_node_certificate(
    node_id: str,
    *,
    ca: CertifiedKey,
    key_type: KeyType = DEFAULT_KEY_TYPE,
    days: int = LEAF_DAYS,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    now: datetime | None = None,
) -> CertifiedKey:
    """A client certificate for ``node_id``: SAN URI ``urn:alliance-broker:node:<id>``,
    extendedKeyUsage clientAuth, keyUsage digitalSignature, a fresh key and a random serial.

    Valid for ``days`` from now (never past the CA), or exactly ``not_before``..``not_after``
    where given (tests issue expired certificates that way)."""
    uri = node_uri(node_id)
    return _issue(
        ca=ca,
        key_type=key_type,
        common_name=node_id,
        names=[x509.UniformResourceIdentifier(uri)],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        validity=_validity(now=now, days=days, not_before=not_before, not_after=not_after, ca=ca),
    )


def issue_server_certificate(
    hosts: Sequence[str],
    *,
    ca: CertifiedKey,
    key_type: KeyType = DEFAULT_KEY_TYPE,
    days: int = LEAF_DAYS,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    now: datetime | None = None,
) -> CertifiedKey:
    """A server certificate for ``hosts`` (DNS names, ``*.`` wildcards, IPv4 and IPv6 addresses)
    in its SAN, extendedKeyUsage serverAuth, keyUsage digitalSignature."""
    names = server_names(hosts)
    return _issue(
        ca=ca,
        key_type=key_type,
        common_name="Alliance Broker server",
        names=names,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        validity=_validity(now=now, days=days, not_before=not_before, not_after=not_after, ca=ca),
    )


def server_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries for ``hosts``, in order, without repeats; InvalidInput names a bad host."""
    if not hosts:
        raise InvalidInput("name at least one host")
    names: list[x509.GeneralName] = []
    for host in hosts:
        name: x509.GeneralName
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if len(host) > 253 or not DNS_NAME.fullmatch(host):
                raise InvalidInput(
                    f"host {host!r} is neither an IP address nor a DNS name (ASCII; use punycode)"
                ) from None
            name = x509.DNSName(host.lower())
        else:
            if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
                raise InvalidInput(f"host {host!r}: a certificate cannot name a scoped address")
            name = x509.IPAddress(address)
        if name not in names:
            names.append(name)
    return names


def _issue(
    *,
    ca: CertifiedKey,
    key_type: KeyType,
    common_name: str,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    validity: tuple[datetime, datetime],
) -> CertifiedKey:
    key = new_key(key_type)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca), critical=False)
    )
    return CertifiedKey(certificate=builder.sign(ca.key, _hash_for(ca.key)), key=key)


def _authority_key_identifier(ca: CertifiedKey) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _validity(
    *,
    now: datetime | None,
    days: int,
    not_before: datetime | None,
    not_after: datetime | None,
    ca: CertifiedKey | None = None,
) -> tuple[datetime, datetime]:
    if not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"days must be 1 to {MAX_DAYS}, not {days}")
    now = datetime.now(UTC) if now is None else now
    if ca is not None and ca.certificate.not_valid_after_utc <= now:
        raise InvalidInput(f"the CA expired at {ca.certificate.not_valid_after_utc.isoformat()}")
    start = now - CLOCK_SKEW if not_before is None else not_before
    end = now + timedelta(days=days) if not_after is None else not_after
    if ca is not None:
        end = min(end, ca.certificate.not_valid_after_utc)  # a leaf never outlives its CA
    if end <= start:
        raise InvalidInput("a certificate must end after it starts")
    return start, end


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    """The digest to sign with: Ed25519 takes none, ECDSA here always SHA-256."""
    return None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256()


def _public_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# --- files ------------------------------------------------------------------------------------


def save_ca(directory: Path, ca: CertifiedKey, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``ca.key`` (0600) and ``ca.pem`` into ``directory``; return their paths.

    BrokerError when ``directory`` already holds either file, unless ``force``: then both are
    replaced (the old CA's certificates no longer verify against the new one)."""
    cert_path, key_path = directory / CA_CERTIFICATE, directory / CA_KEY
    if not force:
        for path in (cert_path, key_path):
            if path.exists() or path.is_symlink():
                raise BrokerError(f"{directory} already holds a CA ({path.name}): pass --force to replace it")
    _make_directory(directory)
    try:
        _write_atomically(key_path, ca.key_pem(), mode=0o600, replace=force)
    except FileExistsError:
        raise BrokerError(f"{directory} already holds a CA ({CA_KEY}): pass --force to replace it") from None
    try:
        _write_atomically(cert_path, ca.certificate_pem(), mode=0o644, replace=force)
    except FileExistsError:
        key_path.unlink(missing_ok=True)  # ours: linking it succeeded just now
        raise BrokerError(
            f"{directory} already holds a CA ({CA_CERTIFICATE}): pass --force to replace it"
        ) from None
    return cert_path, key_path


def load_ca(directory: Path) -> CertifiedKey:
    """The CA in ``directory`` (``ca.pem`` and ``ca.key``), checked: a CA certificate, the key
    that matches it, a key file only its owner can read. BrokerError (one line) otherwise."""
    cert_path, key_path = directory / CA_CERTIFICATE, directory / CA_KEY
    if not directory.is_dir():
        raise BrokerError(f"no CA directory {directory}: create one with `broker pki init-ca {directory}`")
    for path in (cert_path, key_path):
        if not (path.exists() or path.is_symlink()):
            raise BrokerError(f"no CA in {directory} ({path.name} is missing)")
    cert_pem = _read(cert_path)
    key_pem = _read(key_path)
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise BrokerError(f"{key_path}: mode {mode:o} lets others read the CA key; chmod 600")
    try:
        certificate = load_certificate(cert_pem)
    except ValueError:
        raise BrokerError(f"{cert_path} is not a PEM certificate") from None
    key = load_private_key(key_pem, path=key_path)
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (ValueError, x509.ExtensionNotFound, x509.DuplicateExtension):
        constraints = None
    if constraints is None or not constraints.ca:
        raise BrokerError(f"{cert_path} is not a CA certificate (basicConstraints CA:TRUE)")
    if _public_der(key) != certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    ):
        raise BrokerError(f"{key_path} is not the key of {cert_path}")
    return CertifiedKey(certificate=certificate, key=key)


def load_private_key(pem: bytes, *, path: Path | str = "key") -> PrivateKey:
    """An unencrypted PEM private key of a type this CA signs with (P-256 or other ECDSA,
    Ed25519); BrokerError naming ``path`` otherwise."""
    try:
        key = load_pem_private_key(pem, password=None)
    except TypeError:
        raise BrokerError(f"{path} is encrypted: the development CA takes an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise BrokerError(f"{path} is not a PEM private key of a supported type") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | Ed25519PrivateKey):
        raise BrokerError(f"{path} holds a {type(key).__name__}: the development CA takes ECDSA or Ed25519")
    return key


def save_issued(
    directory: Path,
    stem: str,
    issued: CertifiedKey,
    *,
    chain: Sequence[x509.Certificate] = (),
    ca_directory: Path | None = None,
) -> tuple[Path, Path]:
    """Write ``<stem>.pem`` (the certificate, then ``chain``) and ``<stem>.key`` (0600) into
    ``directory``, replacing earlier ones; return their paths. BrokerError instead of
    overwriting the CA's own files (a node named ``ca`` issued into the CA directory)."""
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    if ca_directory is not None:
        protected = {_resolved(ca_directory / CA_CERTIFICATE), _resolved(ca_directory / CA_KEY)}
        for path in (cert_path, key_path):
            if _resolved(path) in protected:
                raise BrokerError(f"refusing to overwrite the CA's {path}: choose another --out")
    _make_directory(directory)
    pem = issued.certificate_pem() + b"".join(c.public_bytes(Encoding.PEM) for c in chain)
    _write_atomically(key_path, issued.key_pem(), mode=0o600, replace=True)
    _write_atomically(cert_path, pem, mode=0o644, replace=True)
    return cert_path, key_path


def _resolved(path: Path) -> Path:
    return path.resolve(strict=False)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BrokerError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BrokerError(f"cannot create {directory}: {exc.strerror or exc}") from exc


def _write_atomically(path: Path, data: bytes, *, mode: int, replace: bool) -> None:
    """crypto.files.write_atomically, with failures other than an existing file as BrokerError."""
    try:
        write_atomically(path, data, mode=mode, replace=replace)
    except FileExistsError:
        raise
    except OSError as exc:
        raise BrokerError(f"cannot write {path}: {exc.strerror or exc}") from exc
