"""HTTP error bodies: the OpenAI error object, and how manager error codes map to statuses."""

from __future__ import annotations

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
    ErrorCode.BACKING_OFF: 503,
    ErrorCode.ENGINE_MISSING: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.PROTOCOL_MISMATCH: 500,
    ErrorCode.INTERNAL: 500,
}


class OpenAIError(Exception):
    """Raised by handlers; rendered by the error middleware as an OpenAI error object."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.retry_after = retry_after

    @property
    def type(self) -> str:
        if self.status == 401:
            return "authentication_error"
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        headers = {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after else None
        return web.json_response(self.body(), status=self.status, headers=headers, dumps=json.dumps)


def from_manager(exc: ManagerError | ManagerUnavailable) -> OpenAIError:
    if isinstance(exc, ManagerUnavailable):
        return OpenAIError(503, f"LMForge manager unavailable: {exc}", code="manager_unavailable", retry_after=2)
    return OpenAIError(STATUS[exc.code], exc.message, code=exc.code.value, retry_after=exc.retry_after_s)
