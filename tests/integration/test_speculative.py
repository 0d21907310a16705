"""Speculative decoding for real: a llama-server that LMForge starts with a draft model, through the gateway.

The target and its draft are the cycle model under two names: the draft proposes exactly what the target would
say (both pick " hello"/" world" by a margin no sampler overturns), so every drafted token is accepted.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from catalog.store import ModelStore
from manager.config import Paths
from tests.support.instance import Instance, llama_servers_of

TARGET, DRAFT = "tiny:cycle", "tiny:draft"
CHAT = {"model": TARGET, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 32}


@pytest.fixture
def inst(make_instance, models_dir: Path) -> Instance:
    config = f'[llama_cpp]\ndrafts = {{ "{TARGET}" = "{DRAFT}", "tiny:chat" = "tiny:absent" }}\n'
    models = {TARGET: models_dir / "cycle.gguf", DRAFT: models_dir / "cycle.gguf",
              "tiny:chat": models_dir / "chat.gguf"}
    return make_instance(config, models).start()


def test_a_chat_is_decoded_with_the_configured_draft(inst: Instance) -> None:
    code, body = inst.post("/v1/chat/completions", CHAT)
    assert code == 200, body
    assert body["choices"][0]["message"]["content"] == " hello world" * 16  # the target's own text
    [engine] = llama_servers_of(inst.home)
    argv = engine.cmdline()
    draft = ModelStore(Paths(inst.home)).get(DRAFT)
    assert draft is not None and argv[argv.index("--model-draft") + 1] == draft.path
    assert argv[argv.index("--spec-type") + 1] == "draft-simple"
    # llama-server's own account: it drafted, and the target accepted every drafted token.
    timings = body["timings"]
    assert timings["draft_n"] > 0 and timings["draft_n_accepted"] == timings["draft_n"]
    port = inst.slot(TARGET)["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/slots", timeout=10) as resp:
        assert all(slot["speculative"] for slot in json.load(resp))


def test_a_configured_draft_that_is_not_installed_fails_the_load_naming_the_fix(inst: Instance) -> None:
    code, body = inst.post("/v1/chat/completions", {**CHAT, "model": "tiny:chat"})
    assert code >= 400
    message = body["error"]["message"]
    assert "'tiny:absent'" in message and "`lmforge pull tiny:absent`" in message, message
    assert not llama_servers_of(inst.home)  # nothing was started for it
