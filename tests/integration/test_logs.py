"""/lf/logs and `lmforge logs` on a real instance: the list (an engine's log once it loads), tails, a log followed
live across both rotation schemes, hostile names refused, and the CLI's list, tail and follow."""

from __future__ import annotations

import asyncio
import http.client
import json
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Callable

import aiohttp
import pytest

from manager.logfiles import rotate_if_large
from tests.support.instance import Instance
from tests.support.sse import read_events

PROCESSES = {"manager", "prober", "downloader", "gateway"}
WAIT_S = 20.0


@pytest.fixture
def inst(make_instance, models_dir: Path) -> Instance:
    return make_instance(models={"a": models_dir / "chat.gguf"}).start()


def append(inst: Instance, name: str, *lines: str) -> None:
    """Lines written in one append, as a program writes its log."""
    with (inst.home / "logs" / f"{name}.log").open("a") as f:
        f.write("".join(f"{line}\n" for line in lines))


def marker(what: str) -> str:
    return f"test-{what}-{uuid.uuid4().hex}"


def names(inst: Instance) -> dict[str, dict]:
    code, body = inst.get("/lf/logs")
    assert code == 200, body
    return {log["name"]: log for log in body["logs"]}  # type: ignore[index]


def raw_get(inst: Instance, path: str) -> tuple[int, dict]:
    """GET with the path sent as given, byte for byte."""
    conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


async def lines_of(events: AsyncIterator[tuple[str | None, dict]]) -> AsyncIterator[str]:
    async for name, data in events:
        if name is None:
            yield data["line"]


async def until(lines: AsyncIterator[str], found: Callable[[str], bool], what: str) -> str:
    async def first() -> str:
        async for line in lines:
            if found(line):
                return line
        raise AssertionError(f"the stream ended before {what}")
    return await asyncio.wait_for(first(), WAIT_S)


def test_the_list_has_every_process_and_an_engine_log_once_a_model_loads(inst: Instance) -> None:
    listed = names(inst)
    assert PROCESSES <= set(listed) and not any(log["kind"] == "engine" for log in listed.values())
    assert listed["manager"]["kind"] == "process" and listed["manager"]["file"] == "manager.log"
    assert listed["manager"]["size_bytes"] > 0 and listed["manager"]["modified_at"] > time.time() - 3600
    code, body = inst.post("/lf/model/switch", {"model": "a"})
    assert code == 200, body
    engine = names(inst)["engine-a-chat"]
    assert engine["kind"] == "engine" and engine["file"] == "engine-a-chat.log" and engine["size_bytes"] > 0
    order = [log["kind"] for log in inst.get("/lf/logs")[1]["logs"]]  # type: ignore[index]
    assert order == sorted(order, key=lambda kind: kind == "engine")  # processes first
    code, text = inst.get("/lf/logs/engine-a-chat?lines=3")
    assert code == 200 and len(str(text).splitlines()) == 3


def test_a_tail_is_the_last_lines_of_the_log(inst: Instance) -> None:
    written = [marker(f"tail{n}") for n in range(10)]
    append(inst, "manager", *written)
    code, text = inst.get("/lf/logs/manager?lines=50")
    assert code == 200
    tail = str(text).splitlines()
    start = tail.index(written[0])
    assert tail[start:start + 10] == written  # in order, whatever the manager wrote after them
    code, text = inst.get("/lf/logs/manager?lines=4")
    assert code == 200 and len(str(text).splitlines()) == 4
    code, body = inst.get("/lf/logs/manager?lines=lots")
    assert code == 400 and body["error"]["param"] == "lines"  # type: ignore[index]


async def test_a_followed_log_shows_lines_appended_after_the_stream_started_and_the_products_own(
        inst: Instance) -> None:
    async with aiohttp.ClientSession() as http_:
        async with http_.get(inst.url + "/lf/logs/manager/stream") as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            lines = lines_of(read_events(resp))
            mine = marker("follow")
            append(inst, "manager", mine)  # the stream is open: it follows from where the log ended
            assert await until(lines, lambda line: line == mine, "the appended line") == mine
            switch = asyncio.create_task(asyncio.to_thread(inst.post, "/lf/model/switch", {"model": "a"}))
            spawned = await until(lines, lambda line: "spawned pid" in line, "the manager's own line")
            code, body = await switch
            assert code == 200 and f"spawned pid {body['slot']['pid']}:" in spawned  # type: ignore[index]


