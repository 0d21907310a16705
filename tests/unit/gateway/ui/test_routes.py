"""The dashboard's files: only the committed three are served, under a CSP that allows nothing inline, and they
ship in the package; the page itself never turns data into markup."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.middleware.auth import Access, access_of
from gateway.middleware.errors import setup_errors
from gateway.ui.routes import FILES, STATIC, setup_ui_routes

ROOT = Path(__file__).parents[4]


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = web.Application()
    setup_errors(app)
    setup_ui_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_the_page_is_served_at_ui_with_a_policy_that_allows_only_this_origin(client: TestClient) -> None:
    for path in ("/ui", "/ui/"):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == "text/html"
        assert await resp.read() == (STATIC / "index.html").read_bytes()
        csp = dict(part.strip().split(" ", 1) for part in resp.headers["Content-Security-Policy"].split(";"))
        assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
        assert all(csp[d] == "'self'" for d in ("script-src", "style-src", "connect-src"))
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_only_the_committed_files_are_served(client: TestClient) -> None:
    for name, content_type in FILES.items():
        resp = await client.get(f"/ui/{name}")
        assert resp.status == 200 and resp.content_type == content_type and resp.charset == "utf-8"
    for name in ("routes.py", "__init__.py", "..%2Froutes.py", "%2e%2e", "static", "index.htm", "dashboard.js.map"):
        resp = await client.get(f"/ui/{name}")
        assert resp.status == 404, name
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_an_unchanged_file_is_answered_304(client: TestClient) -> None:
    first = await client.get("/ui/dashboard.js")
    again = await client.get("/ui/dashboard.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["Cache-Control"] == "no-cache"


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] in ("script", "style") and data.strip():
            self.text_in.append(self.tags[-1][0])


def test_the_page_has_nothing_inline_and_loads_only_its_own_files() -> None:
    page = Tags()
    page.feed((STATIC / "index.html").read_text())
    assert page.text_in == []  # no inline script or style element
    assert not [tag for tag, attrs in page.tags if "style" in attrs or any(a.startswith("on") for a in attrs)]
    loaded = {attrs.get("src") or attrs.get("href") for tag, attrs in page.tags if tag in ("script", "link")}
    assert loaded == {"/ui/dashboard.js", "/ui/dashboard.css"}


def test_the_script_never_writes_markup() -> None:
    script = (STATIC / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert not re.search(r"https?://", script)  # nothing from the internet


def test_every_served_file_ships_in_the_package() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gateway.ui"]
    for name in FILES:
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns), name


def test_the_files_are_public_and_the_data_they_show_is_not() -> None:
    assert access_of("/ui") == access_of("/ui/") == access_of("/ui/{file}") == Access.PUBLIC
    assert access_of("/lf/status/stream") == Access.MONITOR
