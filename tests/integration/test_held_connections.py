"""Connections held open: a client that stops reading a stream, and hundreds of idle sockets.

Neither may hold anything that others need: the stalled reader's lease goes back
once write_timeout_s passes, and idle sockets do not slow anyone else down.
"""

from __future__ import annotations

import json
import select
import time
from pathlib import Path

from tests.support.firehose_engine import write_firehose_engine
from tests.support.instance import wait_until
from tests.support.raw_client import connect, request_head, wait_closed

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_a_client_that_stops_reading_a_stream_is_dropped_and_its_lease_returned(
        make_instance, models_dir: Path, tmp_path: Path) -> None:
    """The firehose engine stands in for a fast engine writing a long answer (see its docstring)."""
    inst = make_instance("write_timeout_s = 1\n", {"firehose": models_dir / "chat.gguf"})
    inst.env["LMFORGE_LLAMA_SERVER"] = str(write_firehose_engine(tmp_path))
    inst.start()
    assert inst.post("/lf/model/switch", {"model": "firehose"}, timeout=30)[0] == 200

    def inflight() -> int:
        slot = inst.slot("firehose")
        return slot["inflight"] if slot else -1

    body = json.dumps({"model": "firehose", "stream": True, **CHAT}).encode()
    with connect(inst.port, rcvbuf=4096) as sock:  # and it never reads
        sock.sendall(request_head("POST", "/v1/chat/completions", inst.port, length=len(body)) + body)
        sent = time.monotonic()
        wait_until(lambda: inflight() == 1, timeout=10, what="the stream to hold a lease")
        wait_until(lambda: inflight() == 0, timeout=10, what="the stalled reader's lease to come back")
        took = time.monotonic() - sent
        assert wait_closed(sock, 10), "the stalled reader's connection is still open"
    assert 1.0 <= took < 6.0, f"the lease came back {took:.2f}s after the request"
    assert "read nothing of its answer for 1s" in inst.log("gateway")


def test_hundreds_of_idle_sockets_do_not_stop_others_from_being_served(make_instance, models_dir: Path) -> None:
    deadline_s = 3.0
    inst = make_instance(f"header_timeout_s = {deadline_s}\n", {"tiny:chat": models_dir / "chat.gguf"}).start()
    assert inst.post("/lf/model/switch", {"model": "tiny:chat"}, timeout=30)[0] == 200
    idle = [connect(inst.port) for _ in range(300)]
    tricklers = [connect(inst.port) for _ in range(20)]
    try:
        for sock in tricklers:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no more
        started = time.monotonic()
        code, body = inst.post("/v1/chat/completions", {"model": "tiny:chat", **CHAT}, timeout=30)
        took = time.monotonic() - started
        assert code == 200, body
        assert took < 2.0, f"a chat took {took:.2f}s beside 320 held sockets"
        assert select.select(idle + tricklers, [], [], 0)[0] == [], "a held socket was closed before the chat ended"
        # And the server lets go of them at their header deadline.
        for sock in idle + tricklers:
            assert wait_closed(sock, deadline_s + 5), "a held socket outlived its header deadline"
    finally:
        for sock in idle + tricklers:
            sock.close()
