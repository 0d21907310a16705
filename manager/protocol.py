"""The ZeroMQ wire contract between the manager and every other LMForge process.

Each message is a frozen msgspec Struct tagged with its class name and travels as
msgpack. This module and its parts (protocol_base.py: the message bases; protocol_pulls.py:
the model store's messages; both re-exported here) import only the standard library and
msgspec. It checks its naming rule at import: a message class ends in Request, Reply, Notice or Event.
"""

from __future__ import annotations

import enum
from typing import Annotated, Union

import msgspec

from manager.protocol_base import Event, ModelEntry, Notice, Reply, Request, SlotKind
# The model store's messages (pulls, imports, copies, deletes) live in protocol_pulls.py, for this module's size.
from manager.protocol_pulls import (
    IMPORT_TIMEOUT_S, PULL_ENDED, PULL_INDEX_TIMEOUT_S, PULL_POLL_S, CancelPullReply, CancelPullRequest,
    CopyModelRequest, DeleteModelReply, DeleteModelRequest, ImportModelRequest, ModelReply, NextPullRequest,
    PullDoneRequest, PullEvent, PullFile, PullFileProgress, PullInfo, PullJobReply, PullLeaveNotice, PullPlan,
    PullProgressReply, PullProgressRequest, PullReply, PullRequest, PullState,
)

# Bumped on any change that an older peer could not decode. Sent in the hello;
# the manager refuses a peer that speaks another version.
PROTOCOL = 4


class PeerRole(enum.StrEnum):
    GATEWAY = "gateway"
    PROBER = "prober"
    DOWNLOADER = "downloader"
    TOOL = "tool"


class SlotState(enum.StrEnum):
    # pending -> loading -> ready -> stopping -> unloaded
    # pending | loading | ready -> failed
    # loading -> stopping (unloaded before it was ready)
    # ready -> parking -> parked -> resuming -> ready (an engine that can release its GPU memory and keep its
    # process: SGLang; manager/table_parking.py); parking | parked | resuming -> stopping | failed
    PENDING = "pending"  # waiting for memory; holds none yet
    LOADING = "loading"  # engine spawned, not yet healthy
    READY = "ready"
    PARKING = "parking"  # releasing its GPU memory; serves nothing new
    PARKED = "parked"  # its process runs, its weights in host memory: holds no GPU memory
    RESUMING = "resuming"  # taking its GPU memory back
    STOPPING = "stopping"
    UNLOADED = "unloaded"  # terminal: stopped on purpose
    FAILED = "failed"  # terminal: refused, crashed, or never became healthy


class LeaseOutcome(enum.StrEnum):
    OK = "ok"
    CLIENT_GONE = "client_gone"
    UPSTREAM_ERROR = "upstream_error"
    # The engine refused or reset the connection before any response byte: it is
    # gone, whatever the manager has heard so far. The manager fails its slot at once.
    ENGINE_GONE = "engine_gone"


class ErrorCode(enum.StrEnum):
    """Per-request failures; gateway/errors.py maps each to one HTTP status."""

    BAD_REQUEST = "bad_request"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_SUPPORTED = "not_supported"
    LOAD_FAILED = "load_failed"
    NO_CAPACITY = "no_capacity"
    CONCURRENCY_LIMIT = "concurrency_limit"  # the model's queue (max_queue) or max_inflight is full
    BACKING_OFF = "backing_off"
    ENGINE_MISSING = "engine_missing"
    SHUTTING_DOWN = "shutting_down"
    PROTOCOL_MISMATCH = "protocol_mismatch"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


class Severity(enum.StrEnum):
    USER_ERROR = "user_error"  # the model file or the request is at fault
    TRANSIENT = "transient"  # may work on retry (crash, hang, out of memory)
    ENGINE_BUG = "engine_bug"  # the engine failed in a way that is not ours to fix
    CPU_FEATURES = "cpu_features"  # SIGILL: the build uses instructions the CPU traps


# ----------------------------------------------------------------------------
# Plain data carried inside messages (not messages themselves).


class GpuInfo(msgspec.Struct, kw_only=True, frozen=True):
    index: int
    vendor: str
    name: str
    vram_total: int
    vram_free: int
    driver: str | None = None
    compute_capability: str | None = None


