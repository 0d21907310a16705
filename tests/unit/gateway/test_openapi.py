"""The served OpenAPI description: every route is in it, and its limits are the ones the routes check."""

from __future__ import annotations

from aiohttp import web

from gateway.api.anthropic.routes import setup_anthropic_routes
from gateway.api.native.routes import setup_native_routes
from gateway.api.ollama.routes import setup_ollama_routes
from gateway.api.openai.routes import setup_openai_routes
from gateway.dataplane.validate import OLLAMA_OPTIONS, OPENAI, Rule
from gateway.openapi import PATHS

# Not for clients: live event streams (no request to fuzz) and a loopback-only import of a local file path.
UNDESCRIBED = {("GET", "/lf/status/stream"), ("GET", "/lf/logs/{name}/stream"), ("POST", "/lf/model/import")}


def served() -> set[tuple[str, str]]:
    app = web.Application()
    for setup in (setup_native_routes, setup_openai_routes, setup_anthropic_routes, setup_ollama_routes):
        setup(app)
    return {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.resource is not None}


def test_every_route_is_described_with_its_methods() -> None:
    described = {(method.upper(), path) for path, methods in PATHS.items() for method in methods}
    # aiohttp answers HEAD for every GET; the description names HEAD where clients use it.
    assert {r for r in served() - UNDESCRIBED if r[0] != "HEAD"} == {r for r in described if r[0] != "HEAD"}
    assert {("HEAD", "/"), ("HEAD", "/api/blobs/{digest}")} <= described & served()


def body(path: str) -> dict:
    return PATHS[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]


def test_limits_come_from_the_rules_the_routes_check_with() -> None:
    assert OPENAI["n"] == Rule("int", 1, 16) and body("/v1/chat/completions")["n"] == {
        "type": "integer", "minimum": 1, "maximum": 16}
    assert body("/v1/completions")["logprobs"] == {"type": "integer", "minimum": 0, "maximum": 5}
    options = body("/api/chat")["options"]["properties"]
    assert set(options) == set(OLLAMA_OPTIONS)
    assert options["num_ctx"]["maximum"] == OLLAMA_OPTIONS["num_ctx"].hi
    assert body("/lf/model/switch")["num_ctx"]["minimum"] == 0  # 0: the model's default context
    assert {"text", "tool_choice", "parallel_tool_calls"} <= set(body("/v1/responses"))
