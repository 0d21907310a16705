"""Ollama's /api against a real LMForge and real llama-server engines, spoken as plain HTTP.

The "cycle" model streams " hello world" forever, so text, counts and done
reasons are exact; the random "chat" model is only asked for shapes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from tests.support.instance import Instance, wait_until, running_instance
from tests.support.tiny_models import variant

CYCLE = "owner/tiny:cycle"
GEMMA = "gemma3:270m"  # a real base model: no chat template in its file, llama.cpp's built-in one for gemma
MESSAGES = [{"role": "user", "content": "hi"}]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
COUNTERS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
            "eval_duration")
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


# The ChatML template, plus tools and a thinking switch (which the tiny model's own template ignores).
AGENT_TEMPLATE = (
    "{%- if tools -%}{{- '<|im_start|>system\\n' + (tools | tojson) + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking -%}{{- '<think>\\n' -}}{%- endif -%}{%- endif -%}"
)


@pytest.fixture(scope="module")
def variants(models_dir: Path) -> dict[str, Path]:
    """A model that can fill in the middle (FIM tokens declared) and one whose template takes tools and thinking."""
    fim = [arg for kind, token in (("fim_pre", 256), ("fim_suf", 257), ("fim_mid", 258))
           for arg in ("--special-token-by-id", kind, str(token))]
    return {"tiny:fim": variant(models_dir, "fim.gguf", *fim),
            "tiny:agent": variant(models_dir, "agent.gguf", "--chat-template", AGENT_TEMPLATE)}


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path,
         variants: dict[str, Path], gemma_gguf: Path) -> Iterator[Instance]:
    """One LMForge for the module: each test uses its own models where it changes what is loaded."""
    models = {name: models_dir / path for name, path in {
        "tiny:chat": "chat.gguf", "tiny:embed": "embed.gguf", CYCLE: "cycle.gguf", "tiny:unload": "cycle.gguf",
        "tiny:doomed": "cycle.gguf", "tiny:wide": "cycle.gguf", "copy-of-cycle": "cycle.gguf"}.items()}
    with running_instance(tmp_path_factory.mktemp("ollama") / "home", llama_server,
                          {**models, **variants, GEMMA: gemma_gguf}) as inst:
        yield inst


def ndjson(inst: Instance, path: str, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(content type, one object per line) of a streamed answer."""
    req = urllib.request.Request(inst.url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], [json.loads(line) for line in resp.read().splitlines()]


def assert_final(final: dict[str, Any], model: str, reason: str) -> None:
    assert final["done"] is True and final["done_reason"] == reason and final["model"] == model
    assert all(isinstance(final[name], int) for name in COUNTERS), final
    assert final["prompt_eval_count"] > 0 and final["total_duration"] >= final["eval_duration"] > 0


# --- chat ---


def test_chat_streams_ndjson_by_default_with_exactly_one_final_object(inst: Instance) -> None:
    content_type, lines = ndjson(inst, "/api/chat", {"model": CYCLE, "messages": MESSAGES,
                                                     "options": {"num_predict": 5}})
    assert content_type.startswith("application/x-ndjson")
    assert [line["done"] for line in lines].count(True) == 1 and lines[-1]["done"] is True
    assert all(STAMP.match(line["created_at"]) and line["model"] == CYCLE for line in lines)
    assert "".join(line["message"]["content"] for line in lines) == " hello world hello world hello"
    assert all(line["message"]["role"] == "assistant" for line in lines)
    assert_final(lines[-1], CYCLE, "length")
    assert lines[-1]["eval_count"] == 5 and lines[-1]["message"]["content"] == ""


def test_chat_not_streamed_is_one_object_with_every_counter(inst: Instance) -> None:
    code, body = inst.post("/api/chat", {"model": CYCLE, "messages": MESSAGES, "stream": False,
                                         "options": {"num_predict": 4}})
    assert code == 200 and body["message"] == {"role": "assistant", "content": " hello world hello world"}
    assert_final(body, CYCLE, "length")
    assert body["eval_count"] == 4


