"""Every client is bounded: body size, compressed bodies, JSON depth, and deadlines on headers and body.

One real instance with small limits (4 MiB bodies, 1 s header and body deadlines);
the clients are raw sockets that misbehave on their own schedule.
"""

from __future__ import annotations

import hashlib
import select
import struct
import time
import zlib
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from tests.support.instance import Instance, running_instance
from tests.support.raw_client import (TRICKLE_S, connect, read_response, request_head, trickle_until_dropped,
                                      wait_closed)

MiB = 1024**2
LIMIT_MB = 4
DEADLINE_S = 1.0
CONFIG = f"max_body_mb = {LIMIT_MB}\nheader_timeout_s = {DEADLINE_S}\nbody_timeout_s = {DEADLINE_S}\n"
# A drop is seen within one trickle step of the deadline; the rest is a loaded machine's scheduling.
DROP_SLACK_S = 2.0
# The server's clock may start a little before the client's (at accept), and asyncio runs timers up to
# its clock resolution early: a drop this soon is still at the deadline.
EARLY_S = DEADLINE_S - 0.05


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    with running_instance(tmp_path_factory.mktemp("bounded") / "home", llama_server,
                          {"tiny:chat": models_dir / "chat.gguf"}, CONFIG) as inst:
        yield inst


def assert_dialect(path: str, body: object, status: int, anthropic_type: str) -> str:
    """The error body is in the route's own format; its message."""
    assert isinstance(body, dict), body
    if path.startswith("/api/"):
        assert set(body) == {"error"} and isinstance(body["error"], str), body
        return body["error"]
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] == anthropic_type, body
        return body["error"]["message"]
    assert body["error"]["type"] == ("invalid_request_error" if status < 500 else "server_error"), body
    return body["error"]["message"]


DIALECT_ROUTES = ["/v1/chat/completions", "/api/chat", "/v1/messages"]


# --- body size ---


@pytest.mark.parametrize("path", DIALECT_ROUTES)
def test_a_declared_body_over_the_limit_is_413_before_a_byte_of_it_is_sent(inst: Instance, path: str) -> None:
    with connect(inst.port) as sock:
        sock.sendall(request_head("POST", path, inst.port, length=LIMIT_MB * MiB + 1))
        status, _, body = read_response(sock)
    assert status == 413
    assert f"{LIMIT_MB} MiB" in assert_dialect(path, body, status, "request_too_large")


def test_a_chunked_body_is_cut_off_with_413_as_it_crosses_the_limit(inst: Instance) -> None:
    piece = b"a" * (256 * 1024)
    sent = 0
    with connect(inst.port) as sock:
        sock.sendall(request_head("POST", "/api/generate", inst.port, Transfer_Encoding="chunked"))
        opening = b'{"model": "tiny:chat", "prompt": "'
        sock.sendall(b"%x\r\n%s\r\n" % (len(opening), opening))
        answered = False
        while not answered:  # the body never ends: only a server that counts as it reads can answer
            assert sent < 4 * LIMIT_MB * MiB, "a chunked body four times the limit was read without an answer"
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            answered = bool(select.select([sock], [], [], 0.02)[0])  # a pace the server keeps up with
        status, _, body = read_response(sock)
    assert status == 413 and f"{LIMIT_MB} MiB" in assert_dialect("/api/generate", body, 413, "")
    # Answered as the body crossed the limit: not before, and not long after (socket buffers in between).
    assert LIMIT_MB * MiB - len(piece) <= sent <= LIMIT_MB * MiB + 8 * len(piece), f"{sent / MiB:.2f} MiB sent"


