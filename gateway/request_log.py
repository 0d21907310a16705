"""The request log: one record per API request (model, dialect, timings, tokens, outcome), the last N kept in
memory for `GET /lf/requests` and the dashboard, and each one logged as a line carrying its request id.

The record is made by the metrics middleware (gateway/metrics.py) before anything else runs, filled in by the
data plane as the request goes (lease, first token, usage), and closed by the middleware when the answer has
been sent. The request id is the client's X-Request-Id when it is a plain token, else a fresh one: it goes to
the manager with the acquire, into the engine's log (manager/engine_marks.py), and back in the answer.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.dataplane.model import Usage

log = logging.getLogger("lmforge.gateway")

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # anything else could forge log lines or flood them
BODY_CAP = 4096  # bytes of a failed request's body kept, when capture is on
_SECRET = re.compile(r"key|token|secret|password|authorization", re.IGNORECASE)


@dataclass
class RequestRecord:
    id: str
    method: str
    route: str  # the route's template, never the raw path
    dialect: str | None  # None: not an API request (status, metrics, logs...): counted, not logged
    at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    model: str | None = None
    stream: bool = False
    status: int = 0
    outcome: str = ""
    error: str | None = None
    code: str | None = None
    queue_ms: float | None = None
    load_ms: float | None = None
    first_token_ms: float | None = None
    total_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_s: float | None = None
    reasoning_tokens: int | None = None
    # Served by the thinking workflow (gateway/thinking/workflow.py): "one_call", or the kind of its second call.
    thinking: str | None = None
    body: str | None = None  # a failed request's body, redacted, when request_log_bodies is on
    delivered: bool = False  # its last frame was written: a client that hangs up now has had its answer

    def leased(self, model: str, load_s: float, waited_s: float) -> None:
        """The manager granted the lease after `waited_s`, of which `load_s` went to loading the model."""
        self.model = model
        self.load_ms = round(load_s * 1000, 1)
        self.queue_ms = round(max(0.0, waited_s - load_s) * 1000, 1)

    def first_token(self) -> None:
        if self.first_token_ms is None:
            self.first_token_ms = round((time.monotonic() - self.started) * 1000, 1)

    def usage(self, usage: Usage) -> None:
        self.prompt_tokens, self.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        self.reasoning_tokens = usage.reasoning_tokens or None
        if usage.predicted_ms > 0 and usage.completion_tokens:
            self.tokens_per_s = round(usage.completion_tokens * 1000 / usage.predicted_ms, 2)

    def sent(self, status: int) -> None:
        """A streamed answer's last frame is written (what follows is only the chunked end)."""
        self.status, self.delivered = status, True

    def failed(self, status: int, message: str, code: str | None) -> None:
        self.error, self.code = message, code
        if status:
            self.status = status

    def broke(self, message: str) -> None:
        """The answer had started when the engine failed: the status stays, the outcome says it."""
        self.outcome, self.error = "engine_failed", message

    def to_json(self) -> dict[str, Any]:
        out = {"id": self.id, "at": round(self.at, 3), "method": self.method, "route": self.route,
               "dialect": self.dialect, "model": self.model, "stream": self.stream, "status": self.status,
               "outcome": self.outcome, "error": self.error, "code": self.code,
               "timings_ms": {"queue": self.queue_ms, "load": self.load_ms, "first_token": self.first_token_ms,
                              "total": self.total_ms},
               "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                          "reasoning": self.reasoning_tokens, "per_s": self.tokens_per_s},
               "thinking": self.thinking}
        if self.body is not None:
            out["body"] = self.body
        return out


RECORD = web.RequestKey("record", RequestRecord)


def request_id(request: web.Request) -> str:
    """The id this request is known by everywhere (see the module docstring)."""
    if (record := request.get(RECORD)) is not None:
        return record.id
    return new_id(request)


def new_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if _ID.fullmatch(given) else uuid.uuid4().hex


def record_of(request: web.Request) -> RequestRecord:
    """The request's record; a throwaway one where no middleware made one (handlers called directly)."""
    record = request.get(RECORD)
    if record is None:
        record = request[RECORD] = RequestRecord(new_id(request), request.method, request.path, None)
    return record


def dialect_of_route(route: str) -> str | None:
    if route.startswith("/v1/messages"):
        return "anthropic"
    if route.startswith("/v1/") or route == "/rerank":
        return "openai"
    if route.startswith("/api/"):
        return "ollama"
    if route.startswith("/lf/model/") and route != "/lf/model/list":  # the actions; a listing is a look
        return "native"
    return None


class RequestLog:
    """The last `size` API requests, newest last."""

    def __init__(self, size: int) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=max(1, size))

    def resize(self, size: int) -> None:
        if size != self._records.maxlen:
            self._records = deque(self._records, maxlen=max(1, size))

    def add(self, record: RequestRecord) -> None:
        self._records.append(record)

    def recent(self, limit: int, model: str | None = None) -> list[RequestRecord]:
        picked = [r for r in reversed(self._records) if model is None or r.model == model]
        return picked[:limit]


def redacted_body(data: bytes) -> str:
    """A failed request's body for the log: JSON with every secret-looking field masked, else the bytes cut
    short; Bearer tokens pasted anywhere are masked too."""
    try:
        text = json.dumps(_redact(json.loads(data)))
    except (ValueError, RecursionError):
        text = data[:BODY_CAP].decode(errors="replace")
    return re.sub(r"(?i)bearer\s+[^\s\"',;]+", "Bearer ***", text)[:BODY_CAP]


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "***" if _SECRET.search(str(k)) and v not in ("", None) else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value