def test_options_reach_the_engine(inst: Instance) -> None:
    body = {"model": CYCLE, "messages": MESSAGES, "stream": False,
            "options": {"num_predict": 20, "stop": [" world"], "temperature": 0.5, "top_k": 10, "top_p": 0.9,
                        "min_p": 0.05, "typical_p": 0.9, "repeat_penalty": 1.0, "repeat_last_n": 16, "seed": 7,
                        "presence_penalty": 0.0, "frequency_penalty": 0.0, "mirostat": 0}}
    code, answer = inst.post("/api/chat", body)
    assert code == 200 and answer["message"]["content"] == " hello" and answer["done_reason"] == "stop"


def test_options_the_engine_cannot_take_are_ignored_with_a_log_line(inst: Instance) -> None:
    options = {"num_predict": 2, "num_thread": 3, "num_gpu": 0, "num_batch": 64, "use_mmap": False,
               "low_vram": True, "penalize_newline": True}
    code, answer = inst.post("/api/chat", {"model": CYCLE, "messages": MESSAGES, "stream": False, "options": options})
    assert code == 200 and answer["eval_count"] == 2
    log = wait_until(lambda: "low_vram=True ignored" in inst.log("gateway") and inst.log("gateway"),
                     what="the gateway's log line")
    assert all(f"option {name}=" in log for name in ("num_thread", "num_gpu", "num_batch", "use_mmap"))


def test_num_ctx_loads_an_engine_with_at_least_that_context(inst: Instance) -> None:
    code, _ = inst.post("/api/chat", {"model": "tiny:wide", "messages": MESSAGES, "stream": False,
                                      "options": {"num_predict": 1, "num_ctx": 12288}})
    assert code == 200 and inst.slot("tiny:wide")["ctx_size"] >= 12288


def test_format_schema_constrains_the_answer(inst: Instance) -> None:
    code, answer = inst.post("/api/chat", {"model": CYCLE, "messages": MESSAGES, "stream": False,
                                           "format": {"type": "string", "enum": ["yes"]},
                                           "options": {"num_predict": 20}})
    assert code == 200 and answer["message"]["content"] == '"yes"'


def prompt_tokens(inst: Instance, body: dict[str, Any]) -> int:
    code, answer = inst.post("/api/chat", {"model": "tiny:agent", "stream": False, "options": {"num_predict": 1},
                                           **body})
    assert code == 200, answer
    return answer["prompt_eval_count"]


def test_tools_and_tool_history_reach_the_engine(inst: Instance) -> None:
    history = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "sunny"},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "the weather",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    asked = prompt_tokens(inst, {"messages": history[:1]})
    answered = prompt_tokens(inst, {"messages": history})
    assert asked < answered < prompt_tokens(inst, {"messages": history, "tools": tools})


def test_think_on_a_model_that_cannot_think_is_ollamas_400(inst: Instance) -> None:
    code, answer = inst.post("/api/chat", {"model": "tiny:chat", "messages": MESSAGES, "think": True})
    assert (code, answer) == (400, {"error": '"tiny:chat" does not support thinking'})
    assert inst.post("/api/chat", {"model": "tiny:chat", "messages": MESSAGES, "think": False, "stream": False,
                                   "options": {"num_predict": 1}})[0] == 200


def test_think_switches_the_template(inst: Instance) -> None:
    plain = prompt_tokens(inst, {"messages": MESSAGES})
    assert prompt_tokens(inst, {"messages": MESSAGES, "think": False}) == plain
    assert prompt_tokens(inst, {"messages": MESSAGES, "think": True}) > plain