def gzip_bomb(gib: int) -> bytes:
    """A valid gzip stream of `gib` GiB of zeros, about 1 MB per GiB.

    After a full flush deflate starts afresh, so every 16 MiB of zeros compresses to the
    same segment: one is made and repeated, then the final empty block and the trailer."""
    segment_size, zeros = 16 * MiB, bytes(16 * MiB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    segment = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    count = gib * 1024**3 // segment_size
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    return first + segment * (count - 1) + b"\x03\x00" + struct.pack("<II", crc, (count * segment_size) % 2**32)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_gzip_bomb_is_refused_with_415_unread_and_the_gateway_memory_does_not_jump(inst: Instance,
                                                                                     path: str) -> None:
    bomb = gzip_bomb(2)
    assert len(bomb) < LIMIT_MB * MiB  # under the size limit: refused for what it is, not for its size
    assert zlib.decompressobj(31).decompress(bomb, 1024) == bytes(1024)  # a real gzip stream of zeros
    gateway = psutil.Process(inst.procs["gateway"].pid)
    before = gateway.memory_info().rss
    started = time.monotonic()
    with connect(inst.port) as sock:
        sock.sendall(request_head("POST", path, inst.port, length=len(bomb), Content_Encoding="gzip") + bomb)
        status, _, body = read_response(sock)
    took = time.monotonic() - started
    assert status == 415 and "uncompressed" in assert_dialect(path, body, 415, "")
    assert took < 2.0, f"the refusal took {took:.2f}s"
    grew = gateway.memory_info().rss - before
    assert grew < 32 * MiB, f"the gateway grew by {grew / MiB:.0f} MiB"


# --- JSON depth ---


@pytest.mark.parametrize("path", [*DIALECT_ROUTES, "/lf/model/switch", "/api/create"])
def test_json_nested_10000_deep_is_a_400_in_the_route_dialect(inst: Instance, path: str) -> None:
    deep = b'{"model": "tiny:chat", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    code, body = inst.post(path, raw=deep)
    assert code == 400
    assert "more than 64 deep" in assert_dialect(path, body, 400, "invalid_request_error")
    assert "unhandled error" not in inst.log("gateway")


def test_json_nested_64_deep_passes_the_decoder_and_65_deep_does_not(inst: Instance) -> None:
    def nested(depth: int) -> bytes:  # the body object is the first level
        return b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}], "x": ' \
            + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    code, body = inst.post("/v1/chat/completions", raw=nested(65))
    assert code == 400 and "more than 64 deep" in body["error"]["message"]
    code, body = inst.post("/v1/chat/completions", raw=nested(64))
    assert code == 404 and body["error"]["code"] == "model_not_found"  # decoded, then looked up


# --- deadlines ---


def test_a_header_trickling_client_is_dropped_within_its_deadline(inst: Instance) -> None:
    with connect(inst.port) as sock:
        took = trickle_until_dropped(sock, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200)
    assert EARLY_S <= took < DEADLINE_S + DROP_SLACK_S, f"dropped after {took:.2f}s"
    assert inst.healthy()


def test_a_body_trickling_client_is_dropped_within_its_deadline(inst: Instance) -> None:
    body = b'{"model": "tiny:chat", "messages": [{"role": "user", "content": "' + b"a" * 200 + b'"}]}'
    with connect(inst.port) as sock:
        sock.sendall(request_head("POST", "/v1/chat/completions", inst.port, length=len(body)))
        took = trickle_until_dropped(sock, body)
    assert EARLY_S <= took < DEADLINE_S + DROP_SLACK_S, f"dropped after {took:.2f}s"


def test_a_silent_connection_is_closed_after_the_header_deadline(inst: Instance) -> None:
    started = time.monotonic()
    with connect(inst.port) as sock:
        assert wait_closed(sock, DEADLINE_S + DROP_SLACK_S)
        assert time.monotonic() - started >= EARLY_S


def test_a_kept_alive_connection_outlives_the_header_deadline_after_a_refused_request(inst: Instance) -> None:
    """The header deadline ends when headers are in, whoever answers: here the origin check, before the rest."""
    with connect(inst.port) as sock:
        sock.sendall(request_head("GET", "/v1/models", inst.port, Origin="https://evil.example"))
        assert read_response(sock)[0] == 403
        assert not wait_closed(sock, DEADLINE_S + DROP_SLACK_S)  # idle between requests is idle_timeout_s's
        sock.sendall(request_head("GET", "/v1/models", inst.port))
        assert read_response(sock)[0] == 200


def test_a_blob_upload_that_keeps_moving_outlives_the_body_deadline(inst: Instance) -> None:
    """A model file streams in for as long as it takes; only a stalled upload is dropped."""
    pieces = [bytes([i]) * 4096 for i in range(int(3 * DEADLINE_S / TRICKLE_S))]  # 3 s of upload
    digest = "sha256:" + hashlib.sha256(b"".join(pieces)).hexdigest()
    with connect(inst.port) as sock:
        sock.sendall(request_head("POST", f"/api/blobs/{digest}", inst.port, length=sum(map(len, pieces))))
        for piece in pieces[:-1]:
            sock.sendall(piece)
            assert not select.select([sock], [], [], TRICKLE_S)[0], "the server answered or closed mid-upload"
        sock.sendall(pieces[-1])
        status, _, _ = read_response(sock)
    assert status == 201
