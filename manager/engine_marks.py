"""Request ids in the engines' logs: a line when a request's lease is granted and one when it comes back.

llama-server logs each request by its own task number only, and never sees the id the gateway answers with
(X-Request-Id). So the manager, which grants every lease, writes the id into the engine's log at both ends,
and logs the same in its own: `grep <request id> logs/*` finds the gateway's, the manager's and the engine's
lines of one request, and the engine's own lines between its two marks.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from manager.protocol import AcquireReply, ReleaseNotice

if TYPE_CHECKING:
    from manager.table import SlotTable

log = logging.getLogger("lmforge.manager")

MAX_TRACKED = 10_000  # leases whose release was never heard (a peer that died) are forgotten past this


class EngineMarks:
    def __init__(self, table: SlotTable, logs: Path) -> None:
        self._table, self._logs = table, logs
        self._leases: OrderedDict[str, tuple[str, Path | None]] = OrderedDict()  # lease id: (request id, log)

    def granted(self, reply: AcquireReply) -> None:
        if not reply.trace_id:
            return
        slot = self._table.slots.get((reply.model, reply.kind))
        path = self._logs / f"engine-{slot.file_slug}.log" if slot is not None else None
        self._leases[reply.lease_id] = (reply.trace_id, path)
        while len(self._leases) > MAX_TRACKED:
            self._leases.popitem(last=False)
        log.info("request %s: lease %s on %s", reply.trace_id, reply.lease_id, reply.model)
        _mark(path, f"request {reply.trace_id} started (lease {reply.lease_id})")

    def released(self, notice: ReleaseNotice) -> None:
        found = self._leases.pop(notice.lease_id, None)
        if found is None:
            return
        trace, path = found
        log.info("request %s: lease %s returned (%s)", trace, notice.lease_id, notice.outcome)
        _mark(path, f"request {trace} ended ({notice.outcome})")


def _mark(path: Path | None, text: str) -> None:
    """One line appended, in one write: the engine appends to the same file (O_APPEND), so lines never mix.
    A log that is not there (the engine's is being rotated, or it was adopted without one) is skipped."""
    if path is None:
        return
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
