"""A fake engine whose /health stops answering, on cue, while it keeps computing.

Stands in for a real llama-server on a starved machine: every core busy with its
own generation threads, it answers /health late while its requests still stream
tokens. While the file `<dir>/busy` exists it burns CPU and leaves each /health
request unanswered; once the file is gone it stops computing, and /health still
hangs: a real hang. Each /health request is counted in `<dir>/probes`.

Run as: python busy_engine.py DIR --port N (other llama-server arguments ignored).
"""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DIR = Path(sys.argv[1]) if __name__ == "__main__" else Path()
NEVER = threading.Event()  # never set
hung = threading.Event()  # set once /health first goes unanswered: it never answers again


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        with (DIR / "probes").open("a") as f:
            f.write("probe\n")
        if (DIR / "busy").exists() or hung.is_set():
            hung.set()
            NEVER.wait()  # unanswered: the client's timeout ends it
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def burn() -> None:
    while True:
        if (DIR / "busy").exists():
            sum(i * i for i in range(10_000))  # the stand-in for token generation
        else:
            time.sleep(0.01)  # poll the cue file while idle


if __name__ == "__main__":
    threading.Thread(target=burn, daemon=True).start()
    port = int(sys.argv[sys.argv.index("--port") + 1])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
