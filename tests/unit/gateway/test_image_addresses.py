"""The image fetcher's address policy: what is refused and in what words, IPv4 literals read as inet_aton
reads them, and the allowlist's hosts, ports and networks."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address

import pytest

from gateway.preflight.addresses import allowlist, ipv4_literal, literal, refusal
from manager.config import ConfigError, Settings


@pytest.mark.parametrize("address,words", [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private address (RFC 1918)"), ("172.16.5.4", "private address (RFC 1918)"),
    ("192.168.1.1", "private address (RFC 1918)"), ("fd12:3456::1", "unique local"),
    ("169.254.10.1", "link-local"), ("fe80::1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"), ("100.127.255.254", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"), ("192.0.0.192", "cloud metadata"),
    ("192.0.2.10", "not a public address"), ("198.51.100.1", "not a public address"),
    ("203.0.113.7", "not a public address"), ("198.18.0.1", "not a public address"),
    ("240.0.0.1", "not a public address"), ("255.255.255.255", "not a public address"),
    ("0.1.2.3", "not a public address"), ("2001:db8::1", "not a public address"),
    ("fec0::1", "site-local"),
])
def test_addresses_that_are_not_public_are_refused_with_their_kind(address: str, words: str) -> None:
    why = refusal(ip_address(address))
    assert why is not None and words in why


@pytest.mark.parametrize("address,form,inner,words", [
    ("::ffff:127.0.0.1", "IPv4-mapped", "127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "IPv4-mapped", "10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "IPv4-mapped", "169.254.169.254", "cloud metadata"),
    ("::127.0.0.1", "IPv4-compatible", "127.0.0.1", "loopback"),
    ("::192.168.0.1", "IPv4-compatible", "192.168.0.1", "private"),
    ("64:ff9b::127.0.0.1", "NAT64", "127.0.0.1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64", "169.254.169.254", "cloud metadata"),
    ("2002:7f00:1::1", "6to4", "127.0.0.1", "loopback"),
    ("2002:a00:1::", "6to4", "10.0.0.1", "private"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo", "127.0.0.1", "loopback"),  # client bits inverted
])
def test_ipv4_inside_ipv6_is_checked_as_the_ipv4_it_carries(address: str, form: str, inner: str,
                                                             words: str) -> None:
    why = refusal(ip_address(address))
    assert why is not None and form in why and inner in why and words in why


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ip_address(address)) is None


def test_teredo_is_refused_even_with_a_public_client() -> None:
    # 2001::/32 is not a global range: the relay it goes through is nobody the gateway should trust.
    why = refusal(ip_address("2001:0:4136:e378:8000:63bf:f7f7:f7f7"))  # client 8.8.8.8
    assert why is not None and "not a public address" in why


@pytest.mark.parametrize("host,address", [
    ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"), ("10.1", "10.0.0.1"), ("0", "0.0.0.0"), ("0xA9.0376.43518", "169.254.169.254"),
    ("1.2.3.4", "1.2.3.4"),
])
def test_ipv4_literals_are_read_as_inet_aton_reads_them(host: str, address: str) -> None:
    assert ipv4_literal(host) == IPv4Address(address)
    assert literal(host) == IPv4Address(address)


@pytest.mark.parametrize("host", ["example.com", "256.1.1.1", "1.2.3.4.5", "08.1.1.1", "0x", "1..2", "",
                                  "4294967296", "1.16777216", "images.lmforge-test.example", "0xg.1"])
def test_names_and_out_of_range_numbers_are_not_ipv4_literals(host: str) -> None:
    assert ipv4_literal(host) is None


def test_ipv6_literals_are_read_with_or_without_brackets() -> None:
    assert literal("[::1]") == ip_address("::1")
    assert literal("::ffff:7f00:1") == ip_address("::ffff:127.0.0.1")
    assert literal("images.example") is None


def test_an_allowlisted_host_opens_every_port_of_that_host_only() -> None:
    allow = allowlist(Settings(image_allow_hosts=["Images.Internal", "10.9.8.7"]))
    assert allow.opens_host("images.internal", 80) and allow.opens_host("IMAGES.internal.", 8443)
    assert allow.opens_host("10.9.8.7", 1234)
    assert allow.opens_host("0x0a090807", 1234)  # the same address, spelled otherwise
    assert not allow.opens_host("other.internal", 80)
    assert not allow.opens_host("10.9.8.6", 1234)


def test_a_port_qualified_entry_opens_only_that_port() -> None:
    allow = allowlist(Settings(image_allow_hosts=["127.0.0.1:8080", "[::1]:9090", "cdn.local:443"]))
    assert allow.opens_host("127.0.0.1", 8080) and not allow.opens_host("127.0.0.1", 8081)
    assert allow.opens_host("::1", 9090) and not allow.opens_host("::1", 8080)
    assert allow.opens_host("cdn.local", 443) and not allow.opens_host("cdn.local", 80)


def test_a_network_entry_opens_the_addresses_inside_it() -> None:
    allow = allowlist(Settings(image_allow_hosts=["10.0.0.0/8", "fd00::/8"]))
    assert allow.opens_address(ip_address("10.20.30.40")) and allow.opens_address(ip_address("fd00::5"))
    assert not allow.opens_address(ip_address("192.168.0.1"))
    assert not allow.opens_address(ip_address("fc00::1"))
    assert not allow.opens_host("10.20.30.40", 80)  # a network is matched against addresses, not host names


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "cdn.local:http", "cdn.local:70000", "[::1]x", ":80",
                                   "http://cdn.local", "cdn local"])
def test_a_malformed_entry_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError, match="image_allow_hosts"):
        Settings(image_allow_hosts=[entry]).validate()


def test_a_network_never_opens_a_cloud_metadata_address_but_a_host_entry_naming_it_does() -> None:
    wide = allowlist(Settings(image_allow_hosts=["0.0.0.0/0"]))
    assert wide.opens_address(ip_address("10.1.2.3")) and not wide.opens_address(ip_address("169.254.169.254"))
    assert allowlist(Settings(image_allow_hosts=["169.254.169.254"])).opens_host("169.254.169.254", 80)


def test_an_empty_allowlist_opens_nothing() -> None:
    allow = allowlist(Settings())
    assert not allow.opens_host("127.0.0.1", 80)
    assert not allow.opens_address(ip_address("127.0.0.1"))
