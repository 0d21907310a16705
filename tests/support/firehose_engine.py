"""A fake engine that answers every chat with an endless OpenAI stream, as fast as it can be written.

Stands in for a fast engine producing a very long answer: megabytes a second,
enough to fill the socket buffers between the gateway and a client that stopped
reading, which a tiny real model's few tokens never do. /health answers 200 so
the manager takes it for a ready llama-server.

Run as: python firehose_engine.py --port N (other llama-server arguments ignored);
`write_firehose_engine` makes an executable to point LMFORGE_LLAMA_SERVER at.
"""

from __future__ import annotations

import json
import stat
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHUNK = ("data: " + json.dumps({"object": "chat.completion.chunk", "choices": [
    {"index": 0, "delta": {"content": "x" * 16384}, "finish_reason": None}]}) + "\n\n").encode()

WRAPPER = """#!{python}
import os, sys
os.execv({python!r}, [{python!r}, {script!r}, *sys.argv[1:]])
"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._send_json(b'{"status":"ok"}')

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")  # the body runs until the reader leaves
        self.end_headers()
        try:
            while True:
                self.wfile.write(CHUNK)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_json(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def write_firehose_engine(directory: Path) -> Path:
    path = directory / "llama-server"
    path.write_text(WRAPPER.format(python=sys.executable, script=__file__))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


if __name__ == "__main__":
    port = int(sys.argv[sys.argv.index("--port") + 1])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
