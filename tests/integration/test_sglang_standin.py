"""The SGLang adapter's real command line, run through EngineRunner against a stand-in for SGLang's server.

A real SGLang needs torch with CUDA and an NVIDIA GPU, which these machines lack. The seam is the adapter's own:
sglang.python names the Python that runs `-m sglang.launch_server`; here it is this interpreter, with a directory
on PYTHONPATH whose package `sglang.launch_server` runs tests/support/sglang_standin.py. The stand-in parses the
flags as SGLang does (an unknown one fails the start), answers 503 on /health_generate until loaded, writes
SGLang's load log lines, and moves between loaded and memory released on SGLang's park endpoints. What real SGLang
would not survive (a chat while released, a resume while not released...) the stand-in answers with an injected
fault that it lists in `faults`: tests of normal flows assert that list empty.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import psutil
import pytest

from manager.config import Paths, Settings, SglangSettings
from manager.engines.sglang import EngineParkError, SglangAdapter
from manager.load_watch import WatchConfig
from manager.protocol import GpuInfo, HardwareSnapshot, ModelEntry, SlotKind
from manager.runner import EngineFailed, EngineProgress, EngineReady, EngineRunner, EngineSpawned, EngineStopped, \
    EngineTurned, Launch, RunnerConfig
from tests.support.instance import wait_until_async
from tests.support.sglang_standin import LOAD_ENV, REASONING, RECORD_ENV, REPLY, write_standin_package

GiB = 1024**3
CONFIG = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "hidden_size": 64,
          "max_position_embeddings": 2048}
GPU_HOST = HardwareSnapshot(
    os="linux", arch="x86_64", cpu_model="cpu", cpu_cores=2, cpu_threads=2, ram_total=16 * GiB,
    ram_available=8 * GiB, gpus=tuple(GpuInfo(index=i, vendor="nvidia", name="L4", vram_total=24 * GiB,
                                              vram_free=(24 - i) * GiB, driver="580.65.06") for i in range(2)))


@pytest.fixture(autouse=True)
def every_gpu_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan reads the manager's CUDA_VISIBLE_DEVICES: these tests place on GPU_HOST's GPUs, all of them."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def tiny_model(directory: Path, thinking: bool = True) -> ModelEntry:
    """config.json and a valid safetensors file holding no tensors (the plan reads sizes, the stand-in nothing)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode().ljust(64)
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return ModelEntry(name="qwen3:tiny", path=str(directory), format="safetensors", dir=str(directory),
                      architecture="qwen3", thinking=thinking, kinds=(SlotKind.CHAT, SlotKind.EMBED))


