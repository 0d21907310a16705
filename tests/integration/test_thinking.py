"""The thinking budget in every dialect, against a scripted engine that thinks on cue.

tests/support/reasoning_engine.py stands in for a reasoning model (Qwen3, the
DeepSeek-R1 distills): it writes REASONING then ANSWER, as `reasoning_content`
or inline <think> tags (models named "...tags"), so what each call returns is
exact. The gateway, manager and supervisord are real; the engine's calls log
shows what the thinking workflow asked of it.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support.instance import Instance, running_instance, wait_until
from tests.support.reasoning_engine import (ANSWER, PROMPT_TOKENS_PER_MESSAGE, REASONING, read_calls,
                                            write_reasoning_engine)
from tests.support.tiny_models import THINK_TEMPLATE, variant

MODELS = ("think:field", "think:tags", "think:empty", "think:tags-empty", "think:hold", "think:tags-echo",
          "think:refuse")
ASK = [{"role": "user", "content": "What is six times seven?"}]
THOUGHT, REPLY = "".join(REASONING), "".join(ANSWER)
ANSWER_TOKENS = 300  # thinking_answer_tokens, the answer's budget without max_tokens
ANTHROPIC_MAX = 1000


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reasoning-engine")


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, engine_dir: Path) -> Iterator[Instance]:
    thinker = variant(models_dir, "thinker.gguf", "--chat-template", THINK_TEMPLATE)
    engine = str(write_reasoning_engine(engine_dir))
    with running_instance(tmp_path_factory.mktemp("thinking") / "home", engine, dict.fromkeys(MODELS, thinker),
                          config=f"thinking_answer_tokens = {ANSWER_TOKENS}\n") as inst:
        yield inst


@pytest.fixture(autouse=True)
def fresh_log(engine_dir: Path) -> None:
    (engine_dir / "reasoning-calls.jsonl").unlink(missing_ok=True)


def calls(engine_dir: Path, model: str) -> list[dict[str, Any]]:
    return [c for c in read_calls(engine_dir) if c["alias"] == model]


# --- each dialect: the request asking for a budget, and its answer read back in one shape ---


class Answer:
    def __init__(self) -> None:
        self.reasoning, self.text, self.finish = "", "", ""
        self.statuses: list[dict[str, Any]] = []
        self.prompt_tokens = self.completion_tokens = -1


def openai(inst: Instance, model: str, budget: int, stream: bool, **extra: Any) -> Answer:
    body = {"model": model, "messages": ASK, "thinking_budget": budget, "stream": stream, **extra}
    if stream:
        body["stream_options"] = {"include_usage": True}
    out = Answer()
    for chunk in _post(inst, "/v1/chat/completions", body, stream):
        if "lmforge" in chunk:
            out.statuses.append(chunk["lmforge"])
        for choice in chunk.get("choices", []):
            got = choice.get("delta") or choice.get("message") or {}
            out.reasoning += got.get("reasoning_content") or ""
            out.text += got.get("content") or ""
            out.finish = choice.get("finish_reason") or out.finish
        if chunk.get("usage"):
            out.prompt_tokens = chunk["usage"]["prompt_tokens"]
            out.completion_tokens = chunk["usage"]["completion_tokens"]
    return out


def ollama(inst: Instance, model: str, budget: int, stream: bool, **extra: Any) -> Answer:
    body = {"model": model, "messages": ASK, "think": True, "thinking_budget": budget, "stream": stream, **extra}
    out = Answer()
    for line in _post(inst, "/api/chat", body, stream):
        if "lmforge" in line:
            out.statuses.append(line["lmforge"])
        out.reasoning += line["message"].get("thinking") or ""
        out.text += line["message"]["content"]
        if line["done"]:
            out.finish = line["done_reason"]
            out.prompt_tokens, out.completion_tokens = line["prompt_eval_count"], line["eval_count"]
    return out


def anthropic(inst: Instance, model: str, budget: int, stream: bool, **extra: Any) -> Answer:
    body = {"model": model, "messages": ASK, "max_tokens": ANTHROPIC_MAX, "stream": stream,
            "thinking": {"type": "enabled", "budget_tokens": budget}, **extra}
    out = Answer()
    finishes = {"end_turn": "stop", "max_tokens": "length"}
    for event in _post(inst, "/v1/messages", body, stream):
        if event.get("type") == "ping" and "lmforge" in event:
            out.statuses.append(event["lmforge"])
        delta = event.get("delta") or {}
        blocks = event.get("content") or []  # a whole message
        out.reasoning += delta.get("thinking", "") + "".join(b["thinking"] for b in blocks if b["type"] == "thinking")
        out.text += delta.get("text", "") + "".join(b["text"] for b in blocks if b["type"] == "text")
        reason = delta.get("stop_reason") or event.get("stop_reason")
        out.finish = finishes.get(reason, reason) if reason else out.finish
        if usage := event.get("usage"):
            out.completion_tokens = usage["output_tokens"]
            out.prompt_tokens = usage.get("input_tokens", out.prompt_tokens)
    return out


def _post(inst: Instance, path: str, body: dict[str, Any], stream: bool) -> list[dict[str, Any]]:
    """The answer's objects: the whole one, or each event of the stream (SSE data lines, or NDJSON lines)."""
    conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=60)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    assert resp.status == 200, data
    if not stream:
        return [json.loads(data)]
    lines = [line.removeprefix("data:").strip() for line in data.splitlines()]
    return [json.loads(line) for line in lines if line.startswith("{")]


