"""GatewayClient against peers that misbehave: every failure is a GatewayError with a one-line message."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from gateway.cli.client import ApiError, BadReply, GatewayClient, GatewayDown, GatewayError
from tests.support.instance import free_port
from tests.support.raw_peer import RawPeer, Reply, cut_short, http, not_http, sse, stall, stall_mid_body

StartPeer = Callable[..., GatewayClient]
# Long enough for a peer that answers at once to do so on a loaded machine.
PATIENT_S = 10.0


@pytest.fixture
def peer() -> Iterator[StartPeer]:
    peers: list[RawPeer] = []

    def start(reply: Reply, timeout: float = PATIENT_S) -> GatewayClient:
        peers.append(RawPeer(reply))
        return GatewayClient("127.0.0.1", peers[-1].port, timeout=timeout)

    yield start
    for p in peers:
        p.close()


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


def test_an_openai_error_body_becomes_an_api_error_with_its_message_and_code(peer: StartPeer) -> None:
    body = b'{"error": {"message": "model \'nope\' is not installed", "code": "model_not_found"}}'
    client = peer(http("404 Not Found", body))
    with pytest.raises(ApiError) as err:
        client.post("/lf/model/switch", {"model": "nope"})
    assert (err.value.status, err.value.code) == (404, "model_not_found")
    assert one_line(err.value) == "model 'nope' is not installed"


def test_an_error_body_that_is_not_json_is_shown_as_text(peer: StartPeer) -> None:
    client = peer(http("502 Bad Gateway", b"<html>bad gateway</html>", "text/html"))
    with pytest.raises(ApiError) as err:
        client.get("/lf/status")
    assert err.value.status == 502 and one_line(err.value) == "<html>bad gateway</html>"


def test_an_empty_error_body_still_says_what_failed(peer: StartPeer) -> None:
    client = peer(http("500 Internal Server Error", b""))
    with pytest.raises(ApiError, match="GET /lf/status failed with HTTP 500"):
        client.get("/lf/status")


@pytest.mark.parametrize(("body", "fragment"), [(b"<html>", "not JSON: '<html>'"), (b"[1, 2]", "not an object")])
def test_a_success_that_is_not_a_json_object_is_a_bad_reply(peer: StartPeer, body: bytes, fragment: str) -> None:
    client = peer(http("200 OK", body))
    with pytest.raises(BadReply) as err:
        client.get("/lf/status")
    assert fragment in one_line(err.value)


def test_a_peer_that_does_not_speak_http_is_named(peer: StartPeer) -> None:
    client = peer(not_http)
    with pytest.raises(BadReply) as err:
        client.get("/lf/status")
    assert f"is another program using port {client.port}" in one_line(err.value)


def test_a_reply_cut_short_is_a_bad_reply(peer: StartPeer) -> None:
    client = peer(cut_short)
    with pytest.raises(BadReply) as err:
        client.get("/lf/status")
    assert "cut short" in one_line(err.value)


def test_a_peer_that_never_answers_times_out(peer: StartPeer) -> None:
    client = peer(stall, timeout=0.5)  # a peer that never answers: the timeout is all that ends the wait
    with pytest.raises(GatewayError) as err:
        client.get("/lf/status")
    assert "did not answer GET /lf/status within 0.5s" in one_line(err.value)


def test_a_peer_that_stops_mid_body_times_out(peer: StartPeer) -> None:
    client = peer(stall_mid_body, timeout=0.5)
    with pytest.raises(GatewayError) as err:
        client.get("/lf/status")
    assert "stopped answering /lf/status midway" in one_line(err.value)


def test_nothing_listening_is_gateway_down_with_the_fix() -> None:
    client = GatewayClient("127.0.0.1", free_port(), timeout=0.5)
    with pytest.raises(GatewayDown) as err:
        client.get("/lf/status")
    assert "start it with `lmforge start`" in one_line(err.value)
    assert client.healthy() is False


def test_a_stream_yields_events_until_done(peer: StartPeer) -> None:
    client = peer(sse(b'data: {"n": 1}\n\n', b": comment\n\n", b'data: {"n": 2}\n\n', b"data: [DONE]\n\n",
                      b'data: {"n": 3}\n\n'))
    assert [e["n"] for e in client.stream("/v1/chat/completions", {})] == [1, 2]


def test_an_error_event_in_a_stream_is_an_api_error(peer: StartPeer) -> None:
    event = b'data: {"error": {"message": "engine failed mid-stream", "code": "engine_failed"}}\n\n'
    client = peer(sse(b'data: {"n": 1}\n\n', event))
    events = client.stream("/v1/chat/completions", {})
    assert next(events) == {"n": 1}
    with pytest.raises(ApiError) as err:
        next(events)
    assert err.value.code == "engine_failed" and one_line(err.value) == "engine failed mid-stream"


def test_garbage_in_a_stream_is_a_bad_reply(peer: StartPeer) -> None:
    client = peer(sse(b"data: {half an event\n\n"))
    with pytest.raises(BadReply, match="not JSON"):
        list(client.stream("/v1/chat/completions", {}))
