"""A web page open in the user's browser is not a way in: drive-by requests, DNS rebinding and CORS.

What was seen before: a `text/plain` POST from `Origin: https://evil.example`
to /lf/model/unload unloaded the model, and a chat sent with
`Host: evil.example` (a rebound domain) was answered.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.instance import Instance, running_instance

CHAT = {"model": "tiny:chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
FRIEND = "https://webui.example"


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    with running_instance(tmp_path_factory.mktemp("browser") / "home", llama_server,
                          {"tiny:chat": models_dir / "chat.gguf"}, f'allowed_origins = ["{FRIEND}"]\n') as inst:
        code, body = inst.post("/lf/model/switch", {"model": "tiny:chat", "keep_alive": -1})
        assert code == 200, body
        yield inst


def call(inst: Instance, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, object]:
    """One raw request: the Host, Origin and Content-Type are exactly what the test says."""
    conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=60)
    headers = dict(headers or {})
    conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    try:
        return resp.status, resp.headers, json.loads(data) if data else None
    except ValueError:
        return resp.status, resp.headers, data.decode(errors="replace")


def test_a_drive_by_text_plain_post_from_a_foreign_page_is_refused_and_unloads_nothing(inst: Instance) -> None:
    status, headers, body = call(inst, "POST", "/lf/model/unload", b'{"model": "tiny:chat"}',
                                 {"Origin": "https://evil.example", "Content-Type": "text/plain"})
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"  # type: ignore[index]
    assert "Access-Control-Allow-Origin" not in headers
    assert inst.slot("tiny:chat")["state"] == "ready"  # type: ignore[index]
    for method, path, payload in (("GET", "/api/tags", None), ("POST", "/api/chat", json.dumps(CHAT).encode())):
        status, _, body = call(inst, method, path, payload, {"Origin": "https://evil.example"})
        assert status == 403 and "allowed_origins" in body["error"]  # type: ignore[index]  # Ollama's format
    status, _, _ = call(inst, "GET", "/v1/models", None, {"Origin": "null"})  # a sandboxed frame
    assert status == 403


def test_a_rebound_host_is_refused_and_this_machine_s_names_are_not(inst: Instance) -> None:
    status, _, body = call(inst, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(),
                           {"Host": "evil.example", "Content-Type": "application/json"})
    assert status == 403 and body["error"]["code"] == "host_not_allowed"  # type: ignore[index]
    for host in (f"localhost:{inst.port}", f"127.0.0.1:{inst.port}", "[::1]"):
        status, _, body = call(inst, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(),
                               {"Host": host, "Content-Type": "application/json"})
        assert status == 200, (host, body)


def test_preflights_are_answered_only_for_allowed_origins(inst: Instance) -> None:
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    status, headers, _ = call(inst, "OPTIONS", "/v1/chat/completions", None, {"Origin": "https://evil.example", **ask})
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    for origin in ("http://localhost:3000", FRIEND, "tauri://localhost"):
        status, headers, _ = call(inst, "OPTIONS", "/v1/chat/completions", None, {"Origin": origin, **ask})
        assert status == 204, origin
        assert headers["Access-Control-Allow-Origin"] == origin
        assert "POST" in headers["Access-Control-Allow-Methods"]
        assert headers["Access-Control-Allow-Headers"] == "authorization,content-type"


def test_an_allowed_page_can_read_answers_and_errors_alike(inst: Instance) -> None:
    status, headers, _ = call(inst, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(),
                              {"Origin": FRIEND, "Content-Type": "application/json"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == FRIEND and "Origin" in headers["Vary"]
    status, headers, body = call(inst, "POST", "/v1/chat/completions", json.dumps({**CHAT, "model": "nope"}).encode(),
                                 {"Origin": FRIEND, "Content-Type": "application/json"})
    assert status == 404 and headers["Access-Control-Allow-Origin"] == FRIEND
    own = f"http://127.0.0.1:{inst.port}"  # the dashboard's own origin
    assert call(inst, "GET", "/lf/status", None, {"Origin": own})[0] == 200


def test_requests_without_an_origin_work_whatever_their_content_type(inst: Instance) -> None:
    """`curl -d` sends application/x-www-form-urlencoded; it must keep working, as it does with Ollama."""
    for path in ("/v1/chat/completions", "/api/chat"):
        body = {**CHAT, "stream": False}
        status, _, reply = call(inst, "POST", path, json.dumps(body).encode(),
                                {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200, (path, reply)
