"""langchain-openai and langchain-ollama chat models and embeddings, pointed at LMForge."""

from __future__ import annotations

from langchain_ollama import ChatOllama, OllamaEmbeddings
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from tests.clients.served import CYCLE, EMBED, EMBED_DIMS, cycle_text


def test_chat_openai_invoke_and_stream(v1: str) -> None:
    chat = ChatOpenAI(base_url=v1, api_key="lmforge", model=CYCLE, max_tokens=4, max_retries=0)
    reply = chat.invoke("hello")
    assert reply.content == cycle_text(4)
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata["output_tokens"] == 4
    assert "".join(chunk.content for chunk in chat.stream("hello")) == cycle_text(4)


def test_openai_embeddings(v1: str) -> None:
    # check_embedding_ctx_length=False: send the texts, not tiktoken ids of OpenAI's own vocabulary.
    embeddings = OpenAIEmbeddings(base_url=v1, api_key="lmforge", model=EMBED, check_embedding_ctx_length=False)
    vectors = embeddings.embed_documents(["first text", "second text"])
    assert [len(v) for v in vectors] == [EMBED_DIMS, EMBED_DIMS]
    assert len(embeddings.embed_query("a query")) == EMBED_DIMS


def test_chat_ollama_invoke_and_stream(lmforge) -> None:  # type: ignore[no-untyped-def]
    chat = ChatOllama(base_url=lmforge.url, model=CYCLE, num_predict=4, validate_model_on_init=True)
    reply = chat.invoke("hello")
    assert reply.content == cycle_text(4)
    assert reply.response_metadata["done_reason"] == "length"
    assert reply.usage_metadata["output_tokens"] == 4 and reply.usage_metadata["input_tokens"] > 0
    assert "".join(chunk.content for chunk in chat.stream("hello")) == cycle_text(4)


def test_ollama_embeddings(lmforge) -> None:  # type: ignore[no-untyped-def]
    embeddings = OllamaEmbeddings(base_url=lmforge.url, model=EMBED)
    assert [len(v) for v in embeddings.embed_documents(["first", "second"])] == [EMBED_DIMS, EMBED_DIMS]
    assert len(embeddings.embed_query("a query")) == EMBED_DIMS