class Engine:
    """One engine started from the adapter's command through an EngineRunner, and what the runner reported."""

    def __init__(self, adapter: SglangAdapter, session: aiohttp.ClientSession, directory: Path) -> None:
        self.adapter, self.session, self.directory = adapter, session, directory
        self.reports: list[object] = []
        self.turns: asyncio.Queue[str] = asyncio.Queue()  # "park" / "resume" for its runner, as a slot asks
        self.record = directory / "started.json"
        self.argv: list[str] = []

    @property
    def base_url(self) -> str:
        port = next(r.port for r in self.reports if isinstance(r, EngineSpawned))
        return f"http://127.0.0.1:{port}"

    def started_with(self) -> dict:
        return json.loads(self.record.read_text())

    async def info(self) -> dict:
        async with self.session.get(f"{self.base_url}/get_server_info") as resp:
            return await resp.json()

    async def chat(self, stream: bool = False) -> tuple[int, dict | list[dict]]:
        body = {"model": "qwen3:tiny", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        async with self.session.post(f"{self.base_url}/v1/chat/completions", json=body) as resp:
            if not stream or resp.status != 200:
                return resp.status, await resp.json()
            text = await resp.text()
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        return 200, events

    def seen(self, kind: type) -> bool:
        return any(isinstance(r, kind) for r in self.reports)

    async def ready(self) -> None:
        """Wait until the runner reports the engine ready; fail at once, with its message, if the start failed."""
        await wait_until_async(lambda: self.seen(EngineReady) or self.seen(EngineFailed), timeout=30,
                               what="the engine to be ready")
        failed = [r for r in self.reports if isinstance(r, EngineFailed)]
        assert not failed, failed


@asynccontextmanager
async def running(tmp_path: Path, entry: ModelEntry, kind: SlotKind, probe_every_s: float = 30.0,
                  **sglang: object) -> AsyncIterator[Engine]:
    """The adapter's command run by an EngineRunner, stopped on the way out."""
    adapter = SglangAdapter(Settings(sglang=SglangSettings(python=sys.executable, **sglang)),  # type: ignore[arg-type]
                            Paths(tmp_path / "home"))
    plan = adapter.plan(entry, kind, GPU_HOST, 48 * GiB)
    standin = write_standin_package(tmp_path / "standin")
    async with aiohttp.ClientSession() as session:
        engine = Engine(adapter, session, tmp_path)

        async def command(port: int, workarounds: tuple[str, ...]) -> Launch:
            binary = adapter.find_binary()
            assert binary is not None
            engine.argv = adapter.command(binary, entry, kind, port, plan)
            env = {**adapter.environment(plan), "PYTHONPATH": str(standin), RECORD_ENV: str(engine.record),
                   LOAD_ENV: "0.6"}
            return Launch(engine.argv, env)

        # Supervision probes every 30 s unless the test asks for more often: none falls inside most tests.
        config = RunnerConfig(load_timeout_s=30, stop_grace_s=2, health_interval_s=probe_every_s, health_failures=2,
                              health_path=adapter.health_path, log_path=tmp_path / "engine.log",
                              pid_dir=tmp_path / "pids", engine=adapter.name, workaround=adapter.workaround,
                              watch=WatchConfig(markers=adapter.load_markers),
                              turns={"park": adapter.park, "resume": adapter.resume},
                              parked_health_path=adapter.parked_health_path)
        stop = asyncio.Event()
        runner = EngineRunner((entry.name, kind), 1, command, config, session, stop, engine.reports.append,
                              engine.turns)
        task = asyncio.create_task(runner.run())
        try:
            yield engine
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def test_the_adapters_command_line_starts_sglang_ready_on_health_generate(tmp_path: Path) -> None:
    entry = tiny_model(tmp_path / "model")
    async with running(tmp_path, entry, SlotKind.CHAT, parallel=4, context_length=1024) as engine:
        await engine.ready()
        started = engine.started_with()
        assert started["argv"] == engine.argv[3:]  # every flag as the adapter built it, parsed as SGLang's
        assert started["args"]["served_model_name"] == "qwen3:tiny" and started["args"]["context_length"] == 1024
        assert started["args"]["max_total_tokens"] == 1024 and started["args"]["enable_memory_saver"]
        assert started["args"]["reasoning_parser"] == "qwen3" and started["args"]["max_running_requests"] == 4
        assert started["args"]["tp_size"] == 1 and started["env"]["CUDA_VISIBLE_DEVICES"] == "0"  # the freest
        info = await engine.info()
        # Ready came from /health_generate, which refused while the model loaded.
        assert info["loaded"] and info["refused_loading"] >= 1
        stages = [r.stage for r in engine.reports if isinstance(r, EngineProgress)]
        assert stages == ["loading_weights", "building_context", "warming_up"]  # SGLang's log lines, in order
        status, whole = await engine.chat()
        message = whole["choices"][0]["message"]  # type: ignore[index]
        assert status == 200 and (message["reasoning_content"], message["content"]) == (REASONING, REPLY)
        assert whole["model"] == "qwen3:tiny"  # type: ignore[index]
        status, events = await engine.chat(stream=True)
        deltas = [e["choices"][0]["delta"] for e in events]  # type: ignore[index]
        assert "".join(d.get("content", "") for d in deltas) == REPLY
        assert "".join(d.get("reasoning_content", "") for d in deltas) == REASONING
        assert (await engine.info())["faults"] == []
    assert engine.seen(EngineStopped)


async def test_park_releases_the_gpu_memory_and_resume_takes_it_back(tmp_path: Path) -> None:
    entry = tiny_model(tmp_path / "model")
    async with running(tmp_path, entry, SlotKind.CHAT) as engine:
        await engine.ready()
        adapter = engine.adapter
        await adapter.park(engine.session, engine.base_url)
        assert (await engine.info())["memory_released"]
        # A parked engine can still be probed on parked_health_path: with the adapter's environment it does not
        # generate (a generating probe would run on released memory).
        async with engine.session.get(engine.base_url + adapter.parked_health_path) as resp:
            assert resp.status == 200
        await adapter.resume(engine.session, engine.base_url)
        info = await engine.info()
        assert not info["memory_released"] and info["weights_valid"]  # kept in host memory while parked
        status, whole = await engine.chat()
        assert status == 200 and whole["choices"][0]["message"]["content"] == REPLY  # type: ignore[index]
        assert (await engine.info())["faults"] == []
        base_url = engine.base_url
    with pytest.raises(EngineParkError, match="did not release its GPU memory"):
        async with aiohttp.ClientSession() as session:  # the engine is gone: a clear error, not a hang
            await adapter.park(session, base_url)


async def test_a_refused_park_or_resume_raises_with_the_engines_message(tmp_path: Path) -> None:
    """The stand-in's injected faults (real SGLang's scheduler would assert and end the engine): what the adapter
    makes of an engine that refuses, whatever refused."""
    entry = tiny_model(tmp_path / "model")
    async with running(tmp_path, entry, SlotKind.CHAT) as engine:
        await engine.ready()
        adapter = engine.adapter
        await adapter.park(engine.session, engine.base_url)
        with pytest.raises(EngineParkError, match="release_memory_occupation answered 400: .*already released"):
            await adapter.park(engine.session, engine.base_url)
        status, refused = await engine.chat()
        assert status == 503 and "released" in refused["error"]["message"]  # type: ignore[index]
        await adapter.resume(engine.session, engine.base_url)
        with pytest.raises(EngineParkError, match="resume_memory_occupation answered 400: .*not released"):
            await adapter.resume(engine.session, engine.base_url)
        assert (await engine.info())["faults"] == [
            "POST /release_memory_occupation: the memory is already released",
            "POST /v1/chat/completions while the memory was released",
            "POST /resume_memory_occupation: the memory is not released"]


async def test_the_runner_parks_and_resumes_between_probes_and_probes_a_parked_engine_without_generating(
        tmp_path: Path) -> None:
    """What the slot table's Turn asks (manager/table_parking.py), as the runner carries it out."""
    entry = tiny_model(tmp_path / "model")
    async with running(tmp_path, entry, SlotKind.CHAT, probe_every_s=0.1) as engine:
        await engine.ready()
        engine.turns.put_nowait("park")
        await wait_until_async(lambda: engine.seen(EngineTurned), timeout=30, what="the park to be reported")
        assert [(r.turn, r.generation) for r in engine.reports if isinstance(r, EngineTurned)] == [("park", 1)]

        async def probed_while_parked() -> bool:  # several supervision probes fall in the parked time
            return (await engine.info())["probes_released"].get("/health", 0) >= 3
        await wait_until_async(probed_while_parked, timeout=30, what="three probes of the parked engine")
        info = await engine.info()
        assert info["memory_released"] and info["faults"] == [] and "/health_generate" not in info["probes_released"]
        assert not engine.seen(EngineFailed)  # a parked engine is healthy, not hung
        engine.turns.put_nowait("resume")
        await wait_until_async(lambda: len([r for r in engine.reports if isinstance(r, EngineTurned)]) == 2,
                               timeout=30, what="the resume to be reported")
        status, whole = await engine.chat()
        assert status == 200 and whole["choices"][0]["message"]["content"] == REPLY  # type: ignore[index]
        info = await engine.info()
        assert not info["memory_released"] and info["faults"] == []


async def test_a_turn_that_fails_stops_the_engine_and_says_why(tmp_path: Path) -> None:
    entry = tiny_model(tmp_path / "model")
    async with running(tmp_path, entry, SlotKind.CHAT) as engine:
        await engine.ready()
        # Never parked: the stand-in's refusal (400) stands in for the assertion in SGLang's scheduler that would
        # end the engine. The runner's reaction under test is the same either way: the turn fails and the engine
        # is stopped.
        engine.turns.put_nowait("resume")
        await wait_until_async(lambda: engine.seen(EngineFailed), timeout=30, what="the failed turn to be reported")
        (failed,) = [r for r in engine.reports if isinstance(r, EngineFailed)]
        assert failed.message.startswith("the engine could not resume: SGLang at http://127.0.0.1:")
        assert "not released" in failed.message
        pid = next(r.pid for r in engine.reports if isinstance(r, EngineSpawned))
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # stopped first


async def test_embedding_slots_start_as_embedding_servers(tmp_path: Path) -> None:
    entry = tiny_model(tmp_path / "model")
    async with running(tmp_path, entry, SlotKind.EMBED) as engine:
        await engine.ready()
        args = engine.started_with()["args"]
        assert args["is_embedding"] and args["reasoning_parser"] is None
        assert (await engine.info())["faults"] == []


async def test_a_flag_sglang_does_not_take_fails_the_start_with_its_message(tmp_path: Path) -> None:
    entry = tiny_model(tmp_path / "model")
    async with running(tmp_path, entry, SlotKind.CHAT, extra_args=["--no-such-flag"]) as engine:
        await wait_until_async(lambda: engine.seen(EngineFailed), timeout=30, what="the start to fail")
        failed = next(r for r in engine.reports if isinstance(r, EngineFailed))
        assert "unrecognized arguments: --no-such-flag" in failed.message + failed.tail
        assert not engine.seen(EngineReady)
