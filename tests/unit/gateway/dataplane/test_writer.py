"""FrameWriter: frames queued while the loop is busy leave in one write; a failed write stops the stream."""

from __future__ import annotations

import asyncio

import pytest

from gateway.dataplane.writer import MAX_QUEUED, FrameWriter


class Recorder:
    """Stands in for aiohttp's StreamResponse: records each write; can be told the client left."""

    def __init__(self, fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.fail = fail

    async def write(self, data: bytes) -> None:
        await asyncio.sleep(0)  # a real write may wait for the socket
        if self.fail:
            raise ConnectionResetError("client left")
        self.writes.append(data)


async def test_frames_produced_without_a_pause_leave_in_one_write() -> None:
    resp = Recorder()
    out = FrameWriter(resp)  # type: ignore[arg-type]
    for n in range(5):
        await out.write(b"%d\n" % n)
    await out.flush()
    assert resp.writes == [b"0\n1\n2\n3\n4\n"]


async def test_a_quiet_stream_sends_each_frame_when_it_comes() -> None:
    resp = Recorder()
    out = FrameWriter(resp)  # type: ignore[arg-type]
    for n in range(3):
        await out.write(b"%d\n" % n)
        await asyncio.sleep(0.01)  # the engine is slower than the writer
    await out.flush()
    assert resp.writes == [b"0\n", b"1\n", b"2\n"]


async def test_a_slow_client_holds_up_the_producer_at_the_queue_limit() -> None:
    resp = Recorder()
    out = FrameWriter(resp)  # type: ignore[arg-type]
    for _ in range(MAX_QUEUED * 3):
        await out.write(b"x")
        assert len(out.queued) <= MAX_QUEUED
    await out.flush()
    assert b"".join(resp.writes) == b"x" * MAX_QUEUED * 3


async def test_a_client_that_left_stops_the_stream_at_the_next_frame() -> None:
    out = FrameWriter(Recorder(fail=True))  # type: ignore[arg-type]
    await out.write(b"first")
    await asyncio.sleep(0.01)
    with pytest.raises(ConnectionResetError):
        await out.write(b"second")
    out.close()