class CpuPlan(msgspec.Struct, kw_only=True, frozen=True):
    """The compute threads that CPU engines may run together, and what limited them (prober/probes/cpu_plan.py)."""

    cores: int  # the budget: threads all busy CPU engines together may run
    physical_cores: int  # physical cores among the CPUs this process may run on
    affinity: int  # logical CPUs in this process's affinity mask
    quota: float | None = None  # the cgroup CPU quota in cores (cpu.max, or v1 cfs quota / period); None: none
    limited_by: str = "physical cores"  # "physical cores", "affinity" or "cgroup quota"


class HardwareSnapshot(msgspec.Struct, kw_only=True, frozen=True):
    os: str
    arch: str
    cpu_model: str
    cpu_cores: int
    cpu_threads: int
    ram_total: int
    ram_available: int
    gpus: tuple[GpuInfo, ...] = ()
    apple_chip: str | None = None
    unified_memory: bool = False
    cpu_flags: tuple[str, ...] = ()
    taken_at: float = 0.0
    cpu_plan: CpuPlan | None = None  # None: an older prober; the manager then budgets cpu_cores


class LoadError(msgspec.Struct, kw_only=True, frozen=True):
    at: float
    message: str
    severity: Severity
    stderr_tail: str = ""
    count: int = 1


class SlotInfo(msgspec.Struct, kw_only=True, frozen=True):
    model: str
    kind: SlotKind
    state: SlotState
    engine: str
    engine_reason: str = ""  # why this engine serves it (prober/engine_choice.py)
    generation: int
    port: int | None = None
    pid: int | None = None
    inflight: int = 0
    pinned: bool = False
    keep_alive_s: float | None = None  # None: stays until evicted or unloaded
    expires_at: float | None = None
    last_used_at: float = 0.0
    loaded_at: float | None = None
    estimate_bytes: int = 0  # before the load: the header's figure, or what the last load taught us
    measured_bytes: int | None = None  # what the engine holds now (RSS on CPU, per-process VRAM on GPU)
    memory_estimate: str = ""  # how measured_bytes was estimated, when NVML gave no per-process figure (containers)
    charged_bytes: int = 0  # what the budget counts: measured plus what it will still grow by
    adopted: bool = False  # started by an earlier manager and taken over after it crashed
    ctx_size: int = 0
    gpu_layers: int = 0
    waiting: int = 0  # acquires queued on this slot: for its load, or for a free engine slot
    parallel: int = 0  # requests its engine serves at once: the leases it grants before queueing
    detail: str = ""  # why the slot is pending, or why it failed
    load_reason: str = ""  # why this engine was (re)loaded, e.g. "context 8192 → 16384 asked by a request"
    threads: int = 0  # compute threads its engine runs (--threads); 0: not budgeted (a GPU engine)
    computing: bool = False  # holds its threads: it has requests in flight
    yields_cores_to: str = ""  # the model it finishes its requests for, queueing new ones (cores.py fairness)
    load_stage: str = ""  # pending: "waiting" (detail: for what); loading: its latest LoadProgressEvent's stage
    load_progress: float | None = None  # loading_weights: the share of its weights in memory


class BudgetInfo(msgspec.Struct, kw_only=True, frozen=True):
    total_bytes: int
    used_bytes: int
    source: str  # "config", "ram", "vram", "unified", "unknown"
    max_loaded_models: int = 0

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)


class PeerInfo(msgspec.Struct, kw_only=True, frozen=True):
    role: PeerRole
    pid: int
    connected_at: float


class CpuStatus(msgspec.Struct, kw_only=True, frozen=True):
    """Cores as a budget (manager/cores.py): the plan, the policy and what it comes to now, and who holds cores."""

    cores: int  # the budget in use: config cpu_cores, else the plan's
    policy: str  # as configured: "auto", "exclusive" or "shared"
    mode: str  # what the policy comes to now: "exclusive" or "shared"; "gpu" on a GPU host (not budgeted)
    at_once: int  # CPU engines that may compute at once
    threads: int  # threads a CPU engine starts with now
    busy_threads: int  # held by engines with requests in flight
    busy_threads_peak: int  # the most they ever held at once since the manager started
    fair_share_s: float  # a model waiting this long for cores gets them next
    waiting: tuple[str, ...] = ()  # models waiting for cores, first in line first
    plan: CpuPlan | None = None


