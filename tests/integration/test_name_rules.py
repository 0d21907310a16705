"""Every route that takes a model name or a blob digest refuses one that could escape the store.

Traversal (`../`, an encoded `%2F`), NUL, CRLF and over-long names are each a 400
in the route's own dialect, and no error names a path outside the LMForge home.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest

from tests.support.instance import Instance, running_instance

BAD_NAMES = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "a\x00b", "a\r\nX-Injected: 1", "x" * 300, "/etc/passwd",
             "tiny:chat/../../../etc"]
CHAT = [{"role": "user", "content": "hi"}]

# (method, path, body with NAME where the name goes)
BODY_ROUTES = [
    ("POST", "/v1/chat/completions", {"model": "NAME", "messages": CHAT}),
    ("POST", "/v1/completions", {"model": "NAME", "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "NAME", "input": "hi"}),
    ("POST", "/v1/responses", {"model": "NAME", "input": "hi"}),
    ("POST", "/v1/rerank", {"model": "NAME", "query": "q", "documents": ["d"]}),
    ("POST", "/v1/messages", {"model": "NAME", "max_tokens": 4, "messages": CHAT}),
    ("POST", "/v1/messages/count_tokens", {"model": "NAME", "messages": CHAT}),
    ("POST", "/api/chat", {"model": "NAME", "messages": CHAT}),
    ("POST", "/api/generate", {"model": "NAME", "prompt": "hi"}),
    ("POST", "/api/embed", {"model": "NAME", "input": "hi"}),
    ("POST", "/api/embeddings", {"model": "NAME", "prompt": "hi"}),
    ("POST", "/api/show", {"model": "NAME"}),
    ("DELETE", "/api/delete", {"model": "NAME"}),
    ("POST", "/api/copy", {"source": "tiny:chat", "destination": "NAME"}),
    ("POST", "/api/copy", {"source": "NAME", "destination": "copied"}),
    ("POST", "/api/create", {"model": "NAME", "from": "tiny:chat"}),
    ("POST", "/api/create", {"model": "created", "from": "NAME", "stream": False}),
    ("POST", "/lf/model/switch", {"model": "NAME"}),
    ("POST", "/lf/model/unload", {"model": "NAME"}),
    ("POST", "/lf/model/import", {"path": "/nonexistent/model.gguf", "name": "NAME"}),
]
PATH_ROUTES = [("GET", "/v1/models/NAME"), ("DELETE", "/lf/model/delete/NAME")]
BAD_DIGESTS = ["sha256:..%2F..%2Fetc%2Fpasswd", "sha256:" + "0" * 64 + "%00", "sha256:" + "0" * 63 + "%2F",
               "..%2F..%2Fmodels.json", "sha256:" + "0" * 64 + "%0D%0A"]


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    with running_instance(tmp_path_factory.mktemp("names") / "home", llama_server,
                          {"tiny:chat": models_dir / "chat.gguf"}) as inst:
        yield inst


def message_of(path: str, body: object) -> str:
    """The error's message, checking the body is in the route's own format."""
    assert isinstance(body, dict), body
    if path.startswith("/api/"):
        assert set(body) == {"error"}, body
        return body["error"]
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
        return body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error", body
    return body["error"]["message"]


def assert_refused(inst: Instance, method: str, path: str, body: object | None, shown_path: str) -> None:
    code, answer = inst.request(method, path, body)
    assert code == 400, (path, body, answer)
    message = message_of(shown_path, answer)
    assert "invalid model name" in message
    outside = message.replace(str(inst.home), "<home>")
    assert str(inst.home.parent) not in outside  # no path outside the LMForge home


def fill(value: object, name: str) -> object:
    if isinstance(value, dict):
        return {k: fill(v, name) for k, v in value.items()}
    return name if value == "NAME" else value


@pytest.mark.parametrize(("method", "path", "body"), BODY_ROUTES,
                         ids=[f"{m} {p} {sorted(b)}" for m, p, b in BODY_ROUTES])
def test_a_bad_name_in_a_body_is_a_400_in_the_route_dialect(inst: Instance, method: str, path: str,
                                                             body: dict) -> None:
    for name in BAD_NAMES:
        assert_refused(inst, method, path, fill(body, name), path)


@pytest.mark.parametrize(("method", "path"), PATH_ROUTES)
def test_a_bad_name_in_a_path_is_a_400(inst: Instance, method: str, path: str) -> None:
    for name in BAD_NAMES:
        assert_refused(inst, method, path.replace("NAME", quote(name, safe="")), None, path)


@pytest.mark.parametrize(("method", "path"), PATH_ROUTES)
def test_a_raw_dot_dot_in_a_path_never_reaches_a_model(inst: Instance, method: str, path: str) -> None:
    code, answer = inst.request(method, path.replace("NAME", "../../../etc/passwd"))
    assert code in (400, 404) and "error" in answer  # the URL is normalised before routing, or refused


@pytest.mark.parametrize("method", ["HEAD", "POST"])
def test_a_bad_blob_digest_is_a_400(inst: Instance, method: str) -> None:
    for digest in BAD_DIGESTS:
        code, answer = inst.request(method, f"/api/blobs/{digest}", raw=b"x" if method == "POST" else None)
        assert code == 400, (digest, answer)
        if method == "POST":
            assert "invalid digest" in message_of("/api/blobs", answer)
    assert not any((inst.home / "blobs").glob("*"))  # nothing written, there or anywhere its name pointed


def test_names_with_slashes_and_tags_are_still_accepted(inst: Instance) -> None:
    """The rule refuses escapes, not the names models have: hf.co/org/repo:Q4_K_M is one name."""
    assert inst.post("/api/copy", {"source": "tiny:chat", "destination": "hf.co/org/repo:Q4_K_M"})[0] == 200
    code, model = inst.get("/v1/models/hf.co/org/repo:Q4_K_M")
    assert code == 200 and model["id"] == "hf.co/org/repo:Q4_K_M"
    assert inst.request("DELETE", "/lf/model/delete/hf.co/org/repo:Q4_K_M")[0] == 200
    assert inst.get("/v1/models/tiny:chat")[0] == 200  # the source is untouched
