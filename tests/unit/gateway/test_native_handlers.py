"""Native handlers' pure parts: what the status stream shows."""

from __future__ import annotations

import json

from gateway.api.native.handlers import event_frame
from manager.protocol import QueueEntry, QueueEvent, SlotKind


def test_a_queue_event_names_requests_by_their_request_id_in_order_and_never_by_peer() -> None:
    queued = tuple(QueueEntry(peer="gateway-77", req_id=n, trace_id=t) for n, t in ((4, "first"), (5, "second")))
    event = QueueEvent(seq=9, model="m", kind=SlotKind.CHAT, queued=queued)
    head, data = event_frame(event).decode().split("\n", 1)
    assert head == "event: queue" and "gateway-77" not in data
    assert json.loads(data.removeprefix("data: ")) == {
        "seq": 9, "model": "m", "kind": "chat", "queued": 2, "loading": False,
        "positions": [{"ahead": 0, "request_id": "first"}, {"ahead": 1, "request_id": "second"}]}
