"""The address a request comes from, as the limits that key on it see it.

Behind a reverse proxy every request arrives from the proxy: keyed on that, one failing client
would get every client refused. A proxy listed in ``server.trusted_proxies`` names the client in
``X-Forwarded-For`` (appending the address it saw to what it was sent); the header is read only
when the peer is such a proxy, and from the right: the first address that is not a trusted
proxy is the client. Whatever lies to its left was written by the client and is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
TRUSTED_PROXIES: web.AppKey[tuple[Network, ...]] = web.AppKey("trusted_proxies")
UNKNOWN = "-"


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: tuple[Network, ...]) -> str:
    """The client's address: ``peer``, or, when ``peer`` is a trusted proxy, the rightmost
    address of the ``X-Forwarded-For`` values that is not one (in its canonical spelling, so one
    IPv6 address is one source however it is written). A malformed entry ends the walk at the
    proxy that passed it on."""
    current = peer or UNKNOWN
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        if not _trusted(current, trusted):
            break
        try:
            current = str(ipaddress.ip_address(hop))
        except ValueError:
            break
    return current


def source_address(request: web.Request) -> str:
    """The address failed authentications and refusals are counted against."""
    trusted = request.config_dict.get(TRUSTED_PROXIES, ())
    if not trusted:
        return request.remote or UNKNOWN
    return client_address(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