@pytest.mark.parametrize(
    ("body", "message"),
    [({"options": {"num_predict": "many"}}, "options.num_predict must be an integer (got 'many')"),
     ({"options": {"temperature": "hot"}}, "options.temperature must be a number (got 'hot')"),
     ({"options": {"top_p": 2}}, "options.top_p must be between 0 and 1 (got 2)"),
     ({"messages": "x"}, "messages must be an array (got 'x')"),
     ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role must be one of"),
     ({"stream": "yes"}, "stream must be true or false (got 'yes')"),
     ({"format": "xml"}, 'format must be "json" or a JSON schema object'),
     ({"keep_alive": "soon"}, 'keep_alive must be a duration such as "30s"'),
     ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name is required"),
     ({"model": None}, "model is required")],
)
def test_bad_requests_are_400_naming_the_field(inst: Instance, body: dict[str, Any], message: str) -> None:
    code, answer = inst.post("/api/chat", {"model": CYCLE, "messages": MESSAGES, **body})
    assert code == 400 and set(answer) == {"error"} and message in answer["error"]


def test_bad_json_is_400(inst: Instance) -> None:
    code, answer = inst.post("/api/chat", raw=b"{not json")
    assert code == 400 and "not valid JSON" in answer["error"]


def test_unknown_model_is_404_everywhere(inst: Instance) -> None:
    for path, body in (("/api/chat", {"messages": MESSAGES}), ("/api/generate", {"prompt": "x"}),
                       ("/api/show", {}), ("/api/embed", {"input": "x"}), ("/api/embeddings", {"prompt": "x"})):
        code, answer = inst.post(path, {"model": "no-such-model", **body})
        assert (code, answer) == (404, {"error": "model 'no-such-model' not found"}), path


def test_what_a_model_cannot_do_is_400_naming_it(inst: Instance) -> None:
    code, answer = inst.post("/api/chat", {"model": "tiny:embed", "messages": MESSAGES})
    assert code == 400 and "'tiny:embed' does not support chat" in answer["error"]
    code, answer = inst.post("/api/chat", {"model": CYCLE, "messages": [{"role": "user", "content": "what?",
                                                                        "images": [PNG]}]})
    assert code == 400 and f"'{CYCLE}' cannot read images" in answer["error"]
    code, answer = inst.post("/api/generate", {"model": CYCLE, "prompt": "def f(", "suffix": "return 1"})
    assert code == 400 and f"'{CYCLE}' does not support insert" in answer["error"]


