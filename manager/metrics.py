"""The manager's Prometheus figures: loads, evictions, reloads, slots, queues, memory, downloads and loop lag.

How they reach `/metrics`: the gateway serves the exposition, and at each scrape it asks the manager for its
part over the ZMQ request socket (MetricsRequest -> MetricsReply with the manager's registry in Prometheus
text), then appends it to its own. No multiprocess mode (no shared files to clean up after a crash): counters
live in the manager and restart with it, which Prometheus reads as an ordinary counter reset. The downloader's
figures come the same way: it reports each pull's progress to the manager (PullEvent on the bus), and the
manager counts the bytes here. Counters are fed from the events the manager publishes (`observe`), so every
figure is one the status stream also told; gauges are read from the slot table at scrape time.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from manager.protocol import (
    PULL_ENDED, BudgetInfo, Event, MetricsReply, MetricsRequest, PullEvent, SlotEvent, SlotInfo, SlotState)

if TYPE_CHECKING:
    from manager.lag import LoopLag
    from manager.table import SlotTable

prometheus_client.disable_created_metrics()  # no `_created` series: they double the exposition for nothing

LOAD_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

# Why a slot stopped, from the reason the table gives it (manager/table.py): a bounded set of labels.
_STOP_REASONS = (
    ("evicted to make room", "memory"),
    ("keep_alive", "keep_alive"),
    ("unloaded on request", "request"),
    ("unloaded before", "request"),
    ("deleted", "model_changed"),
    ("replaced", "model_changed"),
    ("manager shutting down", "shutdown"),
    ("context", "reload"),
    ("threads", "reload"),
)
# Why a model was loaded again while it had been serving: its new slot's load reason.
_RELOAD_REASONS = (("context", "context"), ("threads", "threads"))


def stop_reason(detail: str) -> str:
    return next((label for start, label in _STOP_REASONS if start in detail), "other")


def reload_reason(load_reason: str) -> str | None:
    return next((label for start, label in _RELOAD_REASONS if load_reason.startswith(start)), None)


class ManagerMetrics:
    """Counters fed by `observe(event)` as the manager publishes; gauges read from `read_state()` at scrape."""

    def __init__(self, read_state: Callable[[], tuple[list[SlotInfo], BudgetInfo]],
                 loop_lag_ms: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.loads = Counter("lmforge_model_loads", "Engine loads that ended, by outcome (ok, failed, refused, "
                             "cancelled)", ["model", "outcome"], registry=r)
        self.load_seconds = Histogram("lmforge_model_load_duration_seconds", "Engine start to ready, of loads that "
                                      "succeeded", ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.evictions = Counter("lmforge_evictions", "Engines stopped, by reason (memory, keep_alive, request, "
                                 "model_changed, reload, shutdown, crash, other)", ["reason"], registry=r)
        self.reloads = Counter("lmforge_reloads", "Models loaded again after serving, by reason (context, "
                               "threads, crash)", ["model", "reason"], registry=r)
        self.download_bytes = Counter("lmforge_download_bytes", "Bytes pulls have written, from the downloader's "
                                      "progress reports", registry=r)
        self.pulls = Counter("lmforge_pulls", "Pulls that ended, by state (done, failed, cancelled)", ["state"],
                             registry=r)
        r.register(_StateCollector(read_state, loop_lag_ms))
        self._loading: dict[tuple[str, str, int], float] = {}  # (model, kind, generation): load start, monotonic
        self._crashed: set[tuple[str, str]] = set()  # slots that failed while serving: their next load is a reload
        self._pulled: dict[str, int] = {}  # pull id: bytes done when last heard

    @classmethod
    def of(cls, table: SlotTable, lag: LoopLag) -> ManagerMetrics:
        def state() -> tuple[list[SlotInfo], BudgetInfo]:
            return [s.info() for s in [*table.slots.values(), *table.retiring.values()]], table.budget()
        return cls(state, lag.worst_ms)

    def observe(self, event: Event) -> None:
        if isinstance(event, SlotEvent):
            self._slot(event.slot, event.previous)
        elif isinstance(event, PullEvent):
            self._pull(event)

    def _slot(self, slot: SlotInfo, previous: SlotState | None) -> None:
        key, state = (slot.model, slot.kind.value, slot.generation), slot.state
        if state == SlotState.LOADING and previous == SlotState.PENDING:
            self._loading[key] = time.monotonic()
            if (slot.model, slot.kind.value) in self._crashed:
                self._crashed.discard((slot.model, slot.kind.value))
                self.reloads.labels(slot.model, "crash").inc()
            elif reason := reload_reason(slot.load_reason):
                self.reloads.labels(slot.model, reason).inc()
        elif previous == SlotState.LOADING and state != SlotState.LOADING:
            started = self._loading.pop(key, None)
            outcome = {SlotState.READY: "ok", SlotState.FAILED: "failed"}.get(state, "cancelled")
            self.loads.labels(slot.model, outcome).inc()
            if state == SlotState.READY and started is not None:
                self.load_seconds.labels(slot.model).observe(time.monotonic() - started)
        elif previous == SlotState.PENDING and state == SlotState.FAILED:
            self.loads.labels(slot.model, "refused").inc()
        elif previous == SlotState.READY and state == SlotState.STOPPING:
            self.evictions.labels(stop_reason(slot.detail)).inc()
        elif previous == SlotState.READY and state == SlotState.FAILED:
            self.evictions.labels("crash").inc()
            self._crashed.add((slot.model, slot.kind.value))

    def _pull(self, event: PullEvent) -> None:
        pull = event.pull
        before = self._pulled.get(pull.pull_id)
        if before is not None and pull.done_bytes > before:
            self.download_bytes.inc(pull.done_bytes - before)
        if pull.state in PULL_ENDED:
            self._pulled.pop(pull.pull_id, None)
            self.pulls.labels(pull.state.value).inc()
        else:
            # The first report of a pull counts from there: a resumed .part's bytes came in an earlier pull.
            self._pulled[pull.pull_id] = max(pull.done_bytes, before or 0)

    def exposition(self) -> str:
        return prometheus_client.generate_latest(self.registry).decode()

    def handlers(self, send: Callable[[bytes | None, MetricsReply], None]) -> dict[type, Callable[[bytes, object], None]]:
        def on_request(peer: bytes, req: MetricsRequest) -> None:
            send(peer, MetricsReply(req_id=req.req_id, text=self.exposition()))
        return {MetricsRequest: on_request}  # type: ignore[dict-item]


class _StateCollector:
    """Gauges read from the slot table when scraped: slots by state, queues, memory, and the loop's lag."""

    def __init__(self, read_state: Callable[[], tuple[list[SlotInfo], BudgetInfo]],
                 loop_lag_ms: Callable[[], float]) -> None:
        self.read_state, self.loop_lag_ms = read_state, loop_lag_ms

    def collect(self) -> Iterator[Metric]:
        slots, budget = self.read_state()
        by_state = GaugeMetricFamily("lmforge_slots", "Engine slots by state", labels=["state"])
        for state in SlotState:
            by_state.add_metric([state.value], sum(1 for s in slots if s.state == state))
        yield by_state
        queued = GaugeMetricFamily("lmforge_queue_depth", "Requests waiting for a model: its load, or a free "
                                   "engine slot", labels=["model", "kind"])
        inflight = GaugeMetricFamily("lmforge_inflight_requests", "Requests an engine is serving",
                                     labels=["model", "kind"])
        estimate = GaugeMetricFamily("lmforge_model_memory_estimate_bytes", "A loaded model's memory estimate",
                                     labels=["model", "kind"])
        measured = GaugeMetricFamily("lmforge_model_memory_measured_bytes", "What a loaded model's engine holds, "
                                     "as measured (RSS on CPU, per-process VRAM on GPU)", labels=["model", "kind"])
        # A model's engine that is draining and its successor share a label set: one sample each, summed.
        sums: dict[tuple[str, str], list[int]] = {}
        for s in slots:
            total = sums.setdefault((s.model, s.kind.value), [0, 0, 0, 0, 0])
            for i, value in enumerate((s.waiting, s.inflight, s.estimate_bytes, s.measured_bytes or 0,
                                       s.measured_bytes is not None)):
                total[i] += value
        for labels, (waiting, busy, estimated, held, measured_any) in sums.items():
            queued.add_metric(list(labels), waiting)
            inflight.add_metric(list(labels), busy)
            estimate.add_metric(list(labels), estimated)
            if measured_any:
                measured.add_metric(list(labels), held)
        yield from (queued, inflight, estimate, measured)
        for name, value, text in (("total", budget.total_bytes, "The memory budget models may use"),
                                  ("used", budget.used_bytes, "Memory the budget counts as used"),
                                  ("free", budget.free_bytes, "Memory left in the budget")):
            yield GaugeMetricFamily(f"lmforge_memory_budget_{name}_bytes", text, value=value)
        yield GaugeMetricFamily("lmforge_manager_loop_lag_seconds", "The manager loop's worst scheduling lag over "
                                "the last minute", value=self.loop_lag_ms() / 1000)