class ManagerStatus(msgspec.Struct, kw_only=True, frozen=True):
    epoch: str
    started_at: float
    slots: tuple[SlotInfo, ...]
    budget: BudgetInfo
    last_errors: dict[str, LoadError]
    peers: tuple[PeerInfo, ...] = ()
    hardware: HardwareSnapshot | None = None
    loop_lag_max_ms: float = 0.0  # the manager loop's worst scheduling lag over the last minute
    pulls: tuple[PullInfo, ...] = ()  # running and queued, then the last few that ended
    cpu: CpuStatus | None = None  # None before the first hardware snapshot


# --- requests and replies ---


class HeldLease(msgspec.Struct, kw_only=True, frozen=True):
    """A lease a peer still holds, declared in each hello so the manager can reconcile."""

    lease_id: str
    model: str
    kind: SlotKind
    generation: int


class HelloRequest(Request):
    role: PeerRole
    pid: int
    protocol: int = PROTOCOL
    # Every lease the peer holds right now: the manager drops the ones of this
    # role it holds that are not declared, and takes over the declared ones it
    # does not know (leases of engines it adopted after a restart).
    leases: tuple[HeldLease, ...] = ()


class HelloReply(Reply):
    epoch: str
    manager_pid: int
    protocol: int = PROTOCOL


class AcquireRequest(Request):
    """Lease a model's engine, loading it first if needed."""

    model: str
    kind: SlotKind = SlotKind.CHAT
    keep_alive: str | float | None = None  # Ollama semantics; None: the model's default
    trace_id: str = ""
    # Tokens of context the request needs (Ollama's num_ctx); 0: the model's default.
    # A resident engine with at least this much serves it; a bigger ask reloads it once.
    num_ctx: Annotated[int, msgspec.Meta(ge=0)] = 0


class AcquireReply(Reply):
    lease_id: str  # "<epoch>:<n>": unique across manager restarts
    model: str
    kind: SlotKind
    base_url: str
    engine: str
    generation: int = 0
    load_s: float = 0.0  # time this request spent waiting for a load; 0 when warm
    queue_position: int = 0


class LoadRequest(Request):
    """Warm a model without leasing it; answered when it is ready."""

    model: str
    kind: SlotKind = SlotKind.CHAT
    pin: bool = False
    keep_alive: str | float | None = None
    num_ctx: Annotated[int, msgspec.Meta(ge=0)] = 0  # as in AcquireRequest


class LoadReply(Reply):
    slot: SlotInfo
    load_s: float = 0.0


class UnloadRequest(Request):
    model: str | None = None  # None: every model
    kind: SlotKind | None = None  # None: every kind of that model


class UnloadReply(Reply):
    unloaded: tuple[str, ...]


class SnapshotRequest(Request):
    pass


class SnapshotReply(Reply):
    seq: int
    status: ManagerStatus


class MetricsRequest(Request):
    """The manager's Prometheus figures, for the gateway's /metrics (manager/metrics.py says why this way)."""


class MetricsReply(Reply):
    text: str  # Prometheus text exposition


class ListModelsRequest(Request):
    pass


class PingRequest(Request):
    """Answered by the loop itself: proof that the manager hears and answers, not only beats."""


class PingReply(Reply):
    epoch: str


class ListModelsReply(Reply):
    models: tuple[ModelEntry, ...]


class ErrorReply(Reply):
    code: ErrorCode
    message: str
    retry_after_s: float | None = None


# --- notices ---


class ReleaseNotice(Notice):
    """Honoured only from the peer that holds the lease."""

    lease_id: str
    outcome: LeaseOutcome = LeaseOutcome.OK


class HardwareNotice(Notice):
    snapshot: HardwareSnapshot


class AbandonNotice(Notice):
    """The AcquireRequest `req_id` of this peer is waited for no more: its place in the queue is freed."""

    req_id: int


# --- events ---


class SlotEvent(Event):
    slot: SlotInfo
    previous: SlotState | None = None


class QueueEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One acquire in a slot's queue: the peer that sent it (its identity) and its req_id, so that peer finds it."""

    peer: str
    req_id: int
    trace_id: str = ""  # the request id the gateway answers with (X-Request-Id), at most 64 characters