def test_an_engine_dying_mid_stream_ends_it_with_an_error_line(inst: Instance) -> None:
    body = {"model": "tiny:doomed", "messages": MESSAGES, "options": {"num_predict": 1_000_000}}
    req = urllib.request.Request(inst.url + "/api/chat", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert json.loads(resp.readline())["done"] is False
        os.kill(inst.slot("tiny:doomed")["pid"], signal.SIGKILL)
        lines = [json.loads(line) for line in resp.read().splitlines()]
    assert "error" in lines[-1] and "tiny:doomed" in lines[-1]["error"]
    assert not any(line.get("done") for line in lines)


def test_a_client_leaving_mid_stream_frees_the_engine(inst: Instance) -> None:
    body = {"model": CYCLE, "messages": MESSAGES, "options": {"num_predict": 1_000_000}}
    req = urllib.request.Request(inst.url + "/api/chat", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert json.loads(resp.readline())["done"] is False
        assert inst.slot(CYCLE)["inflight"] == 1
    wait_until(lambda: inst.slot(CYCLE)["inflight"] == 0, what="the lease back after the client left")
    code, answer = inst.post("/api/chat", {"model": CYCLE, "messages": MESSAGES, "stream": False,
                                           "options": {"num_predict": 2}})
    assert code == 200 and answer["message"]["content"] == " hello world"


# --- generate ---


def test_generate_raw_continues_the_prompt_as_text(inst: Instance) -> None:
    code, answer = inst.post("/api/generate", {"model": CYCLE, "prompt": "once upon", "raw": True,
                                               "stream": False, "options": {"num_predict": 4}})
    assert code == 200 and answer["response"] == " hello world hello world"
    assert_final(answer, CYCLE, "length")
    code, relayed = inst.post("/v1/completions", {"model": CYCLE, "prompt": "once upon", "max_tokens": 1})
    assert answer["prompt_eval_count"] == relayed["usage"]["prompt_tokens"]  # the prompt as is, no template


def test_generate_with_system_is_a_chat_through_the_template(inst: Instance) -> None:
    _, lines = ndjson(inst, "/api/generate", {"model": CYCLE, "system": "be brief", "prompt": "hi",
                                              "options": {"num_predict": 3}})
    assert "".join(line["response"] for line in lines) == " hello world hello"
    assert [line["done"] for line in lines].count(True) == 1
    assert_final(lines[-1], CYCLE, "length")
    code, chat = inst.post("/api/chat", {"model": CYCLE, "stream": False, "options": {"num_predict": 1},
                                         "messages": [{"role": "system", "content": "be brief"}, *MESSAGES]})
    assert lines[-1]["prompt_eval_count"] == chat["prompt_eval_count"]


def test_generate_format_constrains_a_raw_prompt_too(inst: Instance) -> None:
    code, answer = inst.post("/api/generate", {"model": CYCLE, "prompt": "x", "raw": True, "stream": False,
                                               "format": {"const": 42}, "options": {"num_predict": 20}})
    assert code == 200 and answer["response"] == "42"


def test_generate_suffix_fills_in_the_middle(inst: Instance) -> None:
    _, lines = ndjson(inst, "/api/generate", {"model": "tiny:fim", "prompt": "def f(", "suffix": "return x",
                                              "options": {"num_predict": 3}})
    assert "".join(line["response"] for line in lines) == " hello world hello"
    assert_final(lines[-1], "tiny:fim", "length")


def test_an_empty_generate_loads_and_keep_alive_0_unloads(inst: Instance) -> None:
    code, answer = inst.post("/api/generate", {"model": "tiny:unload"})
    assert code == 200 and answer["done"] is True and answer["done_reason"] == "load"
    pid = inst.slot("tiny:unload")["pid"]
    code, answer = inst.post("/api/chat", {"model": "tiny:unload", "messages": [], "keep_alive": 0})
    assert code == 200 and answer["done_reason"] == "unload" and answer["message"]["content"] == ""
    wait_until(lambda: inst.slot("tiny:unload") is None and not psutil.pid_exists(pid), what="engine gone")


def test_a_real_model_generates_through_its_built_in_template(inst: Instance) -> None:
    code, answer = inst.post("/api/generate", {"model": GEMMA, "prompt": "Why is the sky blue?", "stream": False,
                                               "options": {"num_predict": 3, "temperature": 0}})
    assert code == 200 and isinstance(answer["response"], str)
    assert answer["done_reason"] in ("stop", "length") and 0 < answer["eval_count"] <= 3
    code, raw = inst.post("/api/generate", {"model": GEMMA, "prompt": "Why is the sky blue?", "raw": True,
                                            "stream": False, "options": {"num_predict": 1}})
    assert code == 200 and raw["prompt_eval_count"] < answer["prompt_eval_count"]  # no turn markers around it


# --- listings ---


def test_tags_lists_every_model_with_details_and_distinct_digests(inst: Instance) -> None:
    code, body = inst.get("/api/tags")
    models = {m["name"]: m for m in body["models"]}
    assert code == 200 and {CYCLE, "tiny:chat", "copy-of-cycle:latest"} <= set(models)
    cycle = models[CYCLE]
    assert cycle["model"] == CYCLE and cycle["size"] > 0 and datetime.fromisoformat(cycle["modified_at"])
    assert cycle["details"] == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                                "parameter_size": "108K", "quantization_level": "F32"}
    assert models["copy-of-cycle:latest"]["digest"] != cycle["digest"]  # the same file under two names
    assert len({m["digest"] for m in models.values()}) == len(models)


def test_show_describes_a_model_from_its_header(inst: Instance) -> None:
    code, body = inst.post("/api/show", {"model": "tiny:fim"})
    assert code == 200 and body["capabilities"] == ["completion", "insert"]
    info = body["model_info"]
    assert info["general.architecture"] == "llama" and info["llama.context_length"] == 16384
    assert info["general.parameter_count"] == 108480 and info["tokenizer.ggml.tokens"] is None
    assert "<|im_start|>" in body["template"] and re.match(r"num_ctx\s+\d+$", body["parameters"])
    assert body["details"]["family"] == "llama" and datetime.fromisoformat(body["modified_at"])
    code, body = inst.post("/api/show", {"name": "tiny:embed"})  # the older spelling
    assert code == 200 and body["capabilities"] == ["embedding"]
    code, body = inst.post("/api/show", {"model": GEMMA})
    assert code == 200 and body["capabilities"] == ["completion"] and body["template"] == ""
    assert body["details"] == {"parent_model": "", "format": "gguf", "family": "gemma3", "families": ["gemma3"],
                               "parameter_size": "268.10M", "quantization_level": "Q4_K_M"}
    code, body = inst.post("/api/show", {"model": "tiny:agent"})
    assert code == 200 and body["capabilities"] == ["completion", "tools", "thinking"]


def test_ps_lists_each_loaded_model_once(inst: Instance) -> None:
    assert inst.post("/api/chat", {"model": CYCLE, "messages": MESSAGES, "stream": False,
                                   "options": {"num_predict": 1}})[0] == 200
    assert inst.post("/api/embed", {"model": CYCLE, "input": "x"})[0] == 200  # a second engine, for embeddings
    code, body = inst.get("/api/ps")
    listed = [m for m in body["models"] if m["name"] == CYCLE]
    assert code == 200 and len(listed) == 1
    running = listed[0]
    assert running["context_length"] == inst.slot(CYCLE)["ctx_size"] and running["size"] > 0
    assert running["size_vram"] == 0 and datetime.fromisoformat(running["expires_at"])
    assert running["details"]["family"] == "llama"


def test_version_and_the_root(inst: Instance) -> None:
    code, body = inst.get("/api/version")
    assert code == 200 and re.match(r"^\d+\.\d+\.\d+$", body["version"])
    assert inst.get("/") == (200, "Ollama is running")
    head = urllib.request.Request(inst.url + "/", method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as resp:
        assert resp.status == 200


# --- embeddings ---


def test_embed_shapes(inst: Instance) -> None:
    code, body = inst.post("/api/embed", {"model": "tiny:embed", "input": ["first text", "second text"]})
    assert code == 200 and body["model"] == "tiny:embed" and len(body["embeddings"]) == 2
    assert all(len(v) == 64 for v in body["embeddings"]) and body["embeddings"][0] != body["embeddings"][1]
    assert body["prompt_eval_count"] > 0 and all(isinstance(body[k], int) for k in ("total_duration",
                                                                                      "load_duration"))
    code, body = inst.post("/api/embed", {"model": "tiny:embed", "input": "one text", "dimensions": 8})
    assert code == 200 and [len(v) for v in body["embeddings"]] == [8]
    assert abs(sum(x * x for x in body["embeddings"][0]) - 1) < 1e-6
    code, body = inst.post("/api/embeddings", {"model": "tiny:embed", "prompt": "one text"})
    assert code == 200 and len(body["embedding"]) == 64
    code, body = inst.post("/api/embed", {"model": "tiny:embed", "input": []})
    assert code == 200 and body["embeddings"] == []
    code, body = inst.post("/api/embed", {"model": "tiny:embed", "input": [1, 2]})
    assert code == 400 and "input must be a string or an array of strings" in body["error"]
