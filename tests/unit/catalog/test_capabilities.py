"""Capabilities from a GGUF header: the chat template's evidence, pooling, and a vision projector."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.capabilities import capabilities_of, has_vision_encoder, is_projector
from catalog.gguf_info import GGUFInfo, read_gguf_info
from manager.protocol import SlotKind
from tests.support.tiny_models import CHATML_TEMPLATE

TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<tools>' + tools | tojson + '</tools>' }}{%- endif %}"
    "{%- for m in messages %}{%- if m.tool_calls %}{{- m.tool_calls | tojson }}{%- endif %}{%- endfor %}"
)
QWEN3_LIKE = ("{%- if enable_thinking is defined and enable_thinking is false %}"
              "{{- '<think>\\n\\n</think>' }}{%- endif %}")


def header(arch: str = "llama", **metadata: object) -> GGUFInfo:
    return GGUFInfo(Path("m.gguf"), 0, 3, {"general.architecture": arch, **metadata})


def test_a_plain_chatml_model_chats_but_has_no_tools_or_thinking() -> None:
    can = capabilities_of(header(**{"tokenizer.chat_template": CHATML_TEMPLATE}))
    assert can.kinds == (SlotKind.CHAT, SlotKind.EMBED)
    assert (can.chat_template, can.tools, can.thinking, can.vision) == (True, False, False, False)


def test_a_template_that_renders_tools_means_tools() -> None:
    can = capabilities_of(header(**{"tokenizer.chat_template": TOOLS_TEMPLATE}))
    assert can.tools and not can.thinking


@pytest.mark.parametrize("marker", ["<think>", "enable_thinking", "reasoning_content"])
def test_each_reasoning_marker_in_the_template_means_thinking(marker: str) -> None:
    can = capabilities_of(header(**{"tokenizer.chat_template": "{{ messages }}" + marker}))
    assert can.thinking and not can.tools


def test_a_real_thinking_template_is_recognised() -> None:
    assert capabilities_of(header(**{"tokenizer.chat_template": QWEN3_LIKE})).thinking


def test_no_template_means_no_chat_template_unless_the_engine_has_one_for_the_architecture() -> None:
    assert capabilities_of(header("llama")).chat_template is False
    assert capabilities_of(header("gemma3")).chat_template is True  # llama.cpp's built-in gemma template


@pytest.mark.parametrize(("pooling", "kinds"), [(1, (SlotKind.EMBED,)), (2, (SlotKind.EMBED,)),
                                                  (4, (SlotKind.RERANK,))])
def test_pooling_decides_what_the_model_serves_and_a_non_chat_model_has_no_chat_capabilities(
        pooling: int, kinds: tuple[SlotKind, ...]) -> None:
    can = capabilities_of(header(**{"llama.pooling_type": pooling, "tokenizer.chat_template": TOOLS_TEMPLATE}))
    assert can.kinds == kinds
    assert (can.chat_template, can.tools, can.thinking) == (False, False, False)


def test_vision_needs_a_projector_with_a_vision_encoder() -> None:
    text = header(**{"tokenizer.chat_template": CHATML_TEMPLATE})
    seeing = header("clip", **{"clip.has_vision_encoder": True})
    hearing = header("clip", **{"clip.has_vision_encoder": False, "clip.has_audio_encoder": True})
    assert capabilities_of(text, seeing).vision is True
    assert capabilities_of(text, hearing).vision is False
    assert capabilities_of(text).vision is False
    assert capabilities_of(text, header("llama")).vision is False  # a second text model is no projector


def test_the_tiny_projector_is_recognised_from_its_file(models_dir: Path) -> None:
    projector = read_gguf_info(models_dir / "mmproj.gguf")
    assert is_projector(projector) and has_vision_encoder(projector)
    chat = read_gguf_info(models_dir / "chat.gguf")
    assert not is_projector(chat)
    assert capabilities_of(chat, projector).vision
