"""What a loaded engine is charged against the memory budget, and the ledger of what
past loads taught (`<home>/engines/memory.json`), which sets the next load's estimate.

Pure apart from MemoryLedger's file; the manager measures, this module decides.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import msgspec

from catalog.store import write_atomic
from manager.engines.base import MemoryPlan

log = logging.getLogger("lmforge.manager")

LEDGER_SCHEMA = 1


def growth_after_ready(plan: MemoryPlan, *, on_gpu: bool) -> int:
    """Bytes an engine measured right after ready may still grow by, where the budget counts.

    The adapter works the figures out from the header (it knows its engine's
    allocations); on a GPU host the budget counts VRAM, where engines commit
    their buffers at load, so only what the adapter names as VRAM growth counts.
    """
    return max(0, plan.growth_gpu if on_gpu else plan.growth)


def charge(estimate: int, measured: int | None, at_ready: int | None, growth: int) -> int:
    """What the budget counts for one engine.

    Before any measurement: the estimate (the header's, or what the ledger learned).
    Afterwards: what it holds now, but never less than what it held at ready plus
    what it will still grow by, so a model whose cache has not filled yet is not
    charged as if it never would. `at_ready` is the first measurement after ready;
    a missing one makes `measured` stand in for it. A reading that went missing
    later (NVML withholding it) leaves the charge at at_ready + growth.
    """
    if at_ready is None:
        if measured is None:
            return estimate
        at_ready = measured
    return max(measured or 0, at_ready + growth)


class LedgerEntry(msgspec.Struct, kw_only=True, frozen=True):
    model: str
    kind: str
    ctx_size: int
    bytes: int  # the charge the engine reached: the next load's estimate
    basis: int = 0  # the header estimate it was learned against; 0 when not given
    updated_at: float = 0.0


class LedgerFile(msgspec.Struct, kw_only=True):
    """The on-disk shape; its own schema, not the wire types (STYLE rule 14)."""

    schema_version: int = LEDGER_SCHEMA
    entries: list[LedgerEntry] = []


class _Version(msgspec.Struct):
    schema_version: int = 0


_version_decoder = msgspec.json.Decoder(_Version)
_decoder = msgspec.json.Decoder(LedgerFile)
_encoder = msgspec.json.Encoder()


class MemoryLedger:
    """What loads of each (model, kind, ctx_size) really came to; kept across restarts.

    Read once, lazily; every record() rewrites the file atomically (temp file, fsync,
    os.replace). A missing file starts empty; an unreadable one starts empty with a
    warning and is replaced at the next record(). Thread-safe: the manager calls it
    from worker threads.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, int], LedgerEntry] | None = None

    def learned(self, model: str, kind: str, ctx_size: int, *, basis: int | None = None) -> int | None:
        """The figure the last load of this model taught, or None when there is none.

        With `basis` (this load's header estimate), a figure learned against
        another basis is stale: another file under the same name, or other engine
        settings, and None is returned.
        """
        with self._lock:
            entry = self._load().get((model, str(kind), ctx_size))
        if entry is None or (basis is not None and entry.basis and entry.basis != basis):
            return None
        return entry.bytes

    def record(self, model: str, kind: str, ctx_size: int, nbytes: int, *, basis: int = 0) -> None:
        """Keep `nbytes` as what this (model, kind, ctx_size) costs; the file is rewritten."""
        entry = LedgerEntry(model=model, kind=str(kind), ctx_size=ctx_size, bytes=int(nbytes),
                            basis=basis, updated_at=time.time())
        with self._lock:
            entries = self._load()
            old = entries.get((entry.model, entry.kind, ctx_size))
            if old is not None and (old.bytes, old.basis) == (entry.bytes, entry.basis):
                return  # unchanged: no write
            entries[(entry.model, entry.kind, ctx_size)] = entry
            self._write(list(entries.values()))

    def forget(self, model: str) -> None:
        """Drop every figure for `model` (removed, or re-imported from another file)."""
        with self._lock:
            entries = self._load()
            gone = [key for key in entries if key[0] == model]
            for key in gone:
                del entries[key]
            if gone:
                self._write(list(entries.values()))

    def _load(self) -> dict[tuple[str, str, int], LedgerEntry]:
        if self._entries is None:
            self._entries = {(e.model, e.kind, e.ctx_size): e for e in self._read()}
        return self._entries

    def _read(self) -> list[LedgerEntry]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot read the memory ledger %s (%s); starting without it", self.path, exc)
            return []
        try:
            version = _version_decoder.decode(data).schema_version
            if version != LEDGER_SCHEMA:
                log.warning("the memory ledger %s has schema %s, this LMForge reads %s; starting without it",
                            self.path, version, LEDGER_SCHEMA)
                return []
            return _decoder.decode(data).entries
        except msgspec.DecodeError as exc:
            log.warning("the memory ledger %s is unreadable (%s); starting without it", self.path, exc)
            return []

    def _write(self, entries: list[LedgerEntry]) -> None:
        try:
            write_atomic(self.path, _encoder.encode(LedgerFile(entries=entries)))
        except OSError as exc:
            # A lost ledger only costs the next load its learned estimate.
            log.warning("cannot write the memory ledger %s: %s", self.path, exc)
