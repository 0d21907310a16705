"""Engines that crash, hang or never load: noticed at once, reported, reloaded with backoff."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.support.instance import Instance, wait_until

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
FAST_HEALTH = "health_interval_s = 0.2\nhealth_failures = 2\n"


@pytest.fixture
def inst(make_instance, models_dir: Path) -> Instance:
    models = {"chat": models_dir / "chat.gguf", "cycle": models_dir / "cycle.gguf", "broken": models_dir / "broken.gguf"}
    return make_instance(FAST_HEALTH, models).start()


async def test_sigkill_mid_stream_gives_a_clean_error_then_the_next_request_reloads(inst: Instance) -> None:
    body = {"model": "cycle", "stream": True, "max_tokens": 100000, "messages": CHAT["messages"]}
    async with aiohttp.ClientSession() as http:
        async with http.post(inst.url + "/v1/chat/completions", json=body) as resp:
            await resp.content.readuntil(b"hello")
            old_pid = inst.slot("cycle")["pid"]
            os.kill(old_pid, signal.SIGKILL)
            rest = (await resp.content.read()).decode()
    last = [line for line in rest.splitlines() if line.startswith("data:")][-1]
    assert json.loads(last[5:])["error"]["code"] == "engine_failed"  # the stream ends with an error event
    wait_until(lambda: inst.slot("cycle") is None, what="the dead slot to leave the table")
    error = inst.status()["last_errors"]["cycle"]
    assert "SIGKILL" in error["message"] and error["severity"] == "transient"
    code, reply = inst.post("/v1/chat/completions", {"model": "cycle", **CHAT})
    assert code == 200 and reply["choices"][0]["message"]["content"].strip().startswith("hello")
    assert inst.slot("cycle")["pid"] != old_pid
    assert "cycle" not in inst.status()["last_errors"]  # a good load clears the record


def test_an_engine_that_stops_answering_its_health_probe_is_killed(inst: Instance) -> None:
    assert inst.post("/v1/chat/completions", {"model": "chat", **CHAT})[0] == 200
    pid = inst.slot("chat")["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing: a hung engine
    try:
        wait_until(lambda: inst.slot("chat") is None, timeout=20, what="the hung engine to be noticed")
        error = inst.status()["last_errors"]["chat"]
        assert "health probe" in error["message"]
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                   what="the hung engine to be killed")
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGCONT)
    assert inst.post("/v1/chat/completions", {"model": "chat", **CHAT})[0] == 200


def test_repeated_load_failures_back_off_with_a_clear_message(inst: Instance) -> None:
    for _ in range(2):  # two real attempts, each a clean load error
        code, body = inst.post("/v1/chat/completions", {"model": "broken", **CHAT})
        assert code == 503 and body["error"]["code"] == "load_failed"
    code, body = inst.post("/v1/chat/completions", {"model": "broken", **CHAT})
    assert code == 503 and body["error"]["code"] == "backing_off"
    assert "failed 2 times" in body["error"]["message"] and "next attempt" in body["error"]["message"]
    assert inst.status()["last_errors"]["broken"]["count"] == 2


def test_a_backing_off_model_does_not_block_others(inst: Instance) -> None:
    for _ in range(3):
        inst.post("/v1/chat/completions", {"model": "broken", **CHAT})
    assert inst.post("/v1/chat/completions", {"model": "chat", **CHAT})[0] == 200


def test_retry_after_header_comes_with_backoff(inst: Instance) -> None:
    import urllib.error
    import urllib.request

    for _ in range(2):
        inst.post("/v1/chat/completions", {"model": "broken", **CHAT})
    req = urllib.request.Request(inst.url + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"model": "broken", **CHAT}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 503 and int(err.value.headers["Retry-After"]) >= 1
