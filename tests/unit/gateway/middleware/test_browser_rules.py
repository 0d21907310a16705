"""The Host and Origin rules that keep web pages (drive-by and DNS-rebinding) out."""

from __future__ import annotations

import socket

import pytest

from gateway.middleware.host import HostRule, host_name
from gateway.middleware.origin import OriginRule

OWN = "http://127.0.0.1:11430"


@pytest.mark.parametrize("header,name", [
    ("127.0.0.1:11430", "127.0.0.1"), ("[::1]:11430", "::1"), ("LocalHost", "localhost"),
    ("evil.example.:80", "evil.example"), ("::1", "::1"),
])
def test_host_name_drops_the_port(header: str, name: str) -> None:
    assert host_name(header) == name


def test_the_host_rule_accepts_this_machine_and_refuses_a_rebound_domain() -> None:
    rule = HostRule("0.0.0.0", ["gpubox.lan", "*.corp.example"])
    for name in ("localhost", "app.localhost", "127.0.0.1", "127.9.9.9", "::1", "0.0.0.0",
                 socket.gethostname().lower(), "gpubox.lan", "a.corp.example"):
        assert rule.allows(name, interface="10.0.0.2"), name
    assert rule.allows("10.0.0.2", interface="10.0.0.2")  # the address the client connected to
    for name in ("evil.example", "10.0.0.3", "corp.example.evil", "localhost.evil.example", ""):
        assert not rule.allows(name, interface="10.0.0.2"), name
    assert HostRule("127.0.0.1", ["*"]).allows("anything.example", None)


def test_the_origin_rule_allows_local_pages_and_apps_but_not_the_web_or_null() -> None:
    rule = OriginRule([])
    for origin in ("http://localhost:3000", "https://localhost", "http://127.0.0.1:8080", "http://[::1]:5173",
                   "http://chat.localhost", "app://-", "tauri://localhost", "vscode-webview://abc", OWN):
        assert rule.allows(origin, own=OWN), origin
    for origin in ("https://evil.example", "null", "http://localhost.evil.example", "http://10.0.0.5:3000",
                   "chrome-extension://abcdef", "file://", "http://127.0.0.1.evil.example"):
        assert not rule.allows(origin, own=OWN), origin


def test_allowed_origins_add_exact_origins_whole_schemes_or_anything() -> None:
    rule = OriginRule(["https://webui.example/", "chrome-extension://*"])
    assert rule.allows("https://webui.example", own=OWN)
    assert rule.allows("chrome-extension://abcdef", own=OWN)
    assert not rule.allows("https://webui.example.evil", own=OWN)
    assert OriginRule(["*"]).allows("https://anyone.example", own=OWN)