DIALECTS: dict[str, Callable[..., Answer]] = {"openai": openai, "ollama": ollama, "anthropic": anthropic}
MAX_TOKENS = {"openai": None, "ollama": None, "anthropic": ANTHROPIC_MAX}


def answer_budget(dialect: str, used: int) -> int:
    cap = MAX_TOKENS[dialect]
    return ANSWER_TOKENS if cap is None else cap - used


# --- the cases ---


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("model", ["think:field", "think:tags"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_budget_that_runs_out_gets_its_answer_from_a_second_call(
        inst: Instance, engine_dir: Path, dialect: str, model: str, stream: bool) -> None:
    got = DIALECTS[dialect](inst, model, 3, stream)
    thought = "".join(REASONING[:3])
    assert (got.reasoning, got.text, got.finish) == (thought, REPLY, "stop")
    if stream:
        assert got.statuses == [{"status": "call2_prefill", "reasoning_len": len(thought),
                                 "remaining_tokens": answer_budget(dialect, 3)}]
    # Usage adds up over both calls: one message asked, then two (the prefill).
    assert (got.prompt_tokens, got.completion_tokens) == (3 * PROMPT_TOKENS_PER_MESSAGE, 3 + len(ANSWER))
    first, second = (c["body"] for c in calls(engine_dir, model))
    assert first["max_tokens"] == 3 and first["chat_template_kwargs"]["enable_thinking"] is True
    assert second["messages"][-1] == {"role": "assistant", "content": f"<think>\n{thought}\n</think>\n\n"}
    assert second["chat_template_kwargs"]["enable_thinking"] is False and second["continue_final_message"] is True
    assert second["max_tokens"] == answer_budget(dialect, 3)
    assert not {"think", "thinking_budget", "thinking"} & set(first)  # LMForge's own fields stay here


@pytest.mark.parametrize("model", ["think:field", "think:tags"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_thought_that_ends_within_its_budget_is_one_call(
        inst: Instance, engine_dir: Path, dialect: str, model: str) -> None:
    got = DIALECTS[dialect](inst, model, 100, True)
    assert (got.reasoning, got.text, got.finish, got.statuses) == (THOUGHT, REPLY, "stop", [])
    assert (got.prompt_tokens, got.completion_tokens) == (PROMPT_TOKENS_PER_MESSAGE, len(REASONING) + len(ANSWER))
    assert len(calls(engine_dir, model)) == 1


@pytest.mark.parametrize("model", ["think:empty", "think:tags-empty"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_empty_first_call_falls_back_to_a_plain_answer(
        inst: Instance, engine_dir: Path, dialect: str, model: str) -> None:
    got = DIALECTS[dialect](inst, model, 5, True)
    assert (got.reasoning, got.text, got.finish) == ("", REPLY, "stop")
    assert got.statuses == [{"status": "answer_fallback", "reasoning_len": 0,
                             "remaining_tokens": answer_budget(dialect, 0)}]
    _, second = (c["body"] for c in calls(engine_dir, model))
    assert second["messages"] == ASK and second["chat_template_kwargs"]["enable_thinking"] is False


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_client_that_leaves_during_the_first_call_cancels_it_and_no_second_call_starts(
        inst: Instance, engine_dir: Path, dialect: str) -> None:
    """think:hold writes one reasoning token, then holds its call open until the client side closes it."""
    path, body = {"openai": ("/v1/chat/completions", {"thinking_budget": 5}),
                  "ollama": ("/api/chat", {"think": True, "thinking_budget": 5}),
                  "anthropic": ("/v1/messages", {"max_tokens": 100,
                                                 "thinking": {"type": "enabled", "budget_tokens": 5}})}[dialect]
    conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=30)
    conn.request("POST", path, json.dumps({"model": "think:hold", "messages": ASK, "stream": True, **body}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    seen = b""
    while REASONING[0].encode() not in seen:  # the first reasoning token reached the client
        chunk = resp.read1(4096)
        if not chunk:
            pytest.fail(f"the stream ended before its first reasoning token: {seen!r}")
        seen += chunk
    conn.close()
    wait_until(lambda: {"closed": True, "alias": "think:hold"} in read_calls(engine_dir), timeout=10,
               what="the engine's first call to be closed")
    wait_until(lambda: inst.slot("think:hold")["inflight"] == 0, timeout=10, what="the lease to come back")
    assert [c for c in calls(engine_dir, "think:hold") if "body" in c] == [calls(engine_dir, "think:hold")[0]]
    _, requests = inst.get("/lf/requests?model=think:hold&limit=1")
    assert requests["requests"][0]["outcome"] == "client_gone"  # type: ignore[index]


def test_max_tokens_caps_thinking_and_answer_together(inst: Instance, engine_dir: Path) -> None:
    got = openai(inst, "think:field", 3, True, max_tokens=6)
    assert (got.reasoning, got.text, got.finish) == ("".join(REASONING[:3]), "".join(ANSWER[:3]), "length")
    assert got.statuses[0]["remaining_tokens"] == 3


def test_a_budget_as_large_as_max_tokens_leaves_no_answer_call(inst: Instance, engine_dir: Path) -> None:
    got = openai(inst, "think:field", 4, False, max_tokens=4)
    assert (got.reasoning, got.text, got.finish) == ("".join(REASONING[:4]), "", "length")
    assert len(calls(engine_dir, "think:field")) == 1


def test_reasoning_left_out_of_a_stream_when_asked_is_still_in_a_whole_answer(inst: Instance) -> None:
    hidden = openai(inst, "think:tags", 3, True, extra_body={"stream_reasoning_deltas": False})
    assert (hidden.reasoning, hidden.text) == ("", REPLY)
    whole = openai(inst, "think:tags", 3, False, extra_body={"stream_reasoning_deltas": False})
    assert (whole.reasoning, whole.text) == ("".join(REASONING[:3]), REPLY)


@pytest.mark.parametrize("model", ["think:field", "think:tags", "think:tags-echo"])
def test_an_answer_begun_in_the_first_call_is_continued_once(inst: Instance, engine_dir: Path, model: str) -> None:
    """The budget runs out two words into the answer; the second call continues it. think:tags-echo repeats
    the prefill at the start of its answer, as llama-server does when not told to continue the turn."""
    got = ollama(inst, model, len(REASONING) + 2, True)
    assert (got.reasoning, got.text) == (THOUGHT, REPLY)
    _, second = (c["body"] for c in calls(engine_dir, model))
    assert second["messages"][-1]["content"] == f"<think>\n{THOUGHT}\n</think>\n\n{''.join(ANSWER[:2])}"


def test_an_answer_call_that_fails_after_the_thought_streamed_ends_the_stream_with_an_error(
        inst: Instance, engine_dir: Path) -> None:
    """No retry on a fresh lease: the client already has the first call's reasoning."""
    chunks = _post(inst, "/v1/chat/completions", {"model": "think:refuse", "messages": ASK, "thinking_budget": 3,
                                                   "stream": True}, stream=True)
    assert chunks[-1]["error"]["message"].endswith("refused its answer call: prefill refused"), chunks[-1]
    assert len(calls(engine_dir, "think:refuse")) == 2


def test_a_budget_the_request_did_not_name_leaves_half_of_max_tokens_to_the_answer(
        inst: Instance, engine_dir: Path) -> None:
    code, reply = inst.post("/v1/messages", {"model": "think:field", "messages": ASK, "max_tokens": 8,
                                              "thinking": {"type": "adaptive"}})
    assert code == 200, reply
    (first, *_) = (c["body"] for c in calls(engine_dir, "think:field"))
    assert first["max_tokens"] == 4


def test_several_choices_with_a_thinking_budget_are_a_400(inst: Instance) -> None:
    code, reply = inst.post("/v1/chat/completions", {"model": "think:field", "messages": ASK, "n": 2, "think": True})
    assert code == 400 and reply["error"]["param"] == "n", reply  # type: ignore[index]


def test_thinking_off_is_one_plain_call_with_the_switch_off(inst: Instance, engine_dir: Path) -> None:
    got = openai(inst, "think:field", 3, False, think=False)
    assert (got.reasoning, got.text, got.statuses) == ("", REPLY, [])
    (call,) = calls(engine_dir, "think:field")
    assert call["body"]["chat_template_kwargs"] == {"enable_thinking": False} and "think" not in call["body"]


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"think": "max"}, "think"),
    ("/v1/chat/completions", {"thinking_budget": 0}, "thinking_budget"),
    ("/v1/chat/completions", {"extra_body": {"stream_reasoning_deltas": "yes"}}, "stream_reasoning_deltas"),
    ("/api/chat", {"thinking_budget": "lots"}, "thinking_budget"),
    ("/v1/messages", {"max_tokens": 10, "thinking": {"type": "enabled", "budget_tokens": 10}},
     "thinking.budget_tokens"),
])
def test_bad_thinking_fields_are_a_400_naming_them(inst: Instance, path: str, body: dict[str, Any],
                                                   param: str) -> None:
    code, reply = inst.post(path, {"model": "think:field", "messages": ASK, "max_tokens": 10, **body})
    assert code == 400, reply
    message = reply["error"] if path.startswith("/api") else reply["error"]["message"]  # type: ignore[index]
    assert message.startswith(param), message


def test_metrics_count_thinking_requests_second_calls_and_reasoning_tokens(inst: Instance) -> None:
    def sample(name: str, labels: str) -> float:
        code, text = inst.get("/metrics")
        line = next((x for x in str(text).splitlines() if x.startswith(f"{name}{{{labels}}}")), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = [sample("lmforge_thinking_requests_total", 'dialect="ollama"'),
              sample("lmforge_thinking_second_calls_total", 'kind="call2_prefill"'),
              sample("lmforge_reasoning_tokens_total", 'model="think:field"')]
    ollama(inst, "think:field", 3, True)
    wait_until(lambda: sample("lmforge_thinking_requests_total", 'dialect="ollama"') == before[0] + 1, timeout=5,
               what="the request to be counted")
    assert sample("lmforge_thinking_second_calls_total", 'kind="call2_prefill"') == before[1] + 1
    assert sample("lmforge_reasoning_tokens_total", 'model="think:field"') == before[2] + 3


def test_both_calls_are_served_on_one_lease(inst: Instance) -> None:
    """The manager marks each lease's start and end with the request id in the engine's log."""
    code, reply = inst.post("/v1/chat/completions", {"model": "think:field", "messages": ASK, "thinking_budget": 3},
                            headers={"X-Request-Id": "one-lease-for-two-calls"})
    assert code == 200 and reply["choices"][0]["message"]["content"] == REPLY  # type: ignore[index]
    ended = "request one-lease-for-two-calls ended"
    wait_until(lambda: ended in inst.log("manager"), timeout=10, what="the lease's end mark")
    marks = [line for line in inst.log("manager").splitlines() if "request one-lease-for-two-calls " in line]
    assert sum("started" in m for m in marks) == 1 and sum("ended" in m for m in marks) == 1, marks
