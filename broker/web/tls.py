"""TLS for ``broker serve``: the server's SSL context, the rule that plain HTTP stays on loopback,
and the client certificate a request came with.

The standard library's defaults for a server context (``ssl.create_default_context``) with TLS
1.2 as the floor. With ``client_auth`` ``optional`` or ``required``, OpenSSL checks that a client
certificate chains to one of the configured alliance CAs and is within its validity; which node
it names, and whether that node accepts it, is the broker's own check (services.auth).
"""

from __future__ import annotations

import ipaddress
import ssl

from aiohttp import web

from broker.errors import ConfigError
from broker.settings import TlsSettings

_VERIFY = {"off": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything else,
    including the wildcard addresses and other host names."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(*, host: str, tls: TlsSettings) -> None:
    """Refuse to serve plain HTTP on anything but loopback, unless explicitly told to."""
    if tls.enabled or tls.insecure_http or is_loopback(host):
        return
    raise ConfigError(
        file="broker serve",
        key="--host",
        problem=f"{host} is not a loopback address: give --tls-cert and --tls-key (or, for a "
        "network you trust entirely, --insecure-http)",
    )


def server_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The server's SSL context, or None for plain HTTP. ConfigError names what is wrong."""
    if not tls.enabled:
        if tls.client_auth != "off" or tls.client_ca:
            raise ConfigError(file="tls", key="client_auth", problem="client certificates need --tls-cert")
        return None
    if tls.key is None:
        raise ConfigError(file="tls", key="key", problem="--tls-cert needs --tls-key")
    if tls.client_auth != "off" and not tls.client_ca:
        raise ConfigError(file="tls", key="client_ca", problem=f"client_auth {tls.client_auth} needs a CA")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(file=str(tls.cert), key="tls.cert", problem=f"cannot load: {exc}") from exc
    for ca in tls.client_ca:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(file=str(ca), key="tls.client_ca", problem=f"cannot load: {exc}") from exc
    context.verify_mode = _VERIFY[tls.client_auth]
    return context


def peer_certificate(request: web.Request) -> bytes | None:
    """The DER client certificate the connection presented (already verified against the
    configured CAs by the handshake), or None."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der
