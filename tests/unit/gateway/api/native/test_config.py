"""Who may change which keys over PATCH /lf/config, beyond the admin access of the route itself."""

from __future__ import annotations

import ipaddress

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.api.native.config import check_access
from gateway.errors import ApiError
from gateway.keys import LIVE
from gateway.live import LiveSettings
from gateway.middleware.auth import CALLER_KEY, PEER, Access
from gateway.middleware.peers import Peer
from manager.config import Settings
from manager.config_file import nested

LAN_ADMIN = Peer(ipaddress.ip_address("192.168.1.20"), trusted=False)
LOOPBACK = Peer(ipaddress.ip_address("127.0.0.1"), trusted=True)


def request(peer: Peer, key: tuple[Access, str] | None, settings: Settings) -> web.Request:
    app = web.Application()
    app[LIVE] = LiveSettings(settings)
    req = make_mocked_request("PATCH", "/lf/config", app=app)
    req[PEER] = peer
    if key is not None:
        req[CALLER_KEY] = key
    return req


@pytest.mark.parametrize("change", [{"llama_cpp.server": "/tmp/x"}, {"llama_cpp": {"extra_args": ["--x"]}},
                                    {"tls_cert": "/etc/shadow", "tls_key": "/etc/shadow"}])
def test_a_remote_admin_cannot_name_a_program_or_file_on_the_machine(change: dict) -> None:
    with pytest.raises(ApiError) as refused:
        check_access(request(LAN_ADMIN, (Access.ADMIN, "api_key"), Settings(api_key="k" * 16)), nested(change))
    assert (refused.value.status, refused.value.code) == (403, "loopback_only")
    check_access(request(LOOPBACK, None, Settings()), nested(change))  # from this machine it may


def test_trust_needs_an_admin_key_from_loopback_too_and_says_how_when_none_is_configured() -> None:
    change = nested({"trusted_proxies": ["10.0.0.1/32"]})
    with pytest.raises(ApiError) as refused:
        check_access(request(LOOPBACK, None, Settings()), change)
    assert refused.value.code == "admin_key_required" and "lmforge config set" in refused.value.message
    with pytest.raises(ApiError) as refused:
        check_access(request(LOOPBACK, (Access.INFERENCE, "app"), Settings(api_key="k" * 16)), change)
    assert "'app' is scoped to inference" in refused.value.message
    check_access(request(LAN_ADMIN, (Access.ADMIN, "api_key"), Settings(api_key="k" * 16)), change)
    check_access(request(LOOPBACK, None, Settings()), nested({"keep_alive": "1m", "api_key": "***"}))
