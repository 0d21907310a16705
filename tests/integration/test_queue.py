"""Load shed politely, per model: one engine slot, a queue of two, a 503 past it in every dialect, then recovery.

Real processes and a real llama-server (`--parallel 1`), no stand-in. A streamed
request of the cycle model (it never samples an end) holds the one permit while
the engine is stopped with SIGSTOP, so that nothing finishes until the test
continues it with SIGCONT: stopped before it answers (`held`), or once the stream
has begun (`mid_stream`). Health probes are set far apart, so the stopped engine
is not taken for a hung one meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import anthropic
import openai
import pytest

from tests.support.instance import Instance, running_instance, wait_until_async
from tests.support.metrics import scrape
from tests.support.sse import read_events

CONFIG = """
max_queue = 2
health_interval_s = 600.0
write_timeout_s = 600.0
[llama_cpp]
parallel = 1
"""
MODELS = ("cycle", "cycle-b", "cycle-c", "cycle-d")
HELLO = [{"role": "user", "content": "hello"}]
SHORT = {"messages": HELLO, "max_tokens": 4, "temperature": 0}
LONG = {"messages": HELLO, "max_tokens": 500, "temperature": 0, "stream": True}
# Until the context is full: seconds of tokens, not the moment a test takes to stop the engine after the first.
ENDLESS = {**LONG, "max_tokens": 100_000}


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    models = {name: models_dir / "cycle.gguf" for name in MODELS}
    with running_instance(tmp_path_factory.mktemp("queue") / "home", llama_server, models, CONFIG) as inst:
        yield inst


def slot_of(inst: Instance, model: str) -> dict:
    return inst.slot(model) or {}


async def engine_of(inst: Instance, model: str) -> int:
    code, body = await asyncio.to_thread(inst.post, "/lf/model/switch", {"model": model})
    assert code == 200, body
    return body["slot"]["pid"]  # type: ignore[index]


@contextlib.contextmanager
def stopped(engine: int) -> Iterator[None]:
    os.kill(engine, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(engine, signal.SIGCONT)


@contextlib.asynccontextmanager
async def held(http: aiohttp.ClientSession, inst: Instance,
               model: str) -> AsyncIterator[asyncio.Task[aiohttp.ClientResponse]]:
    """The model's one permit, held by a streamed request its stopped engine answers once the block ends."""
    with stopped(await engine_of(inst, model)):
        holder = asyncio.create_task(http.post(inst.url + "/v1/chat/completions", json={"model": model, **LONG}))

        async def leased() -> bool:
            return (await asyncio.to_thread(slot_of, inst, model)).get("inflight") == 1
        await wait_until_async(leased, what="the holder's lease")
        yield holder


@contextlib.asynccontextmanager
async def mid_stream(http: aiohttp.ClientSession, inst: Instance,
                     model: str) -> AsyncIterator[aiohttp.ClientResponse]:
    """The model's one permit, held by a stream that has begun, its engine stopped until the block ends."""
    engine = await engine_of(inst, model)
    holder = await http.post(inst.url + "/v1/chat/completions", json={"model": model, **ENDLESS})
    assert holder.status == 200 and (await holder.content.readline()).startswith(b"data:")
    with stopped(engine):
        assert slot_of(inst, model)["inflight"] == 1
        yield holder


async def queued_count(inst: Instance, model: str, n: int) -> None:
    async def there() -> bool:
        return (await asyncio.to_thread(slot_of, inst, model)).get("waiting") == n
    await wait_until_async(there, timeout=20, what=f"{n} request(s) queued for {model}")


async def delete(inst: Instance, model: str) -> None:
    """Its queue waits for a fresh load once the old engine drains; the delete refuses it (load_failed)."""
    code, body = await asyncio.to_thread(inst.request, "DELETE", f"/lf/model/delete/{model}")
    assert code == 200, body


async def read_to_end(resp: aiohttp.ClientResponse) -> bytes:
    return await asyncio.wait_for(resp.read(), 60)


def data_lines(body: bytes) -> list[str]:
    return [line[5:].strip() for line in body.decode().splitlines() if line.startswith("data:")]


