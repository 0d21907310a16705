"""gateway/request_log.py: request ids, the ring of records, and the masking of failed bodies."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.dataplane.model import Usage
from gateway.request_log import RequestLog, RequestRecord, dialect_of_route, new_id, redacted_body


@pytest.mark.parametrize("given, kept", [
    ("req-1", True), ("a" * 64, True), ("chatcmpl:42.x_y", True),
    ("", False), ("a" * 65, False), ("bad id", False), ("-leading", False), ("x\u0660", False), ("a/b", False),
])
def test_a_client_id_is_kept_only_when_it_is_a_plain_token(given: str, kept: bool) -> None:
    request = make_mocked_request("GET", "/", headers={"X-Request-Id": given} if given else {})
    assert (new_id(request) == given) is kept


def test_the_log_keeps_the_last_n_newest_first_and_filters_by_model() -> None:
    log = RequestLog(3)
    for i in range(5):
        record = RequestRecord(f"r{i}", "POST", "/v1/chat/completions", "openai")
        record.model = "a" if i % 2 else "b"
        log.add(record)
    assert [r.id for r in log.recent(10)] == ["r4", "r3", "r2"]
    assert [r.id for r in log.recent(10, model="a")] == ["r3"]
    log.resize(2)
    assert [r.id for r in log.recent(10)] == ["r4", "r3"]


def test_tokens_per_second_come_from_the_engines_own_timings() -> None:
    record = RequestRecord("r", "POST", "/api/chat", "ollama")
    record.usage(Usage(prompt_tokens=7, completion_tokens=50, predicted_ms=500.0))
    assert (record.prompt_tokens, record.completion_tokens, record.tokens_per_s) == (7, 50, 100.0)
    record.usage(Usage(prompt_tokens=7, completion_tokens=0))
    assert record.tokens_per_s == 100.0  # nothing generated: nothing to say


def test_a_failed_body_is_kept_with_its_secrets_masked() -> None:
    body = {"model": "a", "api_key": "sk-1234", "nested": [{"Authorization": "Bearer abc"}, {"token": ""}],
            "messages": [{"role": "user", "content": "my key is Bearer sk-live-999"}]}
    kept = json.loads(redacted_body(json.dumps(body).encode()))
    assert kept["api_key"] == "***" and kept["nested"][0]["Authorization"] == "***"
    assert kept["nested"][1]["token"] == ""  # nothing there to hide
    assert "sk-live-999" not in kept["messages"][0]["content"]
    assert redacted_body(b"x" * 10_000).startswith("x") and len(redacted_body(b"x" * 10_000)) == 4096
    assert "abc" not in redacted_body(b"not json, Authorization: Bearer abc")


@pytest.mark.parametrize("route, dialect", [
    ("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic"), ("/v1/messages/count_tokens", "anthropic"),
    ("/api/chat", "ollama"), ("/rerank", "openai"), ("/lf/model/switch", "native"), ("/lf/status", None), ("/lf/model/list", None),
    ("/metrics", None), ("unmatched", None), ("/v1/models/{id}", "openai"),
])
def test_dialects_by_route(route: str, dialect: str | None) -> None:
    assert dialect_of_route(route) == dialect
