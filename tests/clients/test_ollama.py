"""The official `ollama` client against LMForge's /api: generation, embeddings and model management."""

from __future__ import annotations

import math

import httpx
import ollama
import pytest

from tests.clients.served import CHAT, CYCLE, EMBED, EMBED_DIMS, GEMMA, MESSAGES, cycle_text


@pytest.fixture(scope="module")
def client(lmforge) -> ollama.Client:  # type: ignore[no-untyped-def]
    return ollama.Client(host=lmforge.url)


def assert_terminal(final: ollama.ChatResponse | ollama.GenerateResponse, tokens: int) -> None:
    """Ollama's last object: done, why, and every counter and duration (nanoseconds)."""
    assert final.done is True and final.done_reason == "length"
    assert final.eval_count == tokens and final.prompt_eval_count > 0
    for duration in (final.load_duration, final.prompt_eval_duration, final.eval_duration):
        assert isinstance(duration, int) and duration >= 0
    assert final.total_duration >= final.eval_duration > 0
    assert final.created_at and final.model == CYCLE


def test_chat_non_streamed_with_options(client: ollama.Client) -> None:
    reply = client.chat(model=CYCLE, messages=MESSAGES, stream=False,
                        options={"num_predict": 4, "temperature": 0.7, "seed": 42})
    assert reply.message.role == "assistant" and reply.message.content == cycle_text(4)
    assert_terminal(reply, 4)


def test_chat_streams_exactly_one_final_object(client: ollama.Client) -> None:
    parts = list(client.chat(model=CYCLE, messages=MESSAGES, stream=True, options={"num_predict": 6}))
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == cycle_text(6)
    assert_terminal(parts[-1], 6)


def test_generate_with_system_and_prompt(client: ollama.Client) -> None:
    reply = client.generate(model=CYCLE, prompt="once upon", system="be brief", options={"num_predict": 4})
    assert reply.response == cycle_text(4)
    assert_terminal(reply, 4)
    streamed = list(client.generate(model=CYCLE, prompt="once upon", stream=True, options={"num_predict": 2}))
    assert "".join(p.response for p in streamed) == cycle_text(2) and streamed[-1].done


def test_generate_json_format_and_raw_gemma(client: ollama.Client) -> None:
    # Greedy: a sampled JSON answer cut off at 8 tokens is sometimes refused by llama-server's
    # output parser ("does not match the expected peg-native format"), a coin toss otherwise.
    reply = client.generate(model=CHAT, prompt="a JSON object:", format="json",
                            options={"num_predict": 8, "temperature": 0})
    assert reply.done and reply.eval_count <= 8
    # The real model, on its raw prompt (it is a base model, without a chat template). Its
    # tokens cost a second or two each on a small CPU, so it says two at most.
    gemma = client.generate(model=GEMMA, prompt="The sky is", raw=True, options={"num_predict": 2})
    assert gemma.done and gemma.model == GEMMA and gemma.eval_count <= 2
    assert gemma.done_reason == "stop" or (gemma.done_reason == "length" and gemma.eval_count == 2)


def test_embed_a_list_normalised(client: ollama.Client) -> None:
    reply = client.embed(model=EMBED, input=["first text", "second text"])
    assert reply.model == EMBED and len(reply.embeddings) == 2
    assert all(len(v) == EMBED_DIMS for v in reply.embeddings)
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-3) for v in reply.embeddings)
    assert reply.prompt_eval_count > 0


def test_legacy_embeddings(client: ollama.Client) -> None:
    assert len(client.embeddings(model=EMBED, prompt="first text").embedding) == EMBED_DIMS


def test_list_gives_size_digest_and_details(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert {CHAT, CYCLE, EMBED, GEMMA} <= set(models)
    assert all(m.size > 0 and m.modified_at and m.details.format == "gguf" for m in models.values())
    assert len({m.digest for m in models.values()}) == len(models)  # distinct per model


def test_show_capabilities_model_info_and_details(client: ollama.Client) -> None:
    gemma = client.show(GEMMA)
    assert "completion" in gemma.capabilities
    assert gemma.modelinfo["general.architecture"] == "gemma3"
    assert gemma.modelinfo["gemma3.context_length"] > 0
    assert gemma.details.family == "gemma3" and gemma.details.quantization_level
    assert gemma.modified_at is not None
    embed = client.show(EMBED)
    assert "embedding" in embed.capabilities and "completion" not in embed.capabilities
    assert client.show(CYCLE).template  # the chat template from the GGUF


def test_ps_lists_a_loaded_model(client: ollama.Client) -> None:
    client.generate(model=CYCLE, prompt="hi", options={"num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    assert CYCLE in running
    assert running[CYCLE].expires_at is not None and running[CYCLE].size > 0
    assert running[CYCLE].size_vram >= 0


def test_copy_then_delete(client: ollama.Client) -> None:
    assert client.copy(CYCLE, "tiny:copied").status == "success"
    assert "tiny:copied" in {m.model for m in client.list().models}
    assert client.show("tiny:copied").details.format == "gguf"
    assert client.delete("tiny:copied").status == "success"
    assert "tiny:copied" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("tiny:copied")
    assert err.value.status_code == 404


def test_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such:model", messages=MESSAGES, stream=False)
    assert err.value.status_code == 404 and "no-such:model" in err.value.error


def test_version_and_liveness(lmforge) -> None:  # type: ignore[no-untyped-def]
    """The client has no version() call; Open WebUI and the CLI read these with plain HTTP."""
    assert isinstance(httpx.get(lmforge.url + "/api/version").json()["version"], str)
    root = httpx.get(lmforge.url + "/")
    assert root.status_code == 200 and "running" in root.text
    assert httpx.head(lmforge.url + "/").status_code == 200