async def status_events(http: aiohttp.ClientSession, inst: Instance) -> AsyncIterator[tuple[str | None, dict]]:
    async with http.get(inst.url + "/lf/status/stream") as resp:
        async for event in read_events(resp):
            yield event


async def test_past_the_queue_every_dialect_gets_503_concurrency_limit_and_then_the_model_recovers(
        inst: Instance) -> None:
    model = "cycle"
    async with aiohttp.ClientSession() as http, contextlib.aclosing(status_events(http, inst)) as events:
        assert (await events.__anext__())[0] == "snapshot"
        async with held(http, inst, model) as holding:
            streamed = await http.post(inst.url + "/v1/chat/completions", headers={"X-Request-Id": "q-stream"},
                                       json={"model": model, **SHORT, "stream": True})
            assert streamed.status == 200  # started while queued: its place comes as a comment
            assert streamed.headers["Content-Type"].startswith("text/event-stream")
            assert streamed.headers["X-Request-Id"] == "q-stream"
            assert await streamed.content.readline() == b": queued, 0 ahead\n"
            whole = asyncio.create_task(http.post(inst.url + "/v1/chat/completions",
                                                  headers={"X-Request-Id": "q-whole"}, json={"model": model, **SHORT}))
            await queued_count(inst, model, 2)
            async for name, data in events:
                if name == "queue" and data["model"] == model and data["queued"] == 2:
                    break
            assert [p["request_id"] for p in data["positions"]] == ["q-stream", "q-whole"]
            assert data["kind"] == "chat" and not data["loading"]

            refusals = {
                "/v1/chat/completions": {"model": model, **SHORT},
                "/api/chat": {"model": model, "messages": HELLO, "stream": False},
                "/v1/messages": {"model": model, "max_tokens": 4, "messages": HELLO},
            }
            for path, body in refusals.items():
                async with http.post(inst.url + path, json=body) as refused:
                    assert refused.status == 503, path
                    assert int(refused.headers["Retry-After"]) >= 1
                    answer = await refused.json()
                    if path == "/v1/chat/completions":
                        assert answer["error"]["code"] == "concurrency_limit"
                        assert "max_queue = 2" in answer["error"]["message"]
                    elif path == "/api/chat":
                        assert set(answer) == {"error"} and "max_queue" in answer["error"]
                    else:
                        assert answer["type"] == "error" and answer["error"]["type"] == "overloaded_error"
            # What never takes a permit still answers: health, status and its stream, and the metrics, which
            # count the refusals and show the queue.
            assert (await http.get(inst.url + "/health")).status == 200
            assert (await http.get(inst.url + "/lf/status")).status == 200
            assert slot_of(inst, model)["waiting"] == 2
            _, samples = await asyncio.to_thread(scrape, inst.url)
            assert samples.get_one("lmforge_concurrency_rejections_total") >= len(refusals)
            assert samples.get_one("lmforge_queue_depth", model=model, kind="chat") == 2
        tail = data_lines(await read_to_end(await holding))  # the holder's stream runs to its end...
        assert tail[-1] == "[DONE]" and json.loads(tail[-2])["choices"][0]["finish_reason"] == "length"
        lines = data_lines(await read_to_end(streamed))  # ...then the queue is served, in order
        assert lines[-1] == "[DONE]" and json.loads(lines[-2])["choices"][0]["finish_reason"] == "length"
        assert (await whole).status == 200
        async with http.post(inst.url + "/v1/chat/completions", json={"model": model, **SHORT}) as again:
            assert again.status == 200 and (await again.json())["choices"][0]["finish_reason"] == "length"
        await queued_count(inst, model, 0)


async def test_a_client_that_leaves_mid_stream_returns_its_permit_to_the_next_in_the_queue(inst: Instance) -> None:
    model = "cycle"
    async with aiohttp.ClientSession() as http:
        async with mid_stream(http, inst, model) as holder:
            waiting = asyncio.create_task(http.post(inst.url + "/v1/chat/completions", json={"model": model, **SHORT}))
            await queued_count(inst, model, 1)
            holder.close()  # the client goes away while its stream is open

            async def granted() -> bool:
                slot = await asyncio.to_thread(slot_of, inst, model)
                return slot.get("waiting") == 0 and slot.get("inflight") == 1
            await wait_until_async(granted, timeout=20, what="the queued request to get the returned permit")
        reply = await asyncio.wait_for(waiting, 60)
        assert reply.status == 200


