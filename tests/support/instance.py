"""Instance: a real LMForge (manager, prober, downloader, gateway) in a temporary home.

Each process is started as `python -m ...` exactly as supervisord runs it, on a
free port, and stopped with SIGTERM; tests that need supervisord itself use
`lmforge start` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import shutil
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import psutil

PROGRAMS = {"manager": "manager", "prober": "prober", "downloader": "catalog", "gateway": "gateway"}
# No test may reach huggingface.co: a test with a hub of its own sets HF_ENDPOINT to it; every other one gets a
# port nothing listens on (9, discard: privileged, so no test server takes it), so a pull fails fast and offline.
NO_HUB = "http://127.0.0.1:9"
LOCAL_HOSTS = "127.0.0.1,localhost"  # a proxy in the environment must not carry the calls to local servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # poll interval of a condition wait


async def wait_until_async(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    """wait_until inside a running loop; the predicate may be a coroutine function or a plain one."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)  # poll interval of a condition wait


TEST_CPU_POLICY = 'cpu_policy = "exclusive"\n'


class Instance:
    def __init__(self, home: Path, llama_server: str, config: str = "", address: str = "127.0.0.1") -> None:
        self.home = home
        self.address = address  # where tests reach the gateway: its bind address when that is not loopback
        self.port = free_port()
        home.mkdir(parents=True, exist_ok=True)
        if "cpu_policy" not in config:
            # The default (auto) restarts an idle engine when another model comes or goes: a test about anything
            # else must not see its engines change under it. tests/integration/test_cores.py tests auto.
            config = TEST_CPU_POLICY + config
        (home / "config.toml").write_text(config)
        self.env = dict(os.environ, LMFORGE_HOME=str(home), LMFORGE_PORT=str(self.port),
                        LMFORGE_LLAMA_SERVER=llama_server, PYTHONUNBUFFERED="1",
                        HF_ENDPOINT=NO_HUB, NO_PROXY=LOCAL_HOSTS, no_proxy=LOCAL_HOSTS)
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self, *names: str, wait: bool = True, prefix: tuple[str, ...] = ()) -> "Instance":
        """`prefix`: a command each process runs under, e.g. ("taskset", "-c", "0") to narrow its CPUs."""
        (self.home / "logs").mkdir(exist_ok=True)
        for name in names or PROGRAMS:
            log = open(self.home / "logs" / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(
                [*prefix, sys.executable, "-m", PROGRAMS[name]], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait and "gateway" in self.procs:
            wait_until(self.healthy, timeout=20, what="gateway /health 200")
        return self

    def healthy(self) -> bool:
        try:
            return self.get("/health")[0] == 200
        except OSError:
            return False

    def stop(self, name: str | None = None, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        names = [name] if name else ["gateway", "prober", "downloader", "manager"]
        for n in names:
            proc = self.procs.get(n)
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def lmforge(self, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """The CLI against this instance; `stdin` is its input (else none: an empty, closed stdin)."""
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=self.env, capture_output=True,
                              text=True, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                              timeout=timeout)

    # --- HTTP, stdlib only, for synchronous tests ---

    def request(self, method: str, path: str, body: object | None = None, raw: bytes | None = None,
                timeout: float = 120, headers: dict[str, str] | None = None) -> tuple[int, object]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, _parse(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, _parse(err.read())

    def get(self, path: str, timeout: float = 10) -> tuple[int, object]:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: object | None = None, **kw) -> tuple[int, object]:  # type: ignore[no-untyped-def]
        return self.request("POST", path, body, **kw)

    def status(self) -> dict:
        code, body = self.get("/lf/status")
        assert code == 200, body
        return body  # type: ignore[return-value]

    def slot_if_answering(self, model: str, kind: str = "chat") -> dict | None:
        """The slot, or None while the gateway cannot reach a manager (for waits across a restart)."""
        code, body = self.get("/lf/status")
        if code != 200:
            return None
        return next((s for s in body["slots"] if s["model"] == model and s["kind"] == kind), None)  # type: ignore[index]

    def slot(self, model: str, kind: str = "chat") -> dict | None:
        return next((s for s in self.status()["slots"] if s["model"] == model and s["kind"] == kind), None)

    def engine_pids(self) -> list[int]:
        return [s["pid"] for s in self.status()["slots"] if s["pid"]]

    def log(self, name: str) -> str:
        return (self.home / "logs" / f"{name}.log").read_text(errors="replace")


def _parse(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")


def llama_servers_of(home: Path) -> list[psutil.Process]:
    """Engine processes whose model lives under `home` (so parallel tests do not see each other's): real ones,
    and fake engines (a python script named llama-server) before they exec the real one."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any(part.endswith("llama-server") for part in cmd[:2]) and any(str(home) in part for part in cmd):
            found.append(proc)
    return found


@contextlib.contextmanager
def running_instance(home: Path, llama_server: str, models: dict[str, Path], config: str = "",
                     address: str = "127.0.0.1") -> Iterator[Instance]:
    """A started Instance with `models` imported (for fixtures wider than one test); all it started is stopped."""
    inst = prepare_instance(home, llama_server, models, config, address)
    try:
        yield inst.start()
    finally:
        clean_up(inst)


def prepare_instance(home: Path, llama_server: str, models: dict[str, Path], config: str = "",
                     address: str = "127.0.0.1") -> Instance:
    """An Instance, not started yet, whose store holds `models` (name: GGUF path)."""
    from catalog.store import ModelStore
    from manager.config import Paths

    inst = Instance(home, llama_server, config, address)
    store = ModelStore(Paths(home))
    for name, path in models.items():
        store.import_gguf(path, name)
    return inst


def clean_up(inst: Instance) -> None:
    """Stop everything `inst` started: nothing of ours may outlive a test, not even an engine it lost track of."""
    from manager.config import Paths

    inst.stop()
    for proc in llama_servers_of(inst.home):
        proc.kill()
    shutil.rmtree(Paths(inst.home).runtime, ignore_errors=True)
