"""IndexWriter: every change to models.json (import, pull, copy, delete), made by the manager alone.

Each change runs in a worker thread, one at a time, and is answered on the loop. The
slots of a model that a change replaces or removes are unloaded there, so no engine
goes on serving a file that is gone or no longer the model's.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from catalog.gguf_info import GGUFError
from catalog.store import ModelNotFound, ModelStore, StoreError
from manager.protocol import (
    CopyModelRequest, DeleteModelReply, DeleteModelRequest, ErrorCode, ErrorReply, ImportModelRequest, ModelEntry,
    ModelReply, PullPlan, Reply,
)
from manager.table import SlotTable

log = logging.getLogger("lmforge.manager")

Offload = Callable[[Callable[[], object], Callable[[object], None]], None]


def error_of(exc: BaseException) -> tuple[ErrorCode, str]:
    """The reply for a refused change: the caller's mistake is a 4xx, the store's failure a 500."""
    if isinstance(exc, ModelNotFound):
        return ErrorCode.MODEL_NOT_FOUND, str(exc)
    if isinstance(exc, (StoreError, GGUFError)):
        return ErrorCode.BAD_REQUEST, str(exc)
    return ErrorCode.INTERNAL, f"cannot change the model store: {exc}"


class IndexWriter:
    """See the module docstring. Handlers never await; `offload` runs work off the loop."""

    def __init__(self, store: ModelStore, table: SlotTable, offload: Offload,
                 send: Callable[[bytes | None, Reply], None]) -> None:
        self.store, self.table, self.offload, self.send = store, table, offload, send
        # One change at a time: a copy must not link files that a delete is removing.
        self._lock = threading.Lock()

    def handlers(self) -> dict[type, Callable[[bytes, Any], None]]:
        return {ImportModelRequest: self.import_model, CopyModelRequest: self.copy_model,
                DeleteModelRequest: self.delete_model}

    def import_model(self, peer: bytes, req: ImportModelRequest) -> None:
        paths = [p for p in (req.path, req.mmproj) if p]
        if not req.path or not all(Path(p).is_absolute() for p in paths):
            self.send(peer, ErrorReply(req_id=req.req_id, code=ErrorCode.BAD_REQUEST,
                                       message=f"import paths must be absolute, got {', '.join(map(repr, paths))}"))
            return
        work = functools.partial(self.store.import_gguf, Path(req.path), req.name,
                                 mmproj=Path(req.mmproj) if req.mmproj else None, sha256=req.sha256)
        self._change(peer, req.req_id, work, lambda entry: self._indexed(peer, req.req_id, entry))

    def copy_model(self, peer: bytes, req: CopyModelRequest) -> None:
        work = functools.partial(self.store.copy, req.source, req.destination)
        self._change(peer, req.req_id, work, lambda entry: self._indexed(peer, req.req_id, entry))

    def delete_model(self, peer: bytes, req: DeleteModelRequest) -> None:
        """The model a name means (ModelStore.find: `qwen3:8b` is stored as `qwen3:8b:4bit`) is unloaded and
        removed under its stored name; the reply names that one."""
        try:
            found = self.store.find(req.model)
        except (StoreError, ValueError):  # an unreadable index or catalog: remove() gives the store's own answer
            found = None
        name = found.name if found is not None else req.model  # none: remove() says it is not installed
        self._unload(name, "deleted")

        def deleted(entry: ModelEntry) -> None:
            # A request may have loaded it again while its files were going: that engine goes too.
            self._unload(name, "deleted")
            log.info("deleted model %s (%s)", name, entry.path)
            self.send(peer, DeleteModelReply(req_id=req.req_id, model=name))
        self._change(peer, req.req_id, functools.partial(self.store.remove, name), deleted)

    def index_pulled(self, plan: PullPlan, answer: Callable[[ModelEntry | BaseException], None]) -> None:
        """Index a finished pull's files (manager/pulls.py); `answer` gets the entry, or the exception that refused it."""
        def indexed(entry: ModelEntry) -> None:
            self._replaced(entry)
            answer(entry)
        self._run(functools.partial(self.store.index_pulled, plan), indexed, answer)

    def _indexed(self, peer: bytes, req_id: int, entry: ModelEntry) -> None:
        self._replaced(entry)
        self.send(peer, ModelReply(req_id=req_id, entry=entry))

    def _replaced(self, entry: ModelEntry) -> None:
        """A name now means `entry`: engines still serving the files it meant before are unloaded."""
        self._unload(entry.name, "replaced by a new model of the same name", keep=lambda e: _files(e) == _files(entry))
        log.info("indexed model %s (%s)", entry.name, entry.path)

    def _change(self, peer: bytes, req_id: int, work: Callable[[], Any], then: Callable[[Any], None]) -> None:
        def refused(exc: BaseException) -> None:
            code, message = error_of(exc)
            self.send(peer, ErrorReply(req_id=req_id, code=code, message=message))
        self._run(work, then, refused)

    def _run(self, work: Callable[[], Any], then: Callable[[Any], None],
             fail: Callable[[BaseException], None]) -> None:
        """`work` in a worker thread, one change at a time; `then` or `fail` on the loop."""
        def one_at_a_time() -> object:
            with self._lock:
                return work()

        def answer(result: object) -> None:
            if isinstance(result, BaseException):
                if error_of(result)[0] == ErrorCode.INTERNAL:
                    log.error("model store change failed: %s", result)
                fail(result)
            else:
                then(result)
        self.offload(one_at_a_time, answer)

    def _unload(self, model: str, reason: str, keep: Callable[[ModelEntry], bool] = lambda entry: False) -> None:
        self.table.unload_model(model, reason, keep=keep)  # one with requests in flight drains first
        self.table.schedule()


def _files(entry: ModelEntry) -> tuple[object, ...]:
    return entry.path, entry.sha256, entry.mmproj, entry.revision, entry.files
