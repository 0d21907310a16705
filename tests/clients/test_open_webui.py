"""Open WebUI in front of LMForge, as both its Ollama and its OpenAI connection (opt-in).

Open WebUI is a large install, so this runs only with LMFORGE_OPEN_WEBUI=1 and
`open-webui` on PATH (`pip install open-webui` in a venv of its own is fine). It starts
`open-webui serve` offline, signs up the first (admin) user, then lists models, chats,
streams and embeds through Open WebUI's own API.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.clients.served import CYCLE, EMBED, EMBED_DIMS, cycle_text
from tests.support.instance import free_port, wait_until

pytestmark = [
    pytest.mark.skipif(os.environ.get("LMFORGE_OPEN_WEBUI") != "1" or shutil.which("open-webui") is None,
                       reason="opt-in: set LMFORGE_OPEN_WEBUI=1 with open-webui installed"),
    pytest.mark.timeout(900),  # its first start migrates a database and builds caches
]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def webui(lmforge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """A running Open WebUI wired to LMForge, and an HTTP client signed in as its admin."""
    data: Path = tmp_path_factory.mktemp("open-webui")
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(data), "PORT": str(port), "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1",
           "OLLAMA_BASE_URL": lmforge.url, "OPENAI_API_BASE_URL": lmforge.url + "/v1", "OPENAI_API_KEY": "lmforge",
           "ENABLE_OLLAMA_API": "true", "ENABLE_OPENAI_API": "true",
           "RAG_EMBEDDING_ENGINE": "ollama", "RAG_EMBEDDING_MODEL": EMBED, "WEBUI_SECRET_KEY": "lmforge-tests"}
    log = open(data / "open-webui.log", "wb")
    proc = subprocess.Popen(["open-webui", "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), timeout=300, interval=1, what="open-webui /health")
        signup = httpx.post(url + "/api/v1/auths/signup",
                            json={"name": "admin", "email": "admin@example.com", "password": "lmforge-tests"})
        assert signup.status_code == 200, signup.text
        with httpx.Client(base_url=url, timeout=120,
                          headers={"Authorization": f"Bearer {signup.json()['token']}"}) as client:
            yield client
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_both_connections_list_lmforges_models(webui: httpx.Client) -> None:
    assert CYCLE in {m["model"] for m in webui.get("/ollama/api/tags").json()["models"]}
    assert CYCLE in {m["id"] for m in webui.get("/openai/models").json()["data"]}
    assert CYCLE in {m["id"] for m in webui.get("/api/models").json()["data"]}


def test_chat_and_stream(webui: httpx.Client) -> None:
    body = {"model": CYCLE, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    reply = webui.post("/api/chat/completions", json={**body, "stream": False})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == cycle_text(4)
    with webui.stream("POST", "/api/chat/completions", json={**body, "stream": True}) as stream:
        assert stream.status_code == 200
        assert any(line.startswith("data:") for line in stream.iter_lines())


def test_embed_through_the_ollama_connection(webui: httpx.Client) -> None:
    reply = webui.post("/ollama/api/embed", json={"model": EMBED, "input": ["first", "second"]})
    assert reply.status_code == 200, reply.text
    assert [len(v) for v in reply.json()["embeddings"]] == [EMBED_DIMS, EMBED_DIMS]
