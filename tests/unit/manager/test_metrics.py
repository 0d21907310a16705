"""manager/metrics.py: what each published event counts, and the gauges read at scrape time."""

from __future__ import annotations

from manager.metrics import ManagerMetrics, stop_reason
from manager.protocol import (
    BudgetInfo, PullEvent, PullInfo, PullState, SlotEvent, SlotInfo, SlotKind, SlotState)
from tests.support.metrics import parse

BUDGET = BudgetInfo(total_bytes=1000, used_bytes=300, source="config")


def slot(state: SlotState, *, model: str = "m", generation: int = 1, detail: str = "", load_reason: str = "",
         **fields: object) -> SlotInfo:
    return SlotInfo(model=model, kind=SlotKind.CHAT, state=state, engine="llama.cpp", generation=generation,
                    detail=detail, load_reason=load_reason, **fields)  # type: ignore[arg-type]


def event(info: SlotInfo, previous: SlotState | None) -> SlotEvent:
    return SlotEvent(slot=info, previous=previous)


def metrics(slots: list[SlotInfo] | None = None) -> ManagerMetrics:
    return ManagerMetrics(lambda: (slots or [], BUDGET), lambda: 12.5)


def test_a_load_counts_its_outcome_and_its_duration() -> None:
    m = metrics()
    m.observe(event(slot(SlotState.LOADING), SlotState.PENDING))
    m.observe(event(slot(SlotState.READY), SlotState.LOADING))
    m.observe(event(slot(SlotState.LOADING, generation=2), SlotState.PENDING))
    m.observe(event(slot(SlotState.FAILED, generation=2), SlotState.LOADING))
    m.observe(event(slot(SlotState.FAILED, generation=3), SlotState.PENDING))  # refused: no room
    got = parse(m.exposition())
    assert got.get_one("lmforge_model_loads_total", model="m", outcome="ok") == 1
    assert got.get_one("lmforge_model_loads_total", model="m", outcome="failed") == 1
    assert got.get_one("lmforge_model_loads_total", model="m", outcome="refused") == 1
    assert got.get_one("lmforge_model_load_duration_seconds_count", model="m") == 1


def test_evictions_are_counted_by_a_bounded_reason() -> None:
    m = metrics()
    for detail in ("evicted to make room for big", "keep_alive expired", "keep_alive 0: unloaded after its request",
                   "unloaded on request", "deleted", "context 8192 → 16384 asked by a request",
                   "threads 2 → 1 (2 engines at once)", "manager shutting down", "something new"):
        m.observe(event(slot(SlotState.STOPPING, detail=detail), SlotState.READY))
    m.observe(event(slot(SlotState.FAILED, detail="the engine exited with SIGSEGV"), SlotState.READY))
    got = parse(m.exposition()).named("lmforge_evictions_total")
    assert {dict(labels)["reason"]: value for labels, value in got.items()} == {
        "memory": 1, "keep_alive": 2, "request": 1, "model_changed": 1, "reload": 2, "shutdown": 1, "other": 1,
        "crash": 1}


def test_reloads_are_counted_by_reason_the_one_after_a_crash_too() -> None:
    m = metrics()
    m.observe(event(slot(SlotState.LOADING, load_reason="context 4096 → 8192 asked by a request"), SlotState.PENDING))
    m.observe(event(slot(SlotState.LOADING, load_reason="threads 2 → 1 (shared)"), SlotState.PENDING))
    m.observe(event(slot(SlotState.FAILED, detail="exited"), SlotState.READY))
    m.observe(event(slot(SlotState.LOADING, generation=4, load_reason="a request for it"), SlotState.PENDING))
    m.observe(event(slot(SlotState.LOADING, generation=5, load_reason="a request for it"), SlotState.PENDING))
    got = parse(m.exposition())
    for reason in ("context", "threads", "crash"):
        assert got.get_one("lmforge_reloads_total", model="m", reason=reason) == 1


def test_download_bytes_count_what_each_pull_wrote_after_it_was_first_heard() -> None:
    m = metrics()

    def pull(state: PullState, done: int, pull_id: str = "p1") -> PullEvent:
        return PullEvent(pull=PullInfo(pull_id=pull_id, model="x", state=state, done_bytes=done))
    m.observe(pull(PullState.DOWNLOADING, 500))  # a resumed .part: these came in an earlier pull
    m.observe(pull(PullState.DOWNLOADING, 800))
    m.observe(pull(PullState.DOWNLOADING, 700))  # a restart from 0 after a bad range: nothing new
    m.observe(pull(PullState.DONE, 1000))
    m.observe(pull(PullState.DOWNLOADING, 0, "p2"))
    m.observe(pull(PullState.FAILED, 100, "p2"))
    got = parse(m.exposition())
    assert got.get_one("lmforge_download_bytes_total") == 300 + 200 + 100
    assert got.get_one("lmforge_pulls_total", state="done") == 1
    assert got.get_one("lmforge_pulls_total", state="failed") == 1


def test_gauges_are_read_from_the_table_when_scraped() -> None:
    slots = [slot(SlotState.READY, waiting=3, inflight=2, estimate_bytes=100, measured_bytes=120),
             slot(SlotState.LOADING, model="n", estimate_bytes=50)]
    got = parse(metrics(slots).exposition())
    assert got.get_one("lmforge_slots", state="ready") == 1 and got.get_one("lmforge_slots", state="failed") == 0
    assert got.get_one("lmforge_queue_depth", model="m", kind="chat") == 3
    assert got.get_one("lmforge_inflight_requests", model="m", kind="chat") == 2
    assert got.get_one("lmforge_model_memory_measured_bytes", model="m", kind="chat") == 120
    assert got.get_one("lmforge_model_memory_measured_bytes", model="n", kind="chat") is None  # not measured yet
    assert got.get_one("lmforge_memory_budget_free_bytes") == 700
    assert got.get_one("lmforge_manager_loop_lag_seconds") == 0.0125


def test_every_stop_reason_the_table_gives_has_a_label() -> None:
    import inspect
    import re

    import manager.index
    import manager.table
    source = inspect.getsource(manager.table) + inspect.getsource(manager.index)
    reasons = re.findall(r'(?:unload|_stop|_unload)\([^,]+, f?"([^"{]+)', source)
    assert reasons, "the table's reasons were found"
    assert {r: stop_reason(r) for r in reasons if stop_reason(r) == "other"} == {}


def test_a_draining_engine_and_its_successor_give_one_sample_per_label_set() -> None:
    slots = [slot(SlotState.READY, inflight=2, estimate_bytes=100, measured_bytes=120),
             slot(SlotState.LOADING, generation=2, waiting=3, estimate_bytes=150)]
    text = metrics(slots).exposition()
    assert text.count('lmforge_queue_depth{kind="chat",model="m"}') == 1  # Prometheus drops a duplicate
    got = parse(text)
    assert got.get_one("lmforge_queue_depth", model="m", kind="chat") == 3
    assert got.get_one("lmforge_inflight_requests", model="m", kind="chat") == 2
    assert got.get_one("lmforge_model_memory_estimate_bytes", model="m", kind="chat") == 250
    assert got.get_one("lmforge_model_memory_measured_bytes", model="m", kind="chat") == 120