class QueueEvent(Event):
    """A slot's queue changed: the acquires waiting for a lease, first served first (empty: none wait)."""

    model: str
    kind: SlotKind
    queued: tuple[QueueEntry, ...] = ()
    loading: bool = False  # the queue waits for the engine to load, not for a free engine slot


class LoadProgressEvent(Event):
    """How a load goes: "waiting" (detail: for what), "installing_engine", then the engine's own
    stages (manager/load_watch.py: "spawned", "loading_weights", "building_context", "warming_up"), and how it
    ended: "ready", "failed" (detail: the reason), "stopped" (unloaded, or replaced by a larger context)."""

    model: str
    kind: SlotKind
    stage: str
    detail: str = ""
    progress: float | None = None  # loading_weights: the share of the weights in memory, below 1; ready: 1


class ErrorEvent(Event):
    model: str
    kind: SlotKind
    error: LoadError


class HardwareEvent(Event):
    snapshot: HardwareSnapshot


class HeartbeatEvent(Event):
    epoch: str
    time: float
    # When this manager began taking requests: a peer that sees a new epoch knows
    # that what it sent before then went to the old manager and is lost.
    serving_since: float = 0.0


class ManagerStoppingEvent(Event):
    epoch: str


# Re-exported (the rest of LMForge imports them from here): named once more so the imports read as used.
_REEXPORTED = (Event, ModelEntry, Notice, Reply, Request, SlotKind, IMPORT_TIMEOUT_S, CopyModelRequest,
               DeleteModelReply, DeleteModelRequest, ImportModelRequest, ModelReply, PULL_ENDED, PULL_INDEX_TIMEOUT_S,
               PULL_POLL_S, CancelPullReply, CancelPullRequest, NextPullRequest, PullDoneRequest, PullEvent, PullFile,
               PullFileProgress, PullInfo, PullJobReply, PullLeaveNotice, PullPlan, PullProgressReply,
               PullProgressRequest, PullReply, PullRequest, PullState)


# ----------------------------------------------------------------------------
# Unions and codecs, built once.

_BASES = {"Request": Request, "Reply": Reply, "Notice": Notice, "Event": Event}


def _subclasses(base: type) -> list[type]:
    found = []
    for cls in base.__subclasses__():
        found.append(cls)
        found.extend(_subclasses(cls))
    return found


def check_naming_rule(namespace: dict[str, object]) -> None:
    """Every message class ends in its base's name; nothing else does."""
    for name, obj in namespace.items():
        if not isinstance(obj, type) or not issubclass(obj, msgspec.Struct):
            continue
        if obj in _BASES.values():
            continue
        bases = [suffix for suffix, base in _BASES.items() if issubclass(obj, base)]
        suffixes = [suffix for suffix in _BASES if name.endswith(suffix)]
        if bases != suffixes:
            raise TypeError(f"protocol naming rule: {name} subclasses {bases or 'no message base'}")


check_naming_rule(dict(globals()))

REQUESTS = tuple(_subclasses(Request))
REPLIES = tuple(_subclasses(Reply))
NOTICES = tuple(_subclasses(Notice))
EVENTS = tuple(_subclasses(Event))

ToManager = Union[REQUESTS + NOTICES]  # type: ignore[valid-type]
FromManager = Union[REPLIES]  # type: ignore[valid-type]
AnyEvent = Union[EVENTS]  # type: ignore[valid-type]

encoder = msgspec.msgpack.Encoder()
to_manager_decoder = msgspec.msgpack.Decoder(ToManager)
from_manager_decoder = msgspec.msgpack.Decoder(FromManager)
event_decoder = msgspec.msgpack.Decoder(AnyEvent)

# The PUB topic of each event type, the first frame of every published message.
TOPICS: dict[type, bytes] = {
    SlotEvent: b"slot",
    QueueEvent: b"queue",
    LoadProgressEvent: b"load",
    ErrorEvent: b"error",
    PullEvent: b"download",
    HardwareEvent: b"hardware",
    HeartbeatEvent: b"heartbeat",
    ManagerStoppingEvent: b"stopping",
}
if set(TOPICS) != set(EVENTS):
    raise TypeError("protocol: every Event needs a PUB topic in TOPICS")
