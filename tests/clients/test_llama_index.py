"""llama-index's Ollama LLM and OllamaEmbedding pointed at LMForge.

The LLM reads the model's context length from /api/show and sends it as `num_ctx` on
every call, so these calls also check that a larger num_ctx loads once, then serves.
"""

from __future__ import annotations

from llama_index.core.llms import ChatMessage
from llama_index.embeddings.ollama import OllamaEmbedding
from llama_index.llms.ollama import Ollama

from tests.clients.served import CYCLE, EMBED, EMBED_DIMS, cycle_text


def test_llm_complete_chat_and_stream(lmforge) -> None:  # type: ignore[no-untyped-def]
    llm = Ollama(model=CYCLE, base_url=lmforge.url, request_timeout=60, additional_kwargs={"num_predict": 4})
    assert llm.metadata.context_window > 0  # read from /api/show's model_info
    assert llm.complete("once upon").text == cycle_text(4)
    reply = llm.chat([ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="hello")])
    assert reply.message.content == cycle_text(4)
    assert reply.raw["done_reason"] == "length" and reply.raw["eval_count"] == 4
    assert "".join(part.delta for part in llm.stream_complete("once upon")) == cycle_text(4)


def test_embedding_of_text_and_batch(lmforge) -> None:  # type: ignore[no-untyped-def]
    embed = OllamaEmbedding(model_name=EMBED, base_url=lmforge.url)
    assert len(embed.get_text_embedding("some text")) == EMBED_DIMS
    assert [len(v) for v in embed.get_text_embedding_batch(["a", "b", "c"])] == [EMBED_DIMS] * 3
