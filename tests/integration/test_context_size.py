"""num_ctx against a real manager and llama-server: an engine is reloaded only for a larger context, and says why.

Requests ask through the manager client, as the gateway's data plane does with an Ollama request's
options.num_ctx, then chat with the engine they leased.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from catalog.gguf_info import read_gguf_info
from manager.client import ManagerClient
from manager.config import Paths
from manager.protocol import PeerRole
from tests.support.instance import Instance

MODEL = "tiny:chat"
DEFAULT_CTX = 8192  # LMForge's llama_cpp.ctx_size default
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


async def chat(client: ManagerClient, num_ctx: int) -> int:
    """One chat on an engine leased with `num_ctx`; the engine's status."""
    async with client.lease(model=MODEL, num_ctx=num_ctx, timeout=120) as held:
        async with aiohttp.ClientSession() as http:
            async with http.post(held.reply.base_url + "/v1/chat/completions", json=CHAT) as resp:
                return resp.status


async def test_num_ctx_reloads_the_engine_only_for_a_larger_context(make_instance, models_dir: Path) -> None:
    trained = read_gguf_info(str(models_dir / "chat.gguf")).context_length
    assert trained > 12000 > 10000 > DEFAULT_CTX  # what the asks below rely on
    inst: Instance = make_instance("", {MODEL: models_dir / "chat.gguf"}).start()
    code, body = inst.post("/lf/model/switch", {"model": MODEL, "num_ctx": 10000})
    assert code == 200 and body["slot"]["ctx_size"] == 10000, body
    first = body["slot"]["pid"]
    client = ManagerClient(Paths(inst.home), PeerRole.TOOL)
    await client.start()
    try:
        assert await chat(client, num_ctx=4096) == 200
        assert await chat(client, num_ctx=10000) == 200
        slot = inst.slot(MODEL)
        assert slot["pid"] == first and slot["load_reason"] == "a request for it"  # served as it was

        assert await chat(client, num_ctx=12000) == 200
        slot = inst.slot(MODEL)
        assert slot["pid"] != first and slot["ctx_size"] == 12000
        assert slot["load_reason"] == "context 10000 → 12000 asked by a request"
        second = slot["pid"]

        assert await chat(client, num_ctx=10**6) == 200  # more than it was trained on: capped
        slot = inst.slot(MODEL)
        assert slot["pid"] != second and slot["ctx_size"] == trained
        third = slot["pid"]
        assert await chat(client, num_ctx=10**6) == 200 and await chat(client, num_ctx=0) == 200
        assert inst.slot(MODEL)["pid"] == third
    finally:
        await client.close()
    assert "reloading tiny:chat: context 10000 → 12000 asked by a request" in inst.log("manager")
    code, body = inst.post("/lf/model/switch", {"model": MODEL, "num_ctx": -5})
    assert code == 400 and "num_ctx" in body["error"]["message"], body
