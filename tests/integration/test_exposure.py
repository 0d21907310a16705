"""LMForge bound to every interface, seen from another machine (a network namespace over a veth pair).

Keys, scopes, trusted proxies, what /health says to strangers, and that only the
gateway's port is reachable: engines and ZeroMQ stay on loopback and ipc://.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from tests.support import netns
from tests.support.instance import Instance, running_instance

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

ADMIN, INFERENCE = "admin-key-0123456789", "inference-key-0123456789"
CONFIG = f"""
host = "0.0.0.0"
api_key = "{ADMIN}"
trusted_proxies = ["{netns.PEER_IP2}/32"]
[[api_keys]]
key = "{INFERENCE}"
scope = "inference"
name = "webui"
"""
CHAT = {"model": "tiny:chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def lan() -> Iterator[netns.Peer]:
    with netns.lan_peer() as peer:
        yield peer


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path,
         lan: netns.Peer) -> Iterator[Instance]:
    with running_instance(tmp_path_factory.mktemp("exposed") / "home", llama_server,
                          {"tiny:chat": models_dir / "chat.gguf"}, CONFIG) as inst:
        code, body = inst.post("/lf/model/switch", {"model": "tiny:chat", "keep_alive": -1})
        assert code == 200, body
        yield inst


def test_a_lan_peer_needs_a_key_a_bad_one_is_refused_and_a_good_one_admitted(inst: Instance, lan: netns.Peer) -> None:
    missing = lan.request("GET", inst.port, "/v1/models")
    assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert missing.json()["error"]["code"] == "missing_api_key"  # type: ignore[index]
    bad = lan.request("POST", inst.port, "/api/chat", body=CHAT, headers=bearer("not-the-key-at-all"))
    assert bad.status == 401 and "not valid" in bad.json()["error"]  # type: ignore[index]  # Ollama's format
    for key in (INFERENCE, ADMIN):
        reply = lan.request("POST", inst.port, "/v1/chat/completions", body=CHAT, headers=bearer(key))
        assert reply.status == 200, reply.body
    anthropic = lan.request("POST", inst.port, "/v1/messages", headers={"x-api-key": INFERENCE},
                            body={"model": "tiny:chat", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert anthropic.status == 200, anthropic.body


def test_an_inference_key_gets_403_on_admin_and_status_routes_and_nothing_changes(
        inst: Instance, lan: netns.Peer) -> None:
    for method, path, body in (("POST", "/lf/model/unload", {"model": "tiny:chat"}), ("GET", "/lf/status", None),
                               ("DELETE", "/api/delete", {"model": "tiny:chat"})):
        reply = lan.request(method, inst.port, path, body=body, headers=bearer(INFERENCE))
        assert reply.status == 403, (path, reply.body)
    assert inst.slot("tiny:chat")["state"] == "ready"  # type: ignore[index]
    assert lan.request("GET", inst.port, "/lf/status", headers=bearer(ADMIN)).status == 200
    # Naming files on the LMForge machine stays local even with the admin key.
    imported = lan.request("POST", inst.port, "/lf/model/import", headers=bearer(ADMIN),
                           body={"path": "/etc/passwd", "name": "x"})
    assert imported.status == 403 and imported.json()["error"]["code"] == "loopback_only"  # type: ignore[index]
    shutdown = lan.request("POST", inst.port, "/lf/shutdown", headers=bearer(ADMIN))
    assert shutdown.status == 403 and shutdown.json()["error"]["code"] == "loopback_only"  # type: ignore[index]


def test_a_spoofed_x_forwarded_for_is_ignored_unless_it_comes_from_a_trusted_proxy(
        inst: Instance, lan: netns.Peer) -> None:
    spoofed = lan.request("GET", inst.port, "/v1/models", headers={"X-Forwarded-For": "127.0.0.1"})
    assert spoofed.status == 401
    via_proxy = lan.request("GET", inst.port, "/v1/models", headers={"X-Forwarded-For": "127.0.0.1"},
                            source=netns.PEER_IP2)
    assert via_proxy.status == 200, via_proxy.body
    # The proxy forwards for a stranger, whatever the stranger prepended.
    stranger = lan.request("GET", inst.port, "/v1/models", headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.7"},
                           source=netns.PEER_IP2)
    assert stranger.status == 401


def test_health_tells_strangers_up_or_down_only(inst: Instance, lan: netns.Peer) -> None:
    outside = lan.request("GET", inst.port, "/health")
    assert outside.status == 200 and outside.json() == {"status": "ok"}
    code, inside = inst.get("/health")
    assert code == 200 and "version" in inside  # type: ignore[operator]


def test_the_host_header_must_name_this_server_from_the_lan_too(inst: Instance, lan: netns.Peer) -> None:
    # http.client sends Host: 10.231.0.1:<port>, the address the peer connected to: accepted above.
    rebound = lan.request("GET", inst.port, "/v1/models", headers={"Host": "evil.example", **bearer(INFERENCE)})
    assert rebound.status == 403


def test_only_the_gateway_port_leaves_loopback(inst: Instance, lan: netns.Peer) -> None:
    engine_port = inst.slot("tiny:chat")["port"]  # type: ignore[index]
    assert lan.request("GET", engine_port, "/health", timeout=5).status == 0  # refused: not listening out there
    pids = [proc.pid for proc in inst.procs.values()] + inst.engine_pids()
    listening = [conn for conn in psutil.net_connections("inet") if conn.status == psutil.CONN_LISTEN
                 and conn.pid in pids]
    exposed = {(conn.laddr.ip, conn.laddr.port) for conn in listening if not _loopback(conn.laddr.ip)}
    assert exposed == {("0.0.0.0", inst.port)}
    assert any(conn.laddr.port == engine_port for conn in listening)  # the engine listens, on loopback


def _loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


def test_a_non_loopback_bind_without_a_key_refuses_to_start_and_says_why(tmp_path: Path, llama_server: str) -> None:
    inst = Instance(tmp_path / "home", llama_server, 'host = "0.0.0.0"\n')
    done = inst.lmforge("start")
    assert done.returncode != 0
    assert "allow_unauthenticated" in done.stderr + done.stdout


def test_the_cli_sends_the_key_from_config_or_the_environment(tmp_path: Path, llama_server: str, models_dir: Path,
                                                               lan: netns.Peer) -> None:
    """Bound to the LAN address only, this machine's CLI connects from that address, not loopback: it needs the
    key (the address is not in trusted_networks), and is still on this machine, so it may import a file by path;
    a LAN peer with the same key may not."""
    config = f'host = "{netns.HOST_IP}"\napi_key = "{ADMIN}"\n'
    with running_instance(tmp_path / "home", llama_server, {}, config, address=netns.HOST_IP) as inst:
        from_config = inst.lmforge("ps", "--json")
        assert from_config.returncode == 0, from_config.stderr
        inst.env["LMFORGE_API_KEY"] = "wrong-key-0123456789"
        wrong = inst.lmforge("ps", "--json")
        assert wrong.returncode == 1 and "not valid" in wrong.stderr
        inst.env["LMFORGE_API_KEY"] = ADMIN
        assert inst.lmforge("ps", "--json").returncode == 0
        imported = inst.lmforge("import", str(models_dir / "chat.gguf"), "--name", "x")
        assert imported.returncode == 0, imported.stderr
        assert [m["name"] for m in json.loads(inst.lmforge("list", "--json").stdout)] == ["x"]
        refused = lan.request("POST", inst.port, "/lf/model/import", headers=bearer(ADMIN),
                              body={"path": str(models_dir / "chat.gguf"), "name": "y"})
        assert refused.status == 403 and refused.json()["error"]["code"] == "loopback_only"  # type: ignore[index]


def test_on_a_dual_stack_bind_ipv4_clients_match_their_ipv4_networks(tmp_path: Path, llama_server: str,
                                                                       lan: netns.Peer) -> None:
    """Bound to `::`, an IPv4 client is seen as ::ffff:a.b.c.d; it must still be loopback (or a stranger)."""
    with running_instance(tmp_path / "home", llama_server, {}, f'host = "::"\napi_key = "{ADMIN}"\n') as inst:
        code, body = inst.post("/lf/model/unload", {})  # from 127.0.0.1, seen as ::ffff:127.0.0.1: no key needed
        assert code == 200, body
        stranger = lan.request("POST", inst.port, "/lf/model/unload", body={})
        assert stranger.status == 401
