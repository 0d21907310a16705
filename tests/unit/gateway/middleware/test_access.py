"""The access decisions: which route needs what, what networks and keys grant, and who is the caller."""

from __future__ import annotations

import ipaddress

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.errors import ApiError
from gateway.middleware.auth import PEER, Access, Keys, access_of, decide, require_local
from gateway.middleware.peers import Peer, networks, parse_address, within
from manager.config import ApiKey, Settings

LOOPBACK = Peer(ipaddress.ip_address("127.0.0.1"), trusted=True)
LAN_TRUSTED = Peer(ipaddress.ip_address("192.168.1.20"), trusted=True)
STRANGER = Peer(ipaddress.ip_address("203.0.113.9"), trusted=False)
ADMIN_KEY, INFERENCE_KEY = (Access.ADMIN, "api_key"), (Access.INFERENCE, "app")


@pytest.mark.parametrize("path,access", [
    ("/health", Access.PUBLIC),
    ("/v1/chat/completions", Access.INFERENCE), ("/v1/models/hf.co/org/m:Q4", Access.INFERENCE),
    ("/api/generate", Access.INFERENCE), ("/api/show", Access.INFERENCE), ("/v1/messages", Access.INFERENCE),
    ("/lf/status", Access.MONITOR), ("/lf/status/stream", Access.MONITOR), ("/metrics", Access.MONITOR),
    ("/lf/model/unload", Access.ADMIN), ("/api/delete", Access.ADMIN), ("/api/create", Access.ADMIN),
    ("/api/blobs/sha256:00", Access.ADMIN), ("/lf/config", Access.ADMIN), ("/lf/model/pull", Access.ADMIN),
    ("/lf/shutdown", Access.LOCAL), ("/lf/model/import", Access.LOCAL),
    ("/v1/chat/completions/../../lf/model/unload", Access.ADMIN), ("/no/such/route", Access.ADMIN),
])
def test_every_route_has_one_access_class_and_unknown_routes_are_admin(path: str, access: Access) -> None:
    assert access_of(path) == access


def test_loopback_needs_no_key_for_anything_but_a_lan_peer_in_trusted_networks_only_for_inference_and_status() -> None:
    for access in (Access.INFERENCE, Access.MONITOR, Access.ADMIN, Access.LOCAL):
        assert decide(access, LOOPBACK, None, presented=False) is None
    assert decide(Access.INFERENCE, LAN_TRUSTED, None, presented=False) is None
    assert decide(Access.MONITOR, LAN_TRUSTED, None, presented=False) is None
    refusal = decide(Access.ADMIN, LAN_TRUSTED, None, presented=False)
    assert refusal is not None and refusal.status == 401 and refusal.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_stranger_needs_a_key_and_an_inference_key_is_refused_admin_routes_with_403() -> None:
    missing = decide(Access.INFERENCE, STRANGER, None, presented=False)
    assert missing is not None and (missing.status, missing.code) == (401, "missing_api_key")
    bad = decide(Access.INFERENCE, STRANGER, None, presented=True)
    assert bad is not None and (bad.status, bad.code) == (401, "invalid_api_key")
    assert decide(Access.INFERENCE, STRANGER, INFERENCE_KEY, presented=True) is None
    for access in (Access.MONITOR, Access.ADMIN):
        refusal = decide(access, STRANGER, INFERENCE_KEY, presented=True)
        assert refusal is not None and (refusal.status, refusal.code) == (403, "insufficient_scope")
        assert decide(access, STRANGER, ADMIN_KEY, presented=True) is None


def test_health_is_public_and_shutdown_is_loopback_only_whatever_the_key() -> None:
    assert decide(Access.PUBLIC, STRANGER, None, presented=False) is None
    for peer in (STRANGER, LAN_TRUSTED):
        refusal = decide(Access.LOCAL, peer, ADMIN_KEY, presented=True)
        assert refusal is not None and (refusal.status, refusal.code) == (403, "loopback_only")


def test_a_caller_from_the_address_the_gateway_is_bound_to_is_on_this_machine() -> None:
    """Bound to 192.168.1.5 alone, the gateway sees this machine's own CLI come from 192.168.1.5, not loopback."""
    bound = ipaddress.ip_address("192.168.1.5")
    this_machine = Peer(bound, trusted=False, interface=bound)
    assert this_machine.local and decide(Access.LOCAL, this_machine, ADMIN_KEY, presented=True) is None
    neighbour = Peer(ipaddress.ip_address("192.168.1.6"), trusted=False, interface=bound)
    refusal = decide(Access.LOCAL, neighbour, ADMIN_KEY, presented=True)
    assert not neighbour.local and refusal is not None and refusal.code == "loopback_only"
    # On this machine, it still needs the key unless its address is in trusted_networks.
    assert decide(Access.LOCAL, this_machine, None, presented=False) is not None
    assert decide(Access.ADMIN, Peer(bound, trusted=True, interface=bound), None, presented=False) is None


def request_from(remote: str | None, interface: str | None = None):  # type: ignore[no-untyped-def]
    """The request as the auth middleware leaves it: with the caller it worked out (socket or trusted proxy)."""
    request = make_mocked_request("POST", "/api/create")
    request[PEER] = Peer(parse_address(remote) if remote else None, trusted=True,
                         interface=parse_address(interface) if interface else None)
    return request


@pytest.mark.parametrize(("remote", "interface"), [("127.0.0.1", None), ("::1", None), ("::ffff:127.0.0.1", None),
                                                   ("192.168.1.5", "192.168.1.5")])
def test_a_caller_on_this_machine_may_import_by_path(remote: str, interface: str | None) -> None:
    require_local(request_from(remote, interface), "model import")


@pytest.mark.parametrize("remote", ["10.0.0.7", "192.168.1.20", "::2", None])
def test_any_other_caller_is_forbidden(remote: str | None) -> None:
    with pytest.raises(ApiError) as refused:
        require_local(request_from(remote, "192.168.1.5"), "model import")
    assert refused.value.status == 403 and "model import" in refused.value.message


def test_a_placeholder_key_from_a_trusted_network_is_ignored_not_refused() -> None:
    """Local apps send keys like "sk-no-key-required"; from a trusted network that must keep working."""
    assert decide(Access.INFERENCE, LAN_TRUSTED, None, presented=True) is None
    assert decide(Access.ADMIN, LOOPBACK, None, presented=True) is None


def test_with_no_trusted_networks_even_loopback_needs_a_key() -> None:
    untrusted_loopback = Peer(ipaddress.ip_address("127.0.0.1"), trusted=False)
    assert decide(Access.INFERENCE, untrusted_loopback, None, presented=False) is not None
    assert decide(Access.ADMIN, untrusted_loopback, ADMIN_KEY, presented=True) is None


def test_keys_match_by_digest_with_their_scope() -> None:
    keys = Keys(Settings(api_key="admin-key-123", api_keys=[ApiKey(key="inference-key-1", name="webui")]))
    assert keys.match("admin-key-123") == (Access.ADMIN, "api_key")
    assert keys.match("inference-key-1") == (Access.INFERENCE, "webui")
    assert keys.match("admin-key-12") is None and keys.match("") is None


def test_ipv4_mapped_peers_match_their_ipv4_networks() -> None:
    mapped = parse_address("::ffff:192.168.1.20")
    assert mapped == ipaddress.ip_address("192.168.1.20")
    assert within(mapped, networks(["192.168.1.0/24"]))
    assert not within(parse_address("10.0.0.1"), networks(["127.0.0.0/8", "::1/128"]))
    assert parse_address("not-an-address") is None
