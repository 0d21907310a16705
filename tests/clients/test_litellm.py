"""litellm's Ollama (`ollama_chat/`) and OpenAI (`openai/`) providers pointed at LMForge."""

from __future__ import annotations

import litellm

from tests.clients.served import CYCLE, EMBED, EMBED_DIMS, MESSAGES, cycle_text


def test_ollama_chat_provider(lmforge) -> None:  # type: ignore[no-untyped-def]
    reply = litellm.completion(model=f"ollama_chat/{CYCLE}", api_base=lmforge.url, messages=MESSAGES, max_tokens=4)
    assert reply.choices[0].message.content == cycle_text(4)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4 and reply.usage.prompt_tokens > 0
    chunks = litellm.completion(model=f"ollama_chat/{CYCLE}", api_base=lmforge.url, messages=MESSAGES,
                                max_tokens=4, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cycle_text(4)


def test_ollama_embeddings_provider(lmforge) -> None:  # type: ignore[no-untyped-def]
    reply = litellm.embedding(model=f"ollama/{EMBED}", api_base=lmforge.url, input=["first", "second"])
    assert [len(d["embedding"]) for d in reply.data] == [EMBED_DIMS, EMBED_DIMS]


def test_openai_provider(v1: str) -> None:
    reply = litellm.completion(model=f"openai/{CYCLE}", api_base=v1, api_key="lmforge", messages=MESSAGES,
                               max_tokens=4)
    assert reply.choices[0].message.content == cycle_text(4)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4
    chunks = litellm.completion(model=f"openai/{CYCLE}", api_base=v1, api_key="lmforge", messages=MESSAGES,
                                max_tokens=4, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cycle_text(4)
