"""HTTP errors: one exception for every API, rendered in the caller's own dialect.

Handlers raise `ApiError(status, message, code=..., param=...)`; the error
middleware renders it as the OpenAI error object, Ollama's `{"error": "..."}`
or Anthropic's `{"type": "error", "error": {...}}`, chosen by the route.
"""

from __future__ import annotations

import enum
import json

from aiohttp import web

from manager.client import ManagerError, ManagerUnavailable
from manager.protocol import ErrorCode

STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.NOT_SUPPORTED: 400,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.LOAD_FAILED: 503,
    ErrorCode.NO_CAPACITY: 503,
    ErrorCode.CONCURRENCY_LIMIT: 503,
    ErrorCode.BACKING_OFF: 503,
    ErrorCode.ENGINE_MISSING: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.PROTOCOL_MISMATCH: 500,
    ErrorCode.INTERNAL: 500,
}

# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 415: "invalid_request_error",
                   429: "rate_limit_error",
                   503: "overloaded_error", 529: "overloaded_error"}


class Dialect(enum.StrEnum):
    OPENAI = "openai"
    OLLAMA = "ollama"
    ANTHROPIC = "anthropic"


def dialect_of(path: str) -> Dialect:
    if path.startswith("/api/"):
        return Dialect.OLLAMA
    if path.startswith("/v1/messages"):
        return Dialect.ANTHROPIC
    return Dialect.OPENAI


class ApiError(Exception):
    """Raised by handlers; rendered by the error middleware in the route's own dialect."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None,
        retry_after: float | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = dict(headers or {})
        if retry_after:
            self.headers["Retry-After"] = str(max(1, round(retry_after)))

    @property
    def type(self) -> str:
        if self.status == 401:
            return "authentication_error"
        if self.status == 403:
            return "permission_error"
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self, dialect: Dialect = Dialect.OPENAI) -> dict[str, object]:
        if dialect == Dialect.OLLAMA:
            return {"error": self.message}
        if dialect == Dialect.ANTHROPIC:
            kind = ANTHROPIC_TYPES.get(self.status, "api_error")
            return {"type": "error", "error": {"type": kind, "message": self.message}}
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, dialect: Dialect = Dialect.OPENAI) -> web.Response:
        return web.json_response(self.body(dialect), status=self.status, headers=self.headers, dumps=json.dumps)


def from_manager(exc: ManagerError | ManagerUnavailable) -> ApiError:
    if isinstance(exc, ManagerUnavailable):
        return ApiError(503, f"LMForge manager unavailable: {exc}", code="manager_unavailable", retry_after=2)
    return ApiError(STATUS[exc.code], exc.message, code=exc.code.value, retry_after=exc.retry_after_s)
