"""GatewayClient: the CLI's HTTP client for the gateway's native and OpenAI APIs (stdlib only).

Every way a request can go wrong comes out as a GatewayError whose message is one line for the user.
"""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Iterator


class GatewayError(Exception):
    """No usable answer from the gateway; the message says what happened, in one line."""


class GatewayDown(GatewayError):
    """Nothing answers on the gateway's address; the message says how to start it."""


class ApiError(GatewayError):
    """The gateway answered with an HTTP error; `message` is the error body's own message."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class BadReply(GatewayError):
    """Something answered, but not as LMForge does: not JSON, not HTTP, or cut short."""


class GatewayClient:
    """`key`: sent as a Bearer token when set. `tls_cert`: the gateway serves HTTPS with this certificate,
    which is trusted as is (the CLI talks to its own server, so the certificate need not name 127.0.0.1)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0, *, key: str = "", tls_cert: str = "") -> None:
        self.host, self.port, self.timeout, self.key = host, port, timeout, key
        self._tls = None
        if tls_cert:
            self._tls = ssl.create_default_context(cafile=tls_cert)
            self._tls.check_hostname = False
            self._tls.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the trust anchor

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.port}"

    def _open(self, method: str, path: str, body: object | None, timeout: float | None) -> http.client.HTTPResponse:
        timeout = timeout or self.timeout
        if self._tls is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                                                            context=self._tls)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise GatewayDown(f"LMForge is not running at {self.url} ({exc.strerror}); "
                              "start it with `lmforge start`") from None
        except TimeoutError:
            raise GatewayError(f"LMForge at {self.url} did not answer {method} {path} within {timeout:g}s") from None
        except OSError as exc:
            raise GatewayDown(f"LMForge at {self.url} did not answer: {exc}") from None
        except http.client.HTTPException as exc:
            raise BadReply(f"{self.url} did not answer as LMForge does ({type(exc).__name__}); "
                           f"is another program using port {self.port}?") from None
        if resp.status >= 400:
            message, code = _error_of(self._read(resp, path))
            raise ApiError(resp.status, message or f"{method} {path} failed with HTTP {resp.status}", code)
        return resp

    def _read(self, resp: http.client.HTTPResponse, path: str) -> bytes:
        try:
            return resp.read()
        except TimeoutError:
            raise GatewayError(f"LMForge at {self.url} stopped answering {path} midway (timed out)") from None
        except (OSError, http.client.HTTPException) as exc:
            raise BadReply(f"the answer to {path} was cut short ({type(exc).__name__})") from None

    def _json(self, data: bytes, path: str) -> dict:
        try:
            value = json.loads(data)
        except ValueError:
            raise BadReply(f"LMForge at {self.url} answered {path} with something that is not JSON: "
                           f"{_preview(data)}") from None
        if not isinstance(value, dict):
            raise BadReply(f"LMForge at {self.url} answered {path} with JSON that is not an object: {_preview(data)}")
        return value

    def get(self, path: str, timeout: float | None = None) -> dict:
        return self._json(self._read(self._open("GET", path, None, timeout), path), path)

    def post(self, path: str, body: object, timeout: float | None = None) -> dict:
        return self._json(self._read(self._open("POST", path, body, timeout), path), path)

    def delete(self, path: str, timeout: float | None = None) -> dict:
        return self._json(self._read(self._open("DELETE", path, None, timeout), path), path)

    def patch(self, path: str, body: object, timeout: float | None = None) -> dict:
        return self._json(self._read(self._open("PATCH", path, body, timeout), path), path)

    def text(self, path: str, timeout: float | None = None) -> str:
        """The body of a GET answered with text, not JSON."""
        return self._read(self._open("GET", path, None, timeout), path).decode("utf-8", errors="replace")

    def events(self, path: str, body: object | None, timeout: float | None = None
               ) -> Iterator[tuple[str | None, dict]]:
        """(event name, data) of an SSE response with named events, as they arrive; pings are skipped.
        POSTs `body`; with None, a GET."""
        resp = self._open("GET" if body is None else "POST", path, body, timeout)
        name = None
        try:
            for raw in self._lines(resp, path):
                line = raw.decode("utf-8", errors="replace").strip()
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    if name != "ping":
                        yield name, self._json(line[5:].strip().encode(), path)
                    name = None
        finally:  # closing the generator hangs up at once: the server sees its client leave
            resp.close()

    def stream(self, path: str, body: object, timeout: float | None = None) -> Iterator[dict]:
        """The `data:` payloads of an SSE response, parsed, until [DONE]."""
        resp = self._open("POST", path, body, timeout)
        for raw in self._lines(resp, path):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                return
            event = self._json(payload.encode(), path)
            if "error" in event:
                message, code = _error_of(payload.encode())
                raise ApiError(502, message, code)
            yield event

    def _lines(self, resp: http.client.HTTPResponse, path: str) -> Iterator[bytes]:
        # Iterating the response reads the socket: a timeout or a dropped
        # connection mid-stream surfaces here, not in _open.
        while True:
            try:
                raw = resp.readline()
            except TimeoutError:
                raise GatewayError(f"LMForge at {self.url} stopped streaming {path} (timed out)") from None
            except (OSError, http.client.HTTPException) as exc:
                raise BadReply(f"the stream from {path} was cut short ({type(exc).__name__})") from None
            if not raw:
                return
            yield raw

    def healthy(self) -> bool:
        try:
            self.get("/health", timeout=2.0)
            return True
        except GatewayError:
            return False


def _error_of(data: bytes) -> tuple[str, str | None]:
    """(message, code) of an error body: the OpenAI error object, or whatever text came back."""
    try:
        err = json.loads(data).get("error")
    except (ValueError, AttributeError):
        return data.decode(errors="replace").strip()[:500], None
    if isinstance(err, dict):
        code = err.get("code")
        return str(err.get("message", err)), None if code is None else str(code)
    return str(err), None


def _preview(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return repr(text if len(text) <= 80 else text[:77] + "...")