async def test_a_followed_log_goes_on_across_copy_truncate_and_rename_rotations(inst: Instance) -> None:
    path = inst.home / "logs" / "manager.log"
    async with aiohttp.ClientSession() as http_:
        async with http_.get(inst.url + "/lf/logs/manager/stream?lines=1") as resp:
            lines = lines_of(read_events(resp))
            await until(lines, lambda line: True, "the backlog")
            before = marker("before")
            append(inst, "manager", before)
            await until(lines, lambda line: line == before, "the line before the rotation")
            assert rotate_if_large(path, 1, backups=3)  # as the manager rotates engine logs: copy, truncate
            after = marker("after-truncate")
            append(inst, "manager", after)
            await until(lines, lambda line: line == after, "the line after the truncate")
            path.rename(path.with_name("manager.log.2"))  # as supervisord rotates its programs' logs
            renamed = marker("new-file")
            path.write_text(f"{renamed}\n")
            await until(lines, lambda line: line == renamed, "the first line of the new file")
    assert before in path.with_name("manager.log.1").read_text()


def test_hostile_or_unknown_names_get_404_log_not_found(inst: Instance) -> None:
    for path in ("/lf/logs/..%2f..%2fconfig.toml", "/lf/logs/../config.toml", "/lf/logs/%2e%2e%2fmodels.json",
                 "/lf/logs/manager%00", "/lf/logs/manager.log", "/lf/logs/" + "m" * 4000,
                 "/lf/logs/..%2fconfig/stream", "/lf/logs/nosuch/stream"):
        code, body = raw_get(inst, path)
        assert code == 404 and body["error"]["code"] == "log_not_found", (path, body)


def test_the_cli_lists_tails_and_reports_unknown_names(inst: Instance) -> None:
    listing = inst.lmforge("logs")
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["NAME", "KIND", "SIZE", "MODIFIED"]
    assert PROCESSES <= {row.split()[0] for row in rows}
    as_json = inst.lmforge("logs", "--json")
    assert as_json.returncode == 0 and PROCESSES <= {log["name"] for log in json.loads(as_json.stdout)}
    written = [marker(f"cli{n}") for n in range(8)]
    append(inst, "prober", *written)
    tail = inst.lmforge("logs", "prober", "-n", "5")
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 5
    assert set(tail.stdout.splitlines()) <= set(inst.log("prober").splitlines())
    longer = inst.lmforge("logs", "prober", "-n", "50").stdout.splitlines()
    assert longer[longer.index(written[0]):][:8] == written
    unknown = inst.lmforge("logs", "nosuch")
    assert unknown.returncode == 1 and "no log named 'nosuch'" in unknown.stderr
    assert inst.lmforge("logs", "-f").returncode == 2  # following needs a NAME


class Follower:
    """`lmforge logs NAME -f` as a subprocess, its output read line by line in a thread."""

    def __init__(self, inst: Instance, name: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "logs", name, "-f", "-n", "1"],
                                     env=inst.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, wanted: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self.lines.get(timeout=left) == wanted:
                    return
            except queue.Empty:
                break
        raise AssertionError(f"`lmforge logs -f` did not print {wanted!r} within {WAIT_S}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_the_cli_follows_a_log_until_ctrl_c(inst: Instance) -> None:
    before = marker("cli-before")
    append(inst, "gateway", before)
    follower = Follower(inst, "gateway")
    try:
        follower.wait_for(before)  # the backlog of one line: it is following from here
        after = marker("cli-after")
        append(inst, "gateway", after)
        follower.wait_for(after)
        follower.proc.send_signal(signal.SIGINT)
        assert follower.proc.wait(WAIT_S) == 130
    finally:
        follower.stop()


def test_the_cli_following_a_log_exits_1_when_the_gateway_stops_and_does_not_hold_its_shutdown(
        inst: Instance) -> None:
    before = marker("cli-before")
    append(inst, "manager", before)
    follower = Follower(inst, "manager")
    try:
        follower.wait_for(before)
        started = time.monotonic()
        inst.stop("gateway")
        assert follower.proc.wait(WAIT_S) == 1
        assert time.monotonic() - started < 5.0  # the gateway's drain (10 s) did not wait on the stream
        assert follower.proc.stderr is not None and "error:" in follower.proc.stderr.read()
    finally:
        follower.stop()
