"""What a request asks of a reasoning model, read the same way in every dialect, and the plan that serves it.

Each field may sit at the top level or inside `extra_body` (some clients send
that object as it is; OpenAI's SDK merges it into the top level); `extra_body`
wins. Precedence, first present wins:

- thinking on or off: `think` (true, false, "low", "medium", "high"), then
  Anthropic's `thinking.type` ("enabled", "adaptive", "disabled"), then
  `chat_template_kwargs.enable_thinking`. A budget given alone turns it on.
- the budget: `thinking_budget`, then `thinking.budget_tokens`, then the level
  of `think` (config `thinking_budget_low|medium|high`), else `thinking_budget_medium`.
- `stream_reasoning_deltas` (default true): a streamed answer carries the
  reasoning as it comes; false keeps it out of the stream (a whole answer still has it).

`max_tokens` caps the whole completion, reasoning included (as OpenAI's,
Ollama's and Anthropic's do), and a budget the request did not name takes at
most half of it; without it the answer gets `thinking_answer_tokens`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.dataplane.model import ChatRequest, ThinkPlan
from gateway.dataplane.validate import invalid
from manager.config import Settings
from manager.protocol import ModelEntry

LEVELS = ("low", "medium", "high")
ANTHROPIC_TYPES = frozenset({"enabled", "adaptive", "disabled"})
# LMForge's own fields: they never reach the engine.
OWN = ("think", "thinking", "thinking_budget", "stream_reasoning_deltas", "extra_body")


class Intent(msgspec.Struct, kw_only=True):
    on: bool | None = None  # None: nothing asked; the model's template decides
    level: str | None = None  # think: "low" | "medium" | "high"
    budget: int | None = None  # tokens, when the request names them
    stream_deltas: bool = True

    @property
    def asked(self) -> bool:
        return self.on is not None


def read_intent(body: dict[str, Any]) -> Intent:
    """The request's thinking fields, checked: a bad one is a 400 naming it."""
    extra = body.get("extra_body")
    if extra is not None and not isinstance(extra, dict):
        raise invalid("extra_body", "must be an object")
    fields = {**body, **extra} if extra else body
    intent = Intent()
    think = fields.get("think")
    if think is not None:
        if not isinstance(think, bool) and think not in LEVELS:
            raise invalid("think", f"must be true, false or one of {', '.join(LEVELS)} (got {think!r:.40})")
        intent.on = think is not False
        intent.level = think if isinstance(think, str) else None
    anthropic = _anthropic(fields.get("thinking"))
    if intent.on is None and anthropic is not None:
        intent.on = anthropic[0]
    kwargs = fields.get("chat_template_kwargs")
    enable = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
    if enable is not None and not isinstance(enable, bool):
        raise invalid("chat_template_kwargs.enable_thinking", "must be true or false")
    if intent.on is None and enable is not None:
        intent.on = enable
    budget = fields.get("thinking_budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise invalid("thinking_budget", f"must be a positive integer: the tokens the model may think "
                      f"(got {budget!r:.40})")
    intent.budget = budget if budget is not None else (anthropic[1] if anthropic else None)
    if intent.on is None and intent.budget is not None:
        intent.on = True
    deltas = fields.get("stream_reasoning_deltas")
    if deltas is not None and not isinstance(deltas, bool):
        raise invalid("stream_reasoning_deltas", "must be true or false")
    intent.stream_deltas = deltas is not False
    return intent


def _anthropic(thinking: Any) -> tuple[bool, int | None] | None:
    """Anthropic's `thinking` object: (on, budget_tokens)."""
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in ANTHROPIC_TYPES:
        raise invalid("thinking.type", 'must be "enabled", "adaptive" or "disabled"')
    budget = thinking.get("budget_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise invalid("thinking.budget_tokens", f"must be a positive integer (got {budget!r:.40})")
    return thinking["type"] != "disabled", budget


def plan(intent: Intent, entry: ModelEntry, settings: Settings) -> ThinkPlan | None:
    """The two-call plan when thinking is asked of a model that thinks; None when one plain call serves."""
    if not intent.on or not entry.thinking:
        return None
    level = intent.level or "medium"
    budget = intent.budget or getattr(settings, f"thinking_budget_{level}")
    return ThinkPlan(budget=budget, named=intent.budget is not None, answer_tokens=settings.thinking_answer_tokens,
                     stream_deltas=intent.stream_deltas)


def with_thinking(req: ChatRequest, intent: Intent, entry: ModelEntry, settings: Settings) -> ChatRequest:
    """`req` served as `intent` asks: a budget's two calls, or one call with the template's switch set; inline
    <think> tags read as reasoning for a model that thinks."""
    req.thinking = plan(intent, entry, settings)
    req.split_tags = entry.thinking
    switched(req.extra, engine_fields(intent))
    return req


def engine_fields(intent: Intent) -> dict[str, Any]:
    """The switch the engine's chat template reads, for an intent served in one call."""
    if intent.on is None:
        return {}
    kwargs: dict[str, Any] = {"enable_thinking": intent.on}
    if intent.level:
        kwargs["reasoning_effort"] = intent.level  # gpt-oss's templates read the level
    return {"chat_template_kwargs": kwargs}


def switched(body: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """`body` (an engine body, or a request's extra fields) with `fields`' template switches merged into the
    chat_template_kwargs it may already carry; changed in place, and returned."""
    if switch := fields.get("chat_template_kwargs"):
        kwargs = body.get("chat_template_kwargs")
        body["chat_template_kwargs"] = {**(kwargs if isinstance(kwargs, dict) else {}), **switch}
    return body


def without_own(body: dict[str, Any], intent: Intent) -> dict[str, Any]:
    """An OpenAI body for the engine: LMForge's thinking fields out, the template's switch in."""
    extra = body.get("extra_body") if isinstance(body.get("extra_body"), dict) else {}
    out = {k: v for k, v in {**body, **extra}.items() if k not in OWN}  # extra_body's other fields are the engine's
    return switched(out, engine_fields(intent))


def has_own(body: dict[str, Any]) -> bool:
    return any(k in body for k in OWN)
