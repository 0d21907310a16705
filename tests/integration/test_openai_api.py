"""The OpenAI dialect beyond the relay: embeddings in every input form, batching, rerank, gates, passthrough."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.support.instance import Instance, running_instance

BATCH = 4
CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    models = {name: models_dir / file for name, file in {
        "tiny:chat": "chat.gguf", "tiny:cycle": "cycle.gguf", "tiny:embed": "embed.gguf",
        "tiny:rerank": "rerank.gguf"}.items()}
    with running_instance(tmp_path_factory.mktemp("openai") / "home", llama_server, models,
                          f"embed_batch_size = {BATCH}\n") as inst:
        yield inst


def embed(inst: Instance, **body: object) -> dict:
    code, reply = inst.post("/v1/embeddings", {"model": "tiny:embed", **body})
    assert code == 200, reply
    return reply  # type: ignore[return-value]


def test_inputs_beyond_the_batch_size_come_back_in_order_with_summed_usage(inst: Instance) -> None:
    # Four engine calls, the last one short. Inputs of one token length: llama-server's pooled vector
    # of an input shifts with what shares its batch when lengths differ (measured on the tiny model).
    words = [f"w{i:02d}" for i in range(3 * BATCH + 1)]
    batched = embed(inst, input=words)
    assert [d["index"] for d in batched["data"]] == list(range(len(words)))
    alone = [embed(inst, input=w) for w in (words[0], words[5], words[-1])]
    for i, single in zip((0, 5, len(words) - 1), alone):
        assert np.allclose(batched["data"][i]["embedding"], single["data"][0]["embedding"], atol=1e-5)
    assert batched["usage"]["prompt_tokens"] == sum(embed(inst, input=w)["usage"]["prompt_tokens"] for w in words)
    assert batched["model"] == "tiny:embed" and batched["object"] == "list"


def test_token_arrays_base64_and_dimensions(inst: Instance) -> None:
    one_array = embed(inst, input=[5, 6, 7, 8, 9, 10])  # one token array is one input, however long
    assert len(one_array["data"]) == 1
    two_arrays = embed(inst, input=[[5, 6], [7, 8, 9]])
    assert len(two_arrays["data"]) == 2
    floats = embed(inst, input="the cat sat")["data"][0]["embedding"]
    packed = embed(inst, input="the cat sat", encoding_format="base64")["data"][0]["embedding"]
    raw = base64.b64decode(packed)
    assert np.allclose(struct.unpack(f"<{len(raw) // 4}f", raw), floats, atol=1e-6)
    short = embed(inst, input="the cat sat", dimensions=4)["data"][0]["embedding"]
    assert len(short) == 4 and abs(np.linalg.norm(short) - 1.0) < 1e-5
    code, reply = inst.post("/v1/embeddings", {"model": "tiny:embed", "input": "x", "dimensions": 100000})
    assert code == 400 and reply["error"]["param"] == "dimensions"


@pytest.mark.parametrize("bad", [[], "", [1, "a"], [[]], [-1], {"text": "x"}, [True]])
def test_malformed_embedding_inputs_are_400(inst: Instance, bad: object) -> None:
    code, reply = inst.post("/v1/embeddings", {"model": "tiny:embed", "input": bad})
    assert code == 400 and reply["error"]["param"] == "input"


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/api/rerank"])
def test_rerank_sorts_cuts_and_returns_documents(inst: Instance, path: str) -> None:
    docs = ["a cat sat", {"text": "stock markets fell"}, "the dog ran", "rain today"]
    code, reply = inst.post(path, {"model": "tiny:rerank", "query": "animals", "documents": docs, "top_n": 3,
                                   "return_documents": True})
    assert code == 200, reply
    results = reply["results"]
    assert len(results) == 3
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    texts = ["a cat sat", "stock markets fell", "the dog ran", "rain today"]
    assert all(r["document"]["text"] == texts[r["index"]] for r in results)
    assert len({r["index"] for r in results}) == 3


def test_requests_a_model_cannot_serve_are_refused_before_any_engine_work(inst: Instance) -> None:
    code, reply = inst.post("/v1/rerank", {"model": "tiny:embed", "query": "q", "documents": ["d"]})
    assert code == 400 and "does not support reranking" in reply["error"]["message"]
    code, reply = inst.post("/api/rerank", {"model": "tiny:chat", "query": "q", "documents": ["d"]})
    assert code == 400 and "tiny:chat" in reply["error"]  # Ollama's error shape on /api
    code, reply = inst.post("/v1/embeddings", {"model": "tiny:rerank", "input": "x"})
    assert code == 400 and "can do: reranking" in reply["error"]["message"]
    image = {"role": "user", "content": [{"type": "text", "text": "what is this"}, IMAGE]}
    code, reply = inst.post("/v1/chat/completions", {"model": "tiny:chat", "messages": [image]})
    assert code == 400 and reply["error"]["code"] == "vision_not_supported"
    assert "tiny:chat" in reply["error"]["message"]
    code, reply = inst.post("/v1/chat/completions", {"model": "tiny:chat", **CHAT, "max_tokens": -5})
    assert code == 400 and reply["error"]["param"] == "max_tokens"
    assert inst.slot("tiny:chat") is None and inst.slot("tiny:embed", "rerank") is None  # nothing loaded


def test_models_carry_capabilities(inst: Instance) -> None:
    code, reply = inst.get("/v1/models")
    assert code == 200
    caps = {m["id"]: m["capabilities"] for m in reply["data"]}
    assert caps["tiny:chat"]["chat"] and caps["tiny:chat"]["embeddings"] and not caps["tiny:chat"]["vision"]
    assert caps["tiny:embed"] == {**caps["tiny:embed"], "chat": False, "embeddings": True, "reranking": False}
    assert caps["tiny:rerank"]["reranking"] and not caps["tiny:rerank"]["chat"]
    code, one = inst.get("/v1/models/tiny:cycle:latest")  # Ollama clients add ":latest"
    assert code == 200 and one["id"] == "tiny:cycle"


def test_openai_fields_pass_through_to_the_engine(inst: Instance) -> None:
    body = {"model": "tiny:cycle", "messages": [{"role": "developer", "content": "be brief"},
                                                {"role": "user", "content": "hi"}],
            "max_completion_tokens": 3, "n": 2, "seed": 7, "logprobs": True, "top_logprobs": 2}
    code, reply = inst.post("/v1/chat/completions", body)
    assert code == 200, reply
    assert len(reply["choices"]) == 2 and reply["usage"]["completion_tokens"] == 3
    assert len(reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2
    code, reply = inst.post("/v1/chat/completions", {"model": "tiny:cycle", **CHAT, "max_tokens": 20,
                                                     "stop": ["world"]})
    assert code == 200 and reply["choices"][0]["message"]["content"] == " hello "
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_json_schema_and_tools_reach_the_engine(inst: Instance) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    body = {"model": "tiny:chat", **CHAT, "max_tokens": 40, "temperature": 0,  # greedy: the same answer every run
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    code, reply = inst.post("/v1/chat/completions", body)
    assert code == 200, reply
    assert reply["choices"][0]["message"]["content"].lstrip().startswith("{")  # the grammar held from the start
    if reply["choices"][0]["finish_reason"] == "stop":  # a grammar-bound answer parses whatever was sampled
        assert isinstance(json.loads(reply["choices"][0]["message"]["content"])["n"], int)
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    code, reply = inst.post("/v1/chat/completions", {"model": "tiny:chat", **CHAT, "tools": [tool],
                                                     "tool_choice": "auto"})
    assert code == 200, reply
    code, reply = inst.post("/v1/chat/completions", {"model": "tiny:chat", **CHAT, "stream": True,
                                                     "stream_options": {"include_usage": True}})
    assert code == 200


def test_a_content_part_type_that_is_not_a_string_is_a_400(inst: Instance) -> None:
    message = {"role": "user", "content": [{"type": ["image_url"], "image_url": {"url": "x"}}]}
    code, reply = inst.post("/v1/chat/completions", {"model": "tiny:chat", "messages": [message]})
    assert code == 400 and reply["error"]["param"] == "messages[0].content[0]"


def test_a_keep_alive_that_is_not_a_duration_is_a_400_before_the_model_is_looked_up(inst: Instance) -> None:
    code, reply = inst.post("/v1/chat/completions", {"model": "not-installed", **CHAT, "keep_alive": "soon"})
    assert code == 400 and reply["error"]["param"] == "keep_alive", reply


def test_completions_take_logprobs_as_a_count(inst: Instance) -> None:
    code, reply = inst.post("/v1/completions", {"model": "tiny:cycle", "prompt": "hi", "max_tokens": 2, "logprobs": 2})
    assert code == 200, reply
    assert reply["usage"]["completion_tokens"] == 2
