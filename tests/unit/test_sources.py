"""The client address behind trusted reverse proxies (broker.web.sources)."""

from __future__ import annotations

from broker.web.sources import client_address, networks

PROXIES = networks(["10.0.0.0/24", "fd00::/8"])


def test_without_a_trusted_peer_the_header_is_ignored() -> None:
    assert client_address("192.0.2.9", ["198.51.100.1"], PROXIES) == "192.0.2.9"
    assert client_address(None, [], PROXIES) == "-"


def test_the_rightmost_untrusted_address_is_the_client() -> None:
    # the client wrote 203.0.113.5; the outer proxy saw 198.51.100.1; an inner proxy saw fd00::2
    assert client_address("10.0.0.1", ["203.0.113.5, 198.51.100.1", "fd00::2"], PROXIES) == "198.51.100.1"


def test_one_ipv6_address_is_one_source_however_it_is_written() -> None:
    assert client_address("10.0.0.1", ["2001:DB8:0:0::1"], PROXIES) == "2001:db8::1"


def test_a_malformed_entry_stops_at_the_proxy_that_passed_it() -> None:
    assert client_address("10.0.0.1", ["not-an-address"], PROXIES) == "10.0.0.1"
    assert client_address("10.0.0.1", ["not-an-address, 10.0.0.7"], PROXIES) == "10.0.0.7"


def test_only_proxies_all_the_way_gives_the_leftmost() -> None:
    assert client_address("10.0.0.1", ["10.0.0.3, 10.0.0.2"], PROXIES) == "10.0.0.3"