async def test_a_client_that_leaves_while_queued_frees_its_place(inst: Instance) -> None:
    model = "cycle"
    async with aiohttp.ClientSession() as http:
        async with held(http, inst, model) as holding:
            async with aiohttp.ClientSession() as leaving:
                waiting = asyncio.create_task(leaving.post(inst.url + "/v1/chat/completions",
                                                           json={"model": model, **SHORT}))
                await queued_count(inst, model, 1)
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
            await queued_count(inst, model, 0)  # its connection closed with its session
            assert slot_of(inst, model)["inflight"] == 1  # left the queue, not served: the permit is still held
        (await holding).close()


async def test_a_queued_acquire_that_fails_ends_its_started_stream_with_the_dialects_error(inst: Instance) -> None:
    """The model is deleted while requests wait for it: each started stream ends with an error in its own dialect."""
    model = "cycle-b"
    async with aiohttp.ClientSession() as http:
        async with held(http, inst, model) as holding:
            openai_stream = await http.post(inst.url + "/v1/chat/completions",
                                            json={"model": model, **SHORT, "stream": True})
            anthropic_stream = await http.post(inst.url + "/v1/messages", json={
                "model": model, "max_tokens": 4, "messages": HELLO, "stream": True})
            for resp, ahead in ((openai_stream, 0), (anthropic_stream, 1)):
                assert resp.status == 200 and await resp.content.readline() == f": queued, {ahead} ahead\n".encode()
            await delete(inst, model)
            relayed = data_lines(await read_to_end(openai_stream))
            assert json.loads(relayed[-1])["error"]["code"] == "load_failed"
            translated = (await read_to_end(anthropic_stream)).decode()
            assert "event: message_start" in translated and translated.rstrip().split("\n\n")[-1].startswith(
                "event: error")
        (await holding).close()  # the engine it was leased from serves it to the end, deleted or not


async def test_a_responses_stream_that_fails_while_queued_ends_with_response_failed(inst: Instance) -> None:
    model = "cycle-c"
    async with aiohttp.ClientSession() as http:
        async with held(http, inst, model) as holding:
            resp = await http.post(inst.url + "/v1/responses", json={"model": model, "input": "hello",
                                                                      "max_output_tokens": 4, "stream": True})
            assert resp.status == 200 and await resp.content.readline() == b": queued, 0 ahead\n"
            await delete(inst, model)
            kinds = [json.loads(d)["type"] for d in data_lines(await read_to_end(resp))]
            assert kinds == ["response.created", "response.in_progress", "response.failed"]
        (await holding).close()


async def test_the_official_sdks_stream_a_request_that_started_while_queued(inst: Instance) -> None:
    """OpenAI's and Anthropic's clients read past the `: queued` comments to the answer."""
    model = "cycle-d"
    opened = threading.Event()
    texts: dict[str, object] = {}

    def with_openai() -> None:
        client = openai.OpenAI(base_url=inst.url + "/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model=model, messages=HELLO, max_tokens=4, temperature=0,
                                                stream=True)  # type: ignore[arg-type]
        opened.set()  # the response began while the request was still queued
        texts["openai"] = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]

    def with_anthropic() -> None:
        client = anthropic.Anthropic(base_url=inst.url, api_key="unused", max_retries=0)
        with client.messages.stream(model=model, max_tokens=4, messages=HELLO) as stream:  # type: ignore[arg-type]
            texts["anthropic"] = stream.get_final_message().stop_reason

    async with aiohttp.ClientSession() as http:
        async with held(http, inst, model) as holding:
            first = asyncio.create_task(asyncio.to_thread(with_openai))
            await asyncio.to_thread(opened.wait, 20)
            assert opened.is_set() and slot_of(inst, model)["waiting"] == 1
            second = asyncio.create_task(asyncio.to_thread(with_anthropic))
            await queued_count(inst, model, 2)
        (await holding).close()  # its permit goes to the first in the queue
        await asyncio.wait_for(asyncio.gather(first, second), 60)
    assert texts == {"openai": ["length"], "anthropic": "max_tokens"}
