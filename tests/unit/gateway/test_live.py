"""LiveSettings: the gateway's middlewares follow a change of their keys at once, with views built once per change."""

from __future__ import annotations

from typing import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.keys import LIVE, SETTINGS
from gateway.live import LiveSettings
from gateway.middleware.auth import setup_auth
from gateway.middleware.errors import setup_errors
from gateway.middleware.origin import setup_origin
from manager.config import Settings

KEY = "admin-key-0123456789"


async def models(request: web.Request) -> web.Response:
    return web.json_response({"data": []})


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = web.Application()
    app[SETTINGS] = Settings(api_key=KEY)
    setup_errors(app)
    setup_origin(app)
    setup_auth(app)
    app.router.add_get("/v1/models", models)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def test_trusted_networks_and_keys_apply_to_the_next_request(client: TestClient) -> None:
    live = client.app[LIVE]
    assert (await client.get("/v1/models")).status == 200  # loopback is trusted by default
    assert live.apply(Settings(api_key=KEY, trusted_networks=["10.0.0.0/8"])) == ["trusted_networks"]
    assert (await client.get("/v1/models")).status == 401
    assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})).status == 200
    live.apply(Settings(api_key="another-key-0123456789", trusted_networks=["10.0.0.0/8"]))
    assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})).status == 401


async def test_allowed_origins_apply_to_the_next_request(client: TestClient) -> None:
    page = {"Origin": "https://chat.example"}
    assert (await client.get("/v1/models", headers=page)).status == 403
    client.app[LIVE].apply(Settings(api_key=KEY, allowed_origins=["https://chat.example"]))
    assert (await client.get("/v1/models", headers=page)).status == 200


def test_the_gateway_takes_its_own_keys_only_and_rebuilds_views_once_per_change() -> None:
    live = LiveSettings(Settings())
    built: list[Settings] = []

    def count(settings: Settings) -> int:
        built.append(settings)
        return len(built)

    assert live.view(count) == live.view(count) == 1
    assert live.apply(Settings(port=1, keep_alive="1m", max_loaded_models=3)) == []  # none of them is the gateway's
    assert live.view(count) == 1 and live.current.port == live.started.port
    assert live.apply(Settings(embed_batch_size=7, body_timeout_s=5.0)) == ["body_timeout_s", "embed_batch_size"]
    assert live.view(count) == 2 and live.current.embed_batch_size == 7 and live.started.embed_batch_size == 32
