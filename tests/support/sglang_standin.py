"""A stand-in for SGLang's HTTP server (`python -m sglang.launch_server`), for tests on machines without a GPU.

A real SGLang needs torch with CUDA and an NVIDIA GPU, which these machines lack. This server takes the same
command line the adapter builds (argparse with exactly the flags manager/engines/sglang.py passes, checked against
SGLang 0.5.23's server_args; any other flag is an error, exit 2, as in SGLang) and answers the part of SGLang's
HTTP surface LMForge uses, as sglang/srt/entrypoints/http_server.py does:

- GET /health_generate (and /health): 503 until "loaded", SGLANG_STANDIN_LOAD_S seconds after the start, then 200.
  It writes SGLang's load log lines on the way (Load weight begin/end, KV Cache is allocated, Memory pool end,
  CUDA graph begin, fired up).
- POST /v1/chat/completions: a fixed reply, whole or streamed (SSE); with --reasoning-parser the reasoning comes as
  reasoning_content, without it inline in <think> tags.
- POST /release_memory_occupation and /resume_memory_occupation with a JSON object body ({"tags": [...]}
  optional): 200 with `null`. As in SGLang, without --enable-memory-saver they answer 200 and release nothing;
  without --enable-weights-cpu-backup the weights do not survive a release (weights_valid turns false).
- GET /get_server_info: the parsed arguments, and the state: loaded, memory_released, weights_valid, health
  probes refused while loading, faults.

Injected faults, not SGLang's behaviour: SGLang has no answer for what LMForge must never ask of it, so where it
would fail on its own terms the stand-in answers as below, and lists the request in `faults` (tests of normal
flows assert that list empty; tests of a fault assert what the runner or adapter does with it):
- a generating health probe or a chat while the memory is released: 500 and 503 ({"error": {"message"}}) here;
  SGLang would run the model on GPU memory it has given up;
- a chat after the weights did not survive: 500 here; SGLang would answer from whatever the memory now holds;
- a release with a request running, a second release, a resume while not released: 400 {"error": {"message"}}
  here; SGLang asserts on them (or acts on state it does not have) in its scheduler, which ends the engine.

SGLANG_STANDIN_RECORD names a file where it writes, at start, its argv, parsed arguments, pid and the CUDA and
SGLang variables of its environment. `write_standin_package` makes the directory to put on PYTHONPATH so that
`python -m sglang.launch_server` runs this file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPLY = "The answer is 42."
REASONING = "Let me think."
RECORD_ENV = "SGLANG_STANDIN_RECORD"
LOAD_ENV = "SGLANG_STANDIN_LOAD_S"
ENV_SHOWN = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "HF_HUB_OFFLINE")
# Names SGLang 0.5.23 accepts for --reasoning-parser (sglang/srt/parser/reasoning_parser_names.py), in part.
REASONING_PARSERS = ("auto", "deepseek-r1", "deepseek-v3", "glm45", "gpt-oss", "qwen3", "qwen3-thinking")

LAUNCHER = """import runpy
runpy.run_path({script!r}, run_name="__main__")
"""


def write_standin_package(directory: Path) -> Path:
    """A directory holding a package `sglang` whose `launch_server` module runs this stand-in: put it first on
    PYTHONPATH and `python -m sglang.launch_server ARGS` runs `sglang_standin.py ARGS`."""
    package = directory / "sglang"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "launch_server.py").write_text(LAUNCHER.format(script=str(Path(__file__).resolve())))
    return directory


def parser() -> argparse.ArgumentParser:
    """SGLang's flags that the adapter passes, with SGLang's types; abbreviations are refused so that only a flag
    spelled as SGLang spells it passes."""
    p = argparse.ArgumentParser(prog="sglang.launch_server", allow_abbrev=False)
    p.add_argument("--model-path", "--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--served-model-name")
    p.add_argument("--context-length", type=int)
    p.add_argument("--mem-fraction-static", type=float)
    p.add_argument("--max-total-tokens", type=int)
    p.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1)
    p.add_argument("--max-running-requests", type=int)
    p.add_argument("--is-embedding", action="store_true")
    p.add_argument("--reasoning-parser", choices=REASONING_PARSERS)
    p.add_argument("--enable-memory-saver", action="store_true")
    p.add_argument("--enable-weights-cpu-backup", action="store_true")
    return p


class State:
    """What the server moves between: loading -> loaded; loaded <-> memory released."""

    def __init__(self, args: argparse.Namespace, load_s: float) -> None:
        self.args, self.lock = args, threading.Lock()
        self.loaded_at = time.monotonic() + load_s
        self.released = False
        self.weights_valid = True
        self.running = 0  # chat requests being answered
        self.refused_loading = 0  # health probes answered 503 while loading
        self.faults: list[str] = []
        self.probes_released: dict[str, int] = {}  # health probes answered while the memory was released, by path

    @property
    def loaded(self) -> bool:
        return time.monotonic() >= self.loaded_at

    def info(self) -> dict[str, Any]:
        return {**vars(self.args), "loaded": self.loaded, "memory_released": self.released,
                "weights_valid": self.weights_valid, "refused_loading": self.refused_loading,
                "faults": list(self.faults), "probes_released": dict(self.probes_released)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path in ("/health_generate", "/health"):
            self._health()
        elif self.path == "/get_server_info":
            with self.state.lock:
                self._json(200, self.state.info())
        else:
            self._json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        if body is None:
            return
        if self.path == "/v1/chat/completions":
            self._chat(body)
        elif self.path in ("/release_memory_occupation", "/resume_memory_occupation"):
            self._memory(self.path == "/release_memory_occupation")
        else:
            self._json(404, {"detail": "Not Found"})

    def _health(self) -> None:
        s = self.state
        with s.lock:
            if not s.loaded:
                s.refused_loading += 1
                self._send(503, b"")
                return
            # /health generates too unless SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION=0, as in SGLang.
            generates = self.path == "/health_generate" or os.environ.get(
                "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "1").lower() not in ("0", "false", "no", "n")
            if s.released:
                s.probes_released[self.path] = s.probes_released.get(self.path, 0) + 1
            if generates and s.released:  # an injected fault: see the module's docstring
                s.faults.append(f"GET {self.path} generated while the memory was released")
                self._send(500, b"")
                return
        self._send(200, b"")

    def _memory(self, release: bool) -> None:
        s = self.state
        with s.lock:
            if release and s.running:
                error = "release_memory_occupation should be called only when server is idle."
            elif release and s.released:
                error = "the memory is already released"
            elif not release and not s.released and s.args.enable_memory_saver:
                error = "the memory is not released"
            else:
                error = ""
            if error:  # an injected fault: see the module's docstring
                s.faults.append(f"POST {self.path}: {error}")
            elif s.args.enable_memory_saver:  # without the saver SGLang frees nothing, and says 200
                s.released = release
                if release and not s.args.enable_weights_cpu_backup:
                    s.weights_valid = False  # torch_memory_saver throws the content away without a CPU backup
        if error:
            self._json(400, {"error": {"message": error}})
        else:
            self._send(200, b"null", "application/json")

    def _chat(self, body: dict[str, Any]) -> None:
        s = self.state
        with s.lock:
            if s.loaded and (s.released or not s.weights_valid):  # an injected fault: see the module's docstring
                s.faults.append("POST /v1/chat/completions while the memory was released" if s.released else
                                "POST /v1/chat/completions on weights lost in a release")
            if not s.loaded or s.released or not s.weights_valid:
                refusal = (503, "the server is loading") if not s.loaded else \
                    (503, "the GPU memory is released: resume it first") if s.released else \
                    (500, "the weights were released without --enable-weights-cpu-backup and are lost")
            else:
                refusal = None
                s.running += 1
        if refusal is not None:
            self._json(refusal[0], {"error": {"message": refusal[1]}})
            return
        try:
            parts = [("reasoning_content", REASONING), ("content", REPLY)] if s.args.reasoning_parser else \
                [("content", f"<think>{REASONING}</think>{REPLY}")]
            if body.get("stream"):
                self._stream(parts)
            else:
                message: dict[str, Any] = {"role": "assistant", **dict(parts)}
                self._json(200, {"id": "standin", "object": "chat.completion", "model": self._model(),
                                 "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
        finally:
            with s.lock:
                s.running -= 1

    def _stream(self, parts: list[tuple[str, str]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        chunks = [{field: text} for field, text in parts]
        for delta, finish in [*((c, None) for c in chunks), ({}, "stop")]:
            event = {"id": "standin", "object": "chat.completion.chunk", "model": self._model(),
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True

    def _model(self) -> str:
        return self.state.args.served_model_name or self.state.args.model_path

    def _body(self) -> dict[str, Any] | None:
        """The JSON object body, as FastAPI requires for these endpoints; None after answering 422."""
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._json(422, {"detail": "the body must be a JSON object"})
            return None
        return body

    def _json(self, status: int, value: object) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def log(line: str) -> None:
    print(f"[standin] {line}", file=sys.stderr, flush=True)


def load_lines(state: State, load_s: float) -> None:
    """SGLang's load log lines, spread over the load (manager/engines/sglang.py reads them as stages), each on a
    timer of its own; the last one when the state says loaded."""
    steps = ["Load weight begin. avail mem=79.10 GB",
             "Load weight end. elapsed=0.01 s, type=StandInForCausalLM, avail mem=70.00 GB, mem usage=9.10 GB.",
             "KV Cache is allocated. #tokens: 4096, KV size: 0.50 GB",
             "Memory pool end. avail mem=60.00 GB",
             "Capture target decode CUDA graph begin. backend=full, num_tokens_per_req=1, avail mem=60.00 GB"]
    step = load_s / (len(steps) + 1)
    ready_in = max(state.loaded_at - time.monotonic(), len(steps) * step)
    timed = [(i * step, line) for i, line in enumerate(steps)] + [(ready_in, "The server is fired up and ready to roll!")]
    for delay, line in timed:
        timer = threading.Timer(delay, log, (line,))
        timer.daemon = True
        timer.start()


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    load_s = float(os.environ.get(LOAD_ENV) or 0.5)
    if record := os.environ.get(RECORD_ENV):
        env = {name: os.environ[name] for name in ENV_SHOWN if name in os.environ}
        Path(record).write_text(json.dumps({"argv": argv, "args": vars(args), "pid": os.getpid(), "env": env}))
    state = State(args, load_s)
    Handler.state = state
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    load_lines(state, load_s)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
