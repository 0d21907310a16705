"""The spine end to end: real manager, prober, downloader and gateway processes, real llama-server."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.support.instance import Instance, llama_servers_of, wait_until, wait_until_async

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
# The random "chat" model may sample end-of-text at any token: a test that counts tokens, reads
# a finish_reason or compares text asks the "cycle" model, which never ends on its own.
CYCLE = "owner/tiny:cycle"


@pytest.fixture
def inst(make_instance, models_dir: Path) -> Instance:
    models = {"tiny:chat": models_dir / "chat.gguf", "tiny:embed": models_dir / "embed.gguf",
              CYCLE: models_dir / "cycle.gguf", "tiny:broken": models_dir / "broken.gguf"}
    return make_instance(models=models).start()


async def sse_events(resp: aiohttp.ClientResponse) -> list[object]:
    events = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data:"):
            payload = line[5:].strip()
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def test_streamed_chat_arrives_as_sse_and_ends_with_done(inst: Instance) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"model": CYCLE, "stream": True, **CHAT}
        async with http.post(inst.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = await sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == CYCLE for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == " hello world" * 4
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert inst.slot(CYCLE)["inflight"] == 0  # the lease came back


def test_non_streamed_chat_and_completions(inst: Instance) -> None:
    code, body = inst.post("/v1/chat/completions", {"model": CYCLE, **CHAT})
    assert code == 200 and body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] == 8 and body["choices"][0]["finish_reason"] == "length"
    code, body = inst.post("/v1/completions", {"model": CYCLE, "prompt": "once upon", "max_tokens": 4})
    assert code == 200 and body["usage"]["completion_tokens"] == 4
    assert body["choices"][0]["text"] == " hello world hello world"
    # The random model serves too; what it says, and when it stops, is up to its sampler.
    assert inst.post("/v1/chat/completions", {"model": "tiny:chat", **CHAT})[0] == 200


async def test_streamed_completions(inst: Instance) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"model": CYCLE, "prompt": "once upon", "max_tokens": 4, "stream": True}
        async with http.post(inst.url + "/v1/completions", json=body) as resp:
            events = await sse_events(resp)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"]) == " hello world hello world"


def test_embeddings_of_two_texts(inst: Instance) -> None:
    code, body = inst.post("/v1/embeddings", {"model": "tiny:embed", "input": ["first text", "second text"]})
    assert code == 200
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert len(vectors) == 2 and all(len(v) == 64 for v in vectors) and vectors[0] != vectors[1]


def test_a_chat_model_also_embeds_in_its_own_engine(inst: Instance) -> None:
    assert inst.post("/v1/embeddings", {"model": "tiny:chat", "input": "text"})[0] == 200
    assert inst.post("/v1/chat/completions", {"model": "tiny:chat", **CHAT})[0] == 200
    kinds = {s["kind"]: s["pid"] for s in inst.status()["slots"] if s["model"] == "tiny:chat"}
    assert set(kinds) == {"chat", "embed"} and kinds["chat"] != kinds["embed"]


def test_an_embedding_model_refuses_chat(inst: Instance) -> None:
    code, body = inst.post("/v1/chat/completions", {"model": "tiny:embed", **CHAT})
    assert code == 400 and "does not support chat; it can do: embeddings" in body["error"]["message"]
    assert body["error"]["code"] == "not_supported"


def test_unload_stops_the_engine(inst: Instance) -> None:
    assert inst.post("/v1/chat/completions", {"model": "tiny:chat", **CHAT})[0] == 200
    pid = inst.slot("tiny:chat")["pid"]
    code, body = inst.post("/lf/model/unload", {"model": "tiny:chat"})
    assert code == 200 and body["unloaded"] == ["tiny:chat"]
    wait_until(lambda: inst.slot("tiny:chat") is None and not psutil.pid_exists(pid), what="engine gone")


def test_unknown_model_is_404_model_not_found(inst: Instance) -> None:
    code, body = inst.post("/v1/chat/completions", {"model": "no-such-model", **CHAT})
    assert code == 404
    assert body["error"]["code"] == "model_not_found" and body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [(b"{not json", "not valid JSON"), (b"", "empty"), (b"[1, 2]", "must be a JSON object"),
     (b'{"messages": []}', "model is required"), (b'{"model": 5}', "model must be a string"),
     (b'{"model": "  "}', "model is required")],
)
def test_bad_bodies_are_400_openai_errors(inst: Instance, raw: bytes, fragment: str) -> None:
    code, body = inst.post("/v1/chat/completions", raw=raw)
    assert code == 400
    assert fragment in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"


def test_invalid_keep_alive_is_a_400(inst: Instance) -> None:
    code, body = inst.post("/v1/chat/completions", {"model": "tiny:chat", "keep_alive": "10 days", **CHAT})
    assert code == 400 and "keep_alive" in body["error"]["message"]


def test_unknown_route_and_method_are_openai_errors(inst: Instance) -> None:
    assert inst.get("/v1/nothing-here")[0] == 404
    code, body = inst.get("/v1/chat/completions")
    assert code == 405 and "not allowed" in body["error"]["message"]


def test_corrupt_gguf_gives_a_clean_load_error(inst: Instance) -> None:
    code, body = inst.post("/v1/chat/completions", {"model": "tiny:broken", **CHAT})
    assert code == 503
    assert body["error"]["code"] == "load_failed"
    assert "GGML_ASSERT" in body["error"]["message"]  # the engine's own reason, not a generic one
    error = inst.status()["last_errors"]["tiny:broken"]
    assert error["severity"] == "user_error" and "GGML_ASSERT" in error["stderr_tail"]
    assert inst.slot("tiny:broken") is None and not llama_servers_of(inst.home)


def test_models_are_listed_with_ids_that_hold_slashes_and_colons(inst: Instance) -> None:
    code, body = inst.get("/v1/models")
    assert code == 200 and body["object"] == "list"
    ids = {m["id"]: m for m in body["data"]}
    assert set(ids) == {"tiny:chat", "tiny:embed", "owner/tiny:cycle", "tiny:broken"}
    assert ids["tiny:embed"]["capabilities"]["embeddings"] and not ids["tiny:embed"]["capabilities"]["chat"]
    assert all(m["owned_by"] == "lmforge" and m["created"] > 0 for m in body["data"])
    code, model = inst.get("/v1/models/owner/tiny:cycle")
    assert code == 200 and model["id"] == "owner/tiny:cycle"
    code, body = inst.get("/v1/models/owner/missing")
    assert code == 404 and body["error"]["code"] == "model_not_found"


async def test_client_disconnect_cancels_the_engines_generation(inst: Instance) -> None:
    body = {"model": "owner/tiny:cycle", "stream": True, "max_tokens": 100000, **{"messages": CHAT["messages"]}}
    async with aiohttp.ClientSession() as http:
        async with http.post(inst.url + "/v1/chat/completions", json=body) as resp:
            await resp.content.readuntil(b"hello")  # generation is under way
            slot = inst.slot("owner/tiny:cycle")
            assert slot["inflight"] == 1
        # leaving the block closes the connection mid-stream
    engine = f"http://127.0.0.1:{slot['port']}/slots"
    async with aiohttp.ClientSession() as http:
        async def engine_idle() -> bool:
            async with http.get(engine) as r:
                return not any(s["is_processing"] for s in await r.json())

        await wait_until_async(engine_idle, what="the engine to stop generating")
    wait_until(lambda: inst.slot("owner/tiny:cycle")["inflight"] == 0, what="lease returned")


async def test_engine_killed_mid_stream_ends_the_stream_with_an_error_event(inst: Instance) -> None:
    body = {"model": "owner/tiny:cycle", "stream": True, "max_tokens": 100000, "messages": CHAT["messages"]}
    async with aiohttp.ClientSession() as http:
        async with http.post(inst.url + "/v1/chat/completions", json=body) as resp:
            await resp.content.readuntil(b"hello")
            os.kill(inst.slot("owner/tiny:cycle")["pid"], signal.SIGKILL)
            tail = await resp.content.read()  # the stream ends instead of hanging
    last = [line for line in tail.decode().splitlines() if line.startswith("data:")][-1]
    error = json.loads(last[5:])["error"]
    assert error["code"] == "engine_failed" and "failed mid-stream" in error["message"]


def test_health_is_200_only_with_a_live_manager(inst: Instance) -> None:
    code, body = inst.get("/health")
    assert code == 200 and body["status"] == "ok"
    inst.stop("manager")
    wait_until(lambda: inst.get("/health")[0] == 503, timeout=10, what="/health 503 without a manager")
    code, body = inst.get("/health")
    assert "manager" in body["reason"]
    assert inst.post("/v1/chat/completions", {"model": "tiny:chat", **CHAT})[0] == 503
    inst.start("manager", wait=False)
    wait_until(inst.healthy, timeout=15, what="/health 200 after the manager restarts")
    assert inst.post("/v1/chat/completions", {"model": "tiny:chat", **CHAT})[0] == 200


def test_a_body_over_the_limit_is_a_413_openai_error(inst: Instance) -> None:
    huge = b'{"model": "tiny:chat", "prompt": "' + b"x" * (33 * 1024**2) + b'"}'
    code, body = inst.post("/v1/completions", raw=huge)
    assert code == 413 and body["error"]["code"] == "request_too_large"
