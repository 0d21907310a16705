"""Load progress inside a streamed answer, when the client asks (X-LMForge-Progress: 1): SSE comments on /v1,
status lines on /api, ping events on /v1/messages; each dialect's official client still reads the answer.

The engine is the real llama-server behind a wrapper that starts it late for a model named "slow"
(tests/support/slow_engine.py): it stands in for a big model's load of several seconds, which the tiny test
models do not take. Each test unloads the model first, so each streams through a cold load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import anthropic
import ollama
import openai
import pytest

from tests.support.instance import Instance, running_instance
from tests.support.slow_engine import write_slow_engine

ASK = {"X-LMForge-Progress": "1"}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    home = tmp_path_factory.mktemp("progress")
    slow_server = str(write_slow_engine(home, llama_server, delay_s=1.5))
    with running_instance(home / "home", slow_server, {"slow": models_dir / "chat.gguf"}) as inst:
        yield inst


@pytest.fixture
def cold(inst: Instance) -> Instance:
    assert inst.post("/lf/model/unload", {})[0] == 200
    return inst


def test_v1_streams_tell_the_load_in_comment_lines(cold: Instance) -> None:
    code, text = cold.request("POST", "/v1/chat/completions", {"model": "slow", "messages": HELLO, "max_tokens": 3,
                                                               "stream": True}, headers=ASK)
    assert code == 200
    lines = [line for line in str(text).split("\n\n") if line]
    notes = [json.loads(line.removeprefix(": lmforge load ")) for line in lines if line.startswith(": lmforge load ")]
    assert notes and all(n["model"] == "slow" for n in notes)
    assert "spawned" in [n["stage"] for n in notes]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert all(line.startswith(":") for line in lines[:first_data])  # every note comes before the answer
    assert lines[-1] == "data: [DONE]"


def test_without_asking_the_stream_has_no_notes(cold: Instance) -> None:
    code, text = cold.request("POST", "/v1/chat/completions", {"model": "slow", "messages": HELLO, "max_tokens": 3,
                                                               "stream": True})
    assert code == 200 and "lmforge load" not in str(text) and str(text).startswith("data:")


def test_the_openai_client_reads_a_stream_with_notes(cold: Instance) -> None:
    client = openai.OpenAI(base_url=cold.url + "/v1", api_key="none", default_headers=ASK)
    chunks = list(client.chat.completions.create(model="slow", messages=HELLO, max_tokens=3, stream=True))  # type: ignore[arg-type]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_ollama_streams_tell_the_load_in_status_lines_its_client_skips(cold: Instance) -> None:
    code, text = cold.request("POST", "/api/chat", {"model": "slow", "messages": HELLO,
                                                    "options": {"num_predict": 3}}, headers=ASK)
    assert code == 200
    lines = [json.loads(line) for line in str(text).splitlines()]
    notes = [line for line in lines if "status" in line]
    assert notes and notes[0]["status"].startswith("loading slow: ")
    assert all(n["done"] is False and n["message"] == {"role": "assistant", "content": ""} for n in notes)
    assert lines[-1]["done"] is True and "status" not in lines[-1]
    assert cold.post("/lf/model/unload", {})[0] == 200
    parts = list(ollama.Client(host=cold.url, headers=ASK).chat(model="slow", messages=HELLO, stream=True,
                                                                 options={"num_predict": 3}))
    assert parts[-1].done and parts[0].message.content == ""


def test_anthropic_streams_tell_the_load_in_ping_events_its_client_skips(cold: Instance) -> None:
    code, text = cold.request("POST", "/v1/messages", {"model": "slow", "messages": HELLO, "max_tokens": 3,
                                                       "stream": True}, headers=ASK)
    assert code == 200
    events = str(text).split("\n\n")
    pings = [json.loads(e.split("data: ", 1)[1]) for e in events if e.startswith("event: ping")]
    assert any(p.get("lmforge", {}).get("load", {}).get("stage") == "spawned" for p in pings)
    assert cold.post("/lf/model/unload", {})[0] == 200
    client = anthropic.Anthropic(base_url=cold.url, api_key="none", default_headers=ASK)
    with client.messages.stream(model="slow", max_tokens=3, messages=HELLO) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"
