"""The thinking budget: two engine calls on one lease, whatever the dialect and however the engine writes reasoning.

Call 1 thinks, capped at the budget. If it ends on its own (stop, tool
calls) that is the answer. If the budget runs out, call 2 continues from the
reasoning, closed as a `<think>…</think>` turn with thinking disabled (the
prefill), preceded by a `call2_prefill` status; if call 1 produced nothing,
call 2 is a plain answer (`answer_fallback`). Usage adds up over both calls.
A client that leaves during call 1 cancels the request (the gateway cancels
handlers of clients that leave), so call 2 never starts.
"""

from __future__ import annotations

import contextlib
from typing import Any

from gateway.dataplane.engine import Engine, EngineBroke, EngineGone, Events
from gateway.dataplane.model import Event, Finish, ReasoningDelta, Status, TextDelta, ThinkPlan, ToolCallDelta, Usage
from gateway.errors import ApiError
from gateway.thinking.intent import switched
from gateway.thinking.tags import split_tags

PATH = "/v1/chat/completions"


async def chat_events(engine: Engine, body: dict[str, Any], *, plan: ThinkPlan | None, split: bool,
                      streamed: bool) -> Events:
    """The events of a chat request's engine work: one call, or the two of a thinking budget.

    `split` takes inline <think> tags for reasoning (a model that thinks); `streamed`
    drops reasoning from the stream when the request asked for it not to be streamed."""
    if plan is None:
        events = await engine.events(PATH, body)
        return split_tags(events) if split else events
    engine.record.thinking = "one_call"
    events = _two_calls(engine, body, plan, await engine.events(PATH, _first_call(body, plan)))
    return events if plan.stream_deltas or not streamed else _without_reasoning(events)


