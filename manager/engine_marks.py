"""Request ids in the engines' logs: a line when a request's lease is granted and one when it comes back.

llama-server logs each request by its own task number only, and never sees the id the gateway answers with
(X-Request-Id). So the slot table, which grants and takes back every lease, marks both ends (a Mark effect),
and this writer appends each mark to the engine's log and logs it in the manager's own: `grep <request id>
logs/*` finds the gateway's, the manager's and the engine's lines of one request, and the engine's own lines
between its two marks. The writes run on one thread of their own, in order, never on the manager's loop.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from manager.config import Paths
from manager.effects import Mark

log = logging.getLogger("lmforge.manager")


class EngineMarks:
    def __init__(self, paths: Paths) -> None:
        self._paths = paths
        self._marks: queue.SimpleQueue[Mark] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    def put(self, mark: Mark) -> None:
        if self._writer is None:  # marks still queued at exit are lost with the daemon thread: only log lines
            self._writer = threading.Thread(target=self._write, name="engine-marks", daemon=True)
            self._writer.start()
        self._marks.put(mark)

    def _write(self) -> None:
        while True:
            mark = self._marks.get()
            log.info("%s", mark.text)
            append_line(self._paths.engine_log(mark.slug), mark.text)


def append_line(path: os.PathLike[str], text: str) -> None:
    """One line appended, in one write: the engine appends to the same file (O_APPEND), so lines never mix.
    A log that is not there (the engine's is being rotated, or it was adopted without one) is skipped."""
    text = text.replace("\n", "\\n").replace("\r", "\\r")  # one line, whatever an id holds
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} lmforge: {text}\n".encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return
    try:
        os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)
