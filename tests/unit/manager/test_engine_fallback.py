"""A model's engine comes from the choice table; an engine that cannot install or load it hands it to the next one
that can serve it (with its waiting requests), and says so. Driven through the table alone (tests/support/
table_driver.py), on a recorded Linux + NVIDIA snapshot, where safetensors go to SGLang, then MLX."""

from __future__ import annotations

import msgspec

from manager.protocol import (
    ErrorCode, GpuInfo, HardwareSnapshot, LoadProgressEvent, ModelEntry, Severity, SlotKind, SlotState,
)
from manager.effects import Publish
from prober.engine_choice import Choice, choose_for
from tests.support.table_driver import CHAT, Driver

GiB = 1024**3
NVIDIA_HOST = HardwareSnapshot(
    os="linux", arch="x86_64", cpu_model="test", cpu_cores=16, cpu_threads=32, ram_total=128 * GiB,
    ram_available=100 * GiB, gpus=(GpuInfo(index=0, vendor="nvidia", name="H200", vram_total=140 * GiB,
                                           vram_free=139 * GiB),),
)


class EveryEngine:
    """The choice table with every engine available, as a registry with all three adapters chooses."""

    def choose(self, entry: ModelEntry, kind: SlotKind, hardware: HardwareSnapshot | None,
               exclude: tuple[str, ...] = ()) -> Choice:
        return choose_for(entry.format, kind, hardware, exclude=exclude)

    def parallel(self, engine: str, model: str = "") -> int:
        return {"sglang": 16, "mlx": 1}.get(engine, 4)


def driver() -> Driver:
    d = Driver(engines=EveryEngine())
    d.table.set_hardware(NVIDIA_HOST)
    d.settle()
    return d


def safetensors(d: Driver, model: str) -> None:
    """`model` is stored as safetensors from now on (the driver's entries are GGUF)."""
    base = d.entry

    def entry(name: str, size_mb: int = 100) -> ModelEntry:
        e = base(name, size_mb)
        return msgspec.structs.replace(e, format="safetensors", path=f"/models/{name}") if name == model else e
    d.entry = entry  # type: ignore[method-assign]


def fail(d: Driver, model: str, message: str, severity: Severity = Severity.USER_ERROR) -> None:
    slot = d.table.slots[(model, CHAT)]
    d.table.failed(slot.key, slot.generation, message, severity, "")
    d.settle()


def test_the_chosen_engine_and_its_reason_are_the_slots():
    d = driver()
    safetensors(d, "qwen")
    d.acquire("qwen")
    d.acquire("gemma")
    qwen, gemma = d.table.slots[("qwen", CHAT)], d.table.slots[("gemma", CHAT)]
    assert (qwen.engine, qwen.parallel, qwen.fallbacks) == ("sglang", 16, ("mlx",))
    assert qwen.info().engine_reason == "safetensors on Linux + NVIDIA with 140 GiB of VRAM"
    assert (gemma.engine, gemma.parallel) == ("llama.cpp", 4)


def test_an_engine_that_fails_to_install_hands_the_model_and_its_requests_to_the_next():
    d = driver()
    safetensors(d, "qwen")
    rid = d.acquire("qwen")
    first = d.table.slots[("qwen", CHAT)]
    assert first.state == SlotState.LOADING
    fail(d, "qwen", "sglang is not installed and could not be: no CUDA")
    fresh = d.table.slots[("qwen", CHAT)]
    assert (fresh.engine, fresh.failed_engines) == ("mlx", ("sglang",))
    assert fresh.load_reason == "sglang could not serve qwen (sglang is not installed and could not be: no CUDA); " \
        "trying mlx"
    assert fresh.info().engine_reason.endswith("(sglang failed)")
    assert rid not in d.replies  # the request waits for the next engine, unrefused
    assert d.table.failures.last_errors == {}  # nothing counted against the model yet
    d.ready("qwen")
    assert d.lease(rid).engine == "mlx"


def test_the_fallback_is_said_on_the_event_stream():
    d = driver()
    safetensors(d, "qwen")
    d.acquire("qwen")
    slot = d.table.slots[("qwen", CHAT)]
    d.table.failed(slot.key, slot.generation, "exited while loading", Severity.USER_ERROR, "")
    said = [e.event for e in d.table.drain() if isinstance(e, Publish) and isinstance(e.event, LoadProgressEvent)]
    assert [(e.stage, e.detail) for e in said] == [
        ("waiting", "sglang could not serve qwen (exited while loading); trying mlx")]


def test_when_no_engine_is_left_the_requests_get_the_last_failure():
    d = driver()
    safetensors(d, "qwen")
    rid = d.acquire("qwen")
    fail(d, "qwen", "sglang exited while loading")
    fail(d, "qwen", "mlx exited while loading")
    assert d.error(rid).code == ErrorCode.LOAD_FAILED and "mlx exited while loading" in d.error(rid).message
    assert ("qwen", CHAT) not in d.table.slots


def test_a_transient_failure_or_one_after_ready_is_not_the_engines_to_hand_over():
    d = driver()
    safetensors(d, "qwen")
    rid = d.acquire("qwen")
    fail(d, "qwen", "killed while loading (out of memory?)", Severity.TRANSIENT)
    assert d.error(rid).code == ErrorCode.LOAD_FAILED
    d.advance(60)  # past the backoff
    d.warm("qwen")
    fail(d, "qwen", "engine died")  # it served: the engine runs this model, the crash is not a wrong choice
    assert ("qwen", CHAT) not in d.table.slots


def test_a_gguf_model_has_no_engine_to_fall_back_to():
    d = driver()
    rid = d.acquire("gemma")
    fail(d, "gemma", "llama.cpp exited while loading")
    assert d.error(rid).code == ErrorCode.LOAD_FAILED