def _first_call(body: dict[str, Any], plan: ThinkPlan) -> dict[str, Any]:
    cap, budget = _max_tokens(body), plan.budget
    if cap is not None:
        # A budget the request did not name leaves the answer half of max_tokens at least.
        budget = min(budget, cap if plan.named else max(1, cap // 2))
    return _with_thinking({**body, "max_tokens": budget}, on=True)


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return value if isinstance(value, int) else None


def _with_thinking(body: dict[str, Any], *, on: bool) -> dict[str, Any]:
    body.pop("max_completion_tokens", None)  # max_tokens, set by the caller, is the cap of this call
    return switched(body, {"chat_template_kwargs": {"enable_thinking": on}})


class _Call1:
    """What the first call produced, as it streams."""

    def __init__(self) -> None:
        self.reasoning: list[str] = []
        self.text: list[str] = []
        self.reasoning_events = 0
        self.tool_calls = False
        self.usage = Usage()
        self.finish = Finish("stop")

    def take(self, batch: list[Event]) -> list[Event]:
        out: list[Event] = []
        for event in batch:
            if isinstance(event, Usage):
                self.usage = event
                continue
            if isinstance(event, Finish):
                self.finish = event
                continue
            if isinstance(event, ReasoningDelta):
                self.reasoning.append(event.text)
                self.reasoning_events += 1
            elif isinstance(event, TextDelta):
                self.text.append(event.text)
            elif isinstance(event, ToolCallDelta):
                self.tool_calls = True
            out.append(event)
        return out

    @property
    def reasoning_tokens(self) -> int:
        """Tokens spent thinking: all of the call's when it wrote no answer, else one per reasoning delta
        (engines send a token a chunk)."""
        if not self.reasoning:
            return 0
        used = self.usage.completion_tokens
        return used if not self.text else min(used, self.reasoning_events)


async def _two_calls(engine: Engine, body: dict[str, Any], plan: ThinkPlan, first: Events) -> Events:
    call1 = _Call1()
    async with contextlib.aclosing(split_tags(first)) as events:  # closed at once when the client leaves
        async for batch in events:
            if out := call1.take(batch):
                yield out
    usage = call1.usage
    usage.reasoning_tokens = call1.reasoning_tokens
    # Finished within its budget: that was the answer. A tool call cut short cannot be continued.
    if call1.finish.reason != "length" or call1.tool_calls:
        yield _end(engine, usage, call1.finish)
        return
    cap = _max_tokens(body)
    remaining = plan.answer_tokens if cap is None else cap - usage.completion_tokens
    if remaining < 1:  # max_tokens went to thinking
        yield _end(engine, usage, Finish("length"))
        return
    reasoning, answered = "".join(call1.reasoning), "".join(call1.text)
    status = "call2_prefill" if (reasoning + answered).strip() else "answer_fallback"
    engine.record.thinking = status
    yield [Status(status=status, reasoning_len=len(reasoning), remaining_tokens=remaining)]
    second = await _open_second(engine, _second_call(body, reasoning, answered, remaining, status))
    answer = _Continuation(answered)
    finish = Finish("stop")
    async with contextlib.aclosing(split_tags(second)) as events:
        async for batch in events:
            out: list[Event] = []
            for event in batch:
                if isinstance(event, TextDelta):  # call 1 delivered the reasoning: only the answer is kept
                    if text := answer.feed(event.text):
                        out.append(TextDelta(text))
                elif isinstance(event, ReasoningDelta):
                    answer.thought_repeated()
                elif isinstance(event, Usage):
                    usage = _sum(usage, event)
                elif isinstance(event, Finish):
                    finish = event
                else:
                    out.append(event)
            if out:
                yield out
    if rest := answer.flush():
        yield [TextDelta(rest)]
    yield _end(engine, usage, finish)


def _second_call(body: dict[str, Any], reasoning: str, answered: str, remaining: int,
                 status: str) -> dict[str, Any]:
    second = {**body, "max_tokens": remaining}
    if status == "call2_prefill":
        prefill = {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answered}"}
        # vLLM and SGLang continue a final assistant turn only when told; llama-server then does not echo it.
        second |= {"messages": [*body["messages"], prefill], "continue_final_message": True,
                   "add_generation_prompt": False}
    return _with_thinking(second, on=False)


async def _open_second(engine: Engine, body: dict[str, Any]) -> Events:
    """Call 2, once call 1 has been streamed: a failure now ends the client's stream (no retry can undo it)."""
    try:
        return await engine.events(PATH, body)
    except EngineGone as gone:
        engine.failed = engine.gone = True  # the lease says so: the manager fails the slot at once
        raise EngineBroke(f"the engine serving {engine.model} went away before its answer call: "
                          f"{gone.__cause__}") from None
    except ApiError as err:
        engine.failed = True
        raise EngineBroke(f"the engine serving {engine.model} refused its answer call: {err.message}") from None


class _Continuation:
    """Call 2's answer as the client gets it.

    An engine that repeats the prefill (llama-server does, unless told to
    continue the turn) starts with the thought, then the answer begun in call 1:
    only then is that answer dropped from the start. With nothing answered yet,
    the blank lines after the closed thought are dropped too."""

    def __init__(self, answered: str) -> None:
        self.answered = answered.lstrip()
        self.echo = ""  # the text to drop from the start, once the engine showed it repeats the prefill
        self.pending: str | None = ""  # None once the start is settled

    def thought_repeated(self) -> None:
        if self.pending == "":
            self.echo = self.answered

    def feed(self, text: str) -> str:
        if self.pending is None:
            return text
        self.pending += text
        head = self.pending.lstrip()
        if self.echo:
            if len(head) < len(self.echo) and self.echo.startswith(head):
                return ""  # could still be the repeated answer
            out = head[len(self.echo):] if head.startswith(self.echo) else self.pending
        elif self.answered:
            out = self.pending  # a continuation: its leading space is the answer's own
        elif head:
            out = head
        else:
            return ""
        self.pending = None
        return out

    def flush(self) -> str:
        """What was held when the answer ended: a short answer that was only the start of the echo is no answer."""
        held, self.pending = self.pending, None
        if held is None or (self.echo and self.echo.startswith(held.lstrip())):
            return ""
        return held if self.answered else held.lstrip()


def _sum(a: Usage, b: Usage) -> Usage:
    return Usage(prompt_tokens=a.prompt_tokens + b.prompt_tokens,
                 completion_tokens=a.completion_tokens + b.completion_tokens,
                 prompt_ms=a.prompt_ms + b.prompt_ms, predicted_ms=a.predicted_ms + b.predicted_ms,
                 reasoning_tokens=a.reasoning_tokens)


def _end(engine: Engine, usage: Usage, finish: Finish) -> list[Event]:
    engine.record.usage(usage)
    return [usage, finish]


async def _without_reasoning(events: Events) -> Events:
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for batch in events:
            if out := [e for e in batch if not isinstance(e, ReasoningDelta)]:
                yield out
