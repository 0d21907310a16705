"""GatewayClient: the CLI's HTTP client for the gateway's native and OpenAI APIs (stdlib only)."""

from __future__ import annotations

import http.client
import json
from typing import Iterator


class GatewayDown(Exception):
    """Nothing answers on the gateway's address; the message says how to start it."""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class GatewayClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _open(self, method: str, path: str, body: object | None, timeout: float | None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise GatewayDown(f"LMForge is not running at {self.url} ({exc.strerror}); "
                              "start it with `lmforge start`") from None
        except OSError as exc:
            raise GatewayDown(f"LMForge at {self.url} did not answer: {exc}") from None
        if resp.status >= 400:
            raise ApiError(resp.status, _error_message(resp.read()))
        return resp

    def get(self, path: str, timeout: float | None = None) -> object:
        return json.loads(self._open("GET", path, None, timeout).read())

    def post(self, path: str, body: object, timeout: float | None = None) -> object:
        return json.loads(self._open("POST", path, body, timeout).read())

    def stream(self, path: str, body: object, timeout: float | None = None) -> Iterator[dict]:
        """The `data:` payloads of an SSE response, parsed, until [DONE]."""
        resp = self._open("POST", path, body, timeout)
        for raw in resp:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                return
            event = json.loads(payload)
            if "error" in event:
                raise ApiError(502, _error_message(json.dumps(event).encode()))
            yield event

    def healthy(self) -> bool:
        try:
            self.get("/health", timeout=2.0)
            return True
        except (GatewayDown, ApiError):
            return False


def _error_message(data: bytes) -> str:
    try:
        err = json.loads(data).get("error")
    except (ValueError, AttributeError):
        return data.decode(errors="replace").strip()[:500] or "request failed"
    if isinstance(err, dict):
        return str(err.get("message", err))
    return str(err)
