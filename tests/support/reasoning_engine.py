"""A scripted OpenAI-compatible engine that stands in for a reasoning model (Qwen3, the DeepSeek-R1 distills).

It thinks on cue, which no tiny random model can: asked to think
(`chat_template_kwargs.enable_thinking`, true by default), it writes REASONING,
then ANSWER, one token per chunk, stopping at `max_tokens` with finish
"length". A request whose last message is an assistant turn (the thinking
workflow's prefill) gets ANSWER only. The model's name (`--alias`) picks how:

- "tags": reasoning inline in the content, between <think> tags split across
  chunks (engines that do not parse reasoning); otherwise as `reasoning_content`;
- "empty": a thinking call writes nothing and ends on "length";
- "hold": after its first reasoning token the call waits for the client to hang up;
- "echo": the prefill is repeated at the start of the answer, as llama-server
  does when not told to continue the turn;
- "refuse": the answer call (the prefill) is refused with a 500.

An answer call continues ANSWER after what the prefill's answer already holds.

Every request body, and each connection the client closed early, is a JSON line
in the calls log, for tests to read. /health answers 200, so the manager takes it
for a ready llama-server. `write_reasoning_engine` makes the executable to point
LMFORGE_LLAMA_SERVER at.
"""

from __future__ import annotations

import json
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REASONING = ["Let", " me", " think", " step", " by", " step", " about", " it"]
ANSWER = ["The", " answer", " is", " 42", "."]
PROMPT_TOKENS_PER_MESSAGE = 10

WRAPPER = """#!{python}
import os, sys
os.execv({python!r}, [{python!r}, {script!r}, "--calls-log", {log!r}, *sys.argv[1:]])
"""


def write_reasoning_engine(directory: Path) -> Path:
    """The executable; its calls log is `calls_log(directory)`."""
    path = directory / "llama-server"
    path.write_text(WRAPPER.format(python=sys.executable, script=__file__, log=str(calls_log(directory))))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def calls_log(directory: Path) -> Path:
    return directory / "reasoning-calls.jsonl"


def read_calls(directory: Path) -> list[dict[str, Any]]:
    path = calls_log(directory)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Script:
    """The chunks one request gets: (field, text, counts as a token), and the finish reason."""

    def __init__(self, alias: str, body: dict[str, Any]) -> None:
        kwargs = body.get("chat_template_kwargs") or {}
        messages = body.get("messages") or []
        cap = body.get("max_tokens") or 10**6
        self.tags = "tags" in alias
        self.chunks: list[tuple[str, str, bool]] = []
        prefill = messages[-1].get("content") if messages and messages[-1].get("role") == "assistant" else None
        if prefill is not None:
            if "echo" in alias:
                self.chunks.append(("content", prefill, False))
            begun = prefill.rpartition("</think>")[2].strip()  # the answer call 1 had begun: continued, not redone
            done = next(n for n in range(len(ANSWER) + 1) if "".join(ANSWER[:n]).strip() == begun)
            self._tokens("content", ANSWER[done:])
        elif kwargs.get("enable_thinking", True) is not False:
            if "empty" not in alias:
                self._thought()
                self._tokens("content", ANSWER)
        else:
            self._tokens("content", ANSWER)
        counted = 0
        self.finish = "stop"
        for i, (_, _, token) in enumerate(self.chunks):
            if token and counted == cap:
                self.chunks, self.finish = self.chunks[:i], "length"
                break
            counted += token
        if "empty" in alias and prefill is None and kwargs.get("enable_thinking", True) is not False:
            self.finish = "length"  # a call that ran out having written nothing
        self.completion_tokens = min(counted, cap)
        self.prompt_tokens = PROMPT_TOKENS_PER_MESSAGE * len(messages)

    def _thought(self) -> None:
        if not self.tags:
            self._tokens("reasoning_content", REASONING)
            return
        self.chunks += [("content", "<th", False), ("content", "ink>", False)]
        self._tokens("content", REASONING)
        self.chunks += [("content", "</th", False), ("content", "ink>\n\n", False)]

    def _tokens(self, field: str, words: list[str]) -> None:
        self.chunks += [(field, word, True) for word in words]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    alias = ""
    log_path = Path()
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._send(200, "application/json", b'{"status":"ok"}')

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self._log({"path": self.path, "body": body})
        if "refuse" in self.alias and body.get("continue_final_message"):
            self._send(500, "application/json", b'{"error": {"code": 500, "message": "prefill refused"}}')
            return
        script = Script(self.alias, body)
        if not body.get("stream"):
            self._send(200, "application/json", json.dumps(self._whole(script)).encode())
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for n, (field, text, _) in enumerate(script.chunks):
                self._event({"choices": [{"index": 0, "delta": {field: text}, "finish_reason": None}]})
                if "hold" in self.alias and n == 0:
                    self.connection.recv(1)  # blocks until the client closes the connection
                    self._log({"closed": True})
                    return
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": script.finish}]})
            self._event({"choices": [], "usage": {"prompt_tokens": script.prompt_tokens,
                                                  "completion_tokens": script.completion_tokens}})
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            self._log({"closed": True})
        self.close_connection = True

    def _whole(self, script: Script) -> dict[str, Any]:
        fields: dict[str, str] = {}
        for field, text, _ in script.chunks:
            fields[field] = fields.get(field, "") + text
        message = {"role": "assistant", "content": fields.get("content", ""),
                   "reasoning_content": fields.get("reasoning_content")}
        return {"object": "chat.completion", "choices": [{"index": 0, "message": message,
                                                          "finish_reason": script.finish}],
                "usage": {"prompt_tokens": script.prompt_tokens, "completion_tokens": script.completion_tokens}}

    def _event(self, chunk: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps({"object": "chat.completion.chunk", **chunk}).encode() + b"\n\n")
        self.wfile.flush()

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _log(self, entry: dict[str, Any]) -> None:
        with self.lock, open(self.log_path, "a") as out:
            out.write(json.dumps({"alias": self.alias, **entry}) + "\n")

    def log_message(self, *args: object) -> None:
        pass


def main(argv: list[str]) -> None:
    def arg(name: str) -> str:
        return argv[argv.index(name) + 1] if name in argv else ""

    Handler.alias, Handler.log_path = arg("--alias"), Path(arg("--calls-log"))
    ThreadingHTTPServer(("127.0.0.1", int(arg("--port"))), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
