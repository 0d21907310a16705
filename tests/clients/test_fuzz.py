"""Schema-driven fuzzing: schemathesis over the gateway's own /openapi.json finds no 5xx.

Every operation gets a few valid and a few invalid requests, generated deterministically
(LMFORGE_FUZZ_EXAMPLES=200 digs deeper, by hand). A valid request must be served and an
invalid one refused with a 4xx: any 5xx is a bug.
The served description is narrowed first, so that the run is quick and leaves the index
intact: models are the installed tiny ones (or an unknown name), generation is capped at
a few tokens, and only a copy made by the run itself is created over or deleted.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis import strategies as st
from schemathesis import GenerationMode

from gateway.openapi import PATHS
from tests.clients.served import CHAT, EMBED, RERANK

EXAMPLES_PER_OPERATION = int(os.environ.get("LMFORGE_FUZZ_EXAMPLES", "10"))
MODELS = [CHAT, EMBED, RERANK, "no-such:model"]
COPY = "fuzz:copy"
LIMITS = {"max_tokens", "max_completion_tokens", "max_output_tokens", "num_predict"}
REQUIRED_LIMITS = {"max_tokens", "max_output_tokens", "num_predict"}
OPERATIONS = [(method.upper(), path) for path, methods in PATHS.items() for method in methods]
# A pull of any other name could start a real download (a catalog default comes from PyPI); negative mode makes up
# names that break the enum, so a pull whose model is a string must name one of MODELS.
PULLS = {("POST", "/lf/model/pull"), ("POST", "/api/pull")}


def narrow(node: Any) -> None:
    """Model names to MODELS and every token limit to 1..8, made required so nothing runs long."""
    if isinstance(node, list):
        for item in node:
            narrow(item)
        return
    if not isinstance(node, dict):
        return
    properties = node.get("properties", {})
    for name in {"model", "source"} & properties.keys():
        properties[name] = {"type": "string", "enum": MODELS}
    for name in LIMITS & properties.keys():
        properties[name] = {"type": "integer", "minimum": 1, "maximum": 8}
    required = (REQUIRED_LIMITS & properties.keys()) | ({"options"} & properties.keys())
    if required:
        node["required"] = sorted(set(node.get("required", [])) | required)
    for value in node.values():
        narrow(value)


def starts_a_pull(method: str, path: str, body: object) -> bool:
    """Whether the request could download a model: a pull naming, as a string, something outside MODELS."""
    model = body.get("model") if isinstance(body, dict) else None
    return (method, path) in PULLS and isinstance(model, str) and model not in MODELS


def body_properties(document: dict, path: str, method: str) -> dict:
    return document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["properties"]


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hypothesis keeps caches even without an example database: in a scratch dir, not the checkout."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture(scope="module")
def schema(own_lmforge) -> schemathesis.BaseSchema:  # type: ignore[no-untyped-def]
    served = httpx.get(own_lmforge.url + "/openapi.json")
    assert served.status_code == 200
    document = served.json()
    narrow(document)
    document["paths"]["/v1/models/{id}"]["get"]["parameters"][0]["schema"] = {"type": "string", "enum": MODELS}
    body_properties(document, "/api/copy", "post")["destination"] = {"type": "string", "enum": [COPY]}
    body_properties(document, "/api/delete", "delete")["model"] = {"type": "string", "enum": [COPY, "no:such"]}
    document["paths"]["/lf/model/delete/{name}"]["delete"]["parameters"][0]["schema"] = {
        "type": "string", "enum": [COPY, "no:such"]}
    body_properties(document, "/api/create", "post")["model"] = {"type": "string", "enum": [COPY]}
    # Unsanitised, so that a reported curl command replays the request exactly (max_tokens included).
    config = schemathesis.Config.from_dict({"output": {"sanitization": {"enabled": False}}})
    return schemathesis.openapi.from_dict(document, config=config)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_server_errors(schema: schemathesis.BaseSchema, own_lmforge, method: str, path: str) -> None:  # type: ignore[no-untyped-def]
    operation = schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    failures: list[str] = []

    # Every 5xx is collected, not just the first, so one run reports them all.
    @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def probe(case: schemathesis.Case) -> None:
        assume(not starts_a_pull(method, path, case.body))
        response = case.call(base_url=own_lmforge.url, timeout=60)
        if response.status_code >= 500:
            failures.append(f"{response.status_code} {response.text[:300]!r}\n  {case.as_curl_command()}")

    probe()
    assert not failures, "\n".join(failures)


USER = [{"role": "user", "content": "hi"}]
# Requests that once got a 5xx (found by this fuzz run): each must now be refused with a 4xx.
FOUND = {
    "keep_alive of a wrong type": ("/api/chat", {"model": CHAT, "messages": USER, "keep_alive": [1]}),
    "keep_alive an object": ("/api/embed", {"model": CHAT, "input": ["x"], "keep_alive": {"a": 1}}),
    "a tool that is not a function": ("/v1/chat/completions", {
        "model": CHAT, "messages": USER, "max_tokens": 1, "tools": [{"type": "x", "function": {"name": "f"}}]}),
    "a message name that is not a string": ("/v1/chat/completions", {
        "model": CHAT, "messages": [{"role": "user", "content": "hi", "name": 5}], "max_tokens": 1}),
}


@pytest.mark.parametrize("case", FOUND)
def test_requests_that_once_failed_are_refused(own_lmforge, case: str) -> None:  # type: ignore[no-untyped-def]
    path, body = FOUND[case]
    code, reply = own_lmforge.post(path, body)
    assert 400 <= code < 500, reply
