"""Native handlers' pure checks: only a caller on this machine may name files on it; what the status stream shows."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.api.native.handlers import event_frame, require_loopback
from gateway.errors import ApiError
from gateway.middleware.auth import PEER
from gateway.middleware.peers import Peer, parse_address
from manager.protocol import QueueEntry, QueueEvent, SlotKind


def request_from(remote: str | None):  # type: ignore[no-untyped-def]
    """The request as the auth middleware leaves it: with the caller it worked out (socket or trusted proxy)."""
    request = make_mocked_request("POST", "/lf/model/import")
    request[PEER] = Peer(parse_address(remote) if remote else None, trusted=True)
    return request


@pytest.mark.parametrize("remote", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_a_caller_on_this_machine_may_import_by_path(remote: str) -> None:
    require_loopback(request_from(remote), "model import")


@pytest.mark.parametrize("remote", ["10.0.0.7", "192.168.1.20", "::2", None])
def test_any_other_caller_is_forbidden(remote: str | None) -> None:
    with pytest.raises(ApiError) as refused:
        require_loopback(request_from(remote), "model import")
    assert refused.value.status == 403 and "model import" in refused.value.message


def test_a_queue_event_names_requests_by_their_request_id_in_order_and_never_by_peer() -> None:
    queued = tuple(QueueEntry(peer="gateway-77", req_id=n, trace_id=t) for n, t in ((4, "first"), (5, "second")))
    event = QueueEvent(seq=9, model="m", kind=SlotKind.CHAT, queued=queued)
    head, data = event_frame(event).decode().split("\n", 1)
    assert head == "event: queue" and "gateway-77" not in data
    assert json.loads(data.removeprefix("data: ")) == {
        "seq": 9, "model": "m", "kind": "chat", "queued": 2, "loading": False,
        "positions": [{"ahead": 0, "request_id": "first"}, {"ahead": 1, "request_id": "second"}]}
