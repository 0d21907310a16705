"""Pulls as the gateway serves them: one caller following one pull (shared by every dialect), the native SSE
stream of /lf/model/pull, its cancel, and /lf/catalog.

The manager owns every pull; a follower subscribes to its events before asking, so
nothing falls between the reply and the stream, and leaves when its client goes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator

import msgspec
from aiohttp import web

from catalog.entries import Catalog, CatalogError, fits, load_catalog
from gateway.api.native.handlers import CLOSE, PING_S
from gateway.api.native.schemas import PullBody, parse_body
from gateway.dataplane.gates import valid_name
from gateway.errors import ApiError
from gateway.keys import MANAGER, PATHS, STORE, STREAMS
from gateway.sse import PING, SSE_HEADERS, frame
from manager.client import RESYNC, ManagerUnavailable
from manager.protocol import (
    PULL_ENDED,
    CancelPullReply,
    CancelPullRequest,
    ModelEntry,
    PullEvent,
    PullInfo,
    PullLeaveNotice,
    PullReply,
    PullRequest,
    PullState,
    SnapshotReply,
    SnapshotRequest,
)

log = logging.getLogger("lmforge.gateway")

RESTARTED = "the manager restarted during the pull; pull again to resume"
SHUTTING_DOWN = "LMForge is shutting down; run the same pull again to resume"
KINDS = ("chat", "embedding", "vision", "rerank")


@dataclass(frozen=True)
class Update:
    """One step of a pull as its follower saw it; `entry` is the indexed model once it is done."""

    pull: PullInfo
    entry: ModelEntry | None = None

    @property
    def ended(self) -> bool:
        return self.pull.state in PULL_ENDED


class PullFollower:
    """One client following one pull. `follow`: the manager counts it, and when every follower has left, the
    pull is cancelled (its .part files stay for the next pull)."""

    def __init__(self, request: web.Request, model: str, *, follow: bool) -> None:
        self.app = request.app
        self.request = request
        self.manager = request.app[MANAGER]
        self.model, self.follow = model, follow
        self.last: Update | None = None
        self._over = False  # the manager said the pull ended (not this gateway, shutting down or resynced)
        self._queue: asyncio.Queue | None = None

    @property
    def ended(self) -> bool:
        return self.last is not None and self.last.ended

    async def start(self) -> Update:
        """Subscribe, then start or join the pull; a refusal (ManagerError, ManagerUnavailable) is raised."""
        self._queue = self.manager.subscribe()
        self.app[STREAMS].add(self._queue)
        asked = asyncio.ensure_future(self.manager.request(PullRequest, model=self.model, follow=self.follow))
        try:
            reply: PullReply = await asyncio.shield(asked)
        except asyncio.CancelledError:
            # The client left while the manager was counting it: once it answers, leave, or the pull
            # keeps a follower nobody is.
            await self._leave_when_answered(asked)
            raise
        except BaseException:
            self._unsubscribe()
            raise
        return self._seen(self._told(Update(reply.pull)))

    async def _leave_when_answered(self, asked: asyncio.Future) -> None:
        try:
            reply: PullReply = await asked
        except BaseException:  # refused or unreachable: it counted nobody
            self._unsubscribe()
            return
        self._seen(self._told(Update(reply.pull)))
        self.close()

    async def updates(self) -> AsyncIterator[Update | None]:
        """Every change of the pull until it ends; None after PING_S of silence (time for a keep-alive)."""
        assert self._queue is not None, "start() first"
        while not self.ended:
            try:
                item = await asyncio.wait_for(self._queue.get(), PING_S)
            except asyncio.TimeoutError:
                yield None
                continue
            update = await self._update_of(item)
            if update is not None:
                yield self._seen(update)

    def client_gone(self) -> bool:
        """The caller closed its connection (a handler that writes nothing while it waits cannot tell otherwise)."""
        transport = self.request.transport
        return transport is None or transport.is_closing()

    def close(self) -> None:
        """Stop following: a follower whose client left before the end tells the manager so."""
        self._unsubscribe()
        if self.last is not None and not self._over and self.follow:
            try:
                self.manager.notify(PullLeaveNotice(pull_id=self.last.pull.pull_id))
            except ManagerUnavailable:
                pass  # a manager that is gone holds no pull; a restarted one never had this follower

    async def _update_of(self, item: object) -> Update | None:
        assert self.last is not None
        if item is CLOSE:
            return Update(msgspec.structs.replace(self.last.pull, state=PullState.FAILED, error=SHUTTING_DOWN))
        if item is RESYNC:
            return await self._resynced()
        if isinstance(item, PullEvent) and item.pull.pull_id == self.last.pull.pull_id:
            return self._told(Update(item.pull, item.entry))
        return None

    async def _resynced(self) -> Update | None:
        """Events were lost (or the manager restarted): where the pull stands now, from a snapshot."""
        assert self.last is not None
        try:
            snap: SnapshotReply = await self.manager.request(SnapshotRequest)
        except ManagerUnavailable:
            return None  # down for now: the hello of its next start brings another RESYNC
        found = next((p for p in snap.status.pulls if p.pull_id == self.last.pull.pull_id), None)
        if found is None:
            return Update(msgspec.structs.replace(self.last.pull, state=PullState.FAILED, error=RESTARTED))
        return self._told(Update(found))

    def _told(self, update: Update) -> Update:
        """An update the manager gave: once it says the pull ended, there is nothing to leave."""
        self._over = update.ended
        return update

    def _seen(self, update: Update) -> Update:
        if update.pull.state == PullState.DONE and update.entry is None and update.pull.name:
            # Seen in a snapshot, not in its event: the index has it by now.
            update = Update(update.pull, self.app[STORE].get(update.pull.name))
        self.last = update
        return update

    def _unsubscribe(self) -> None:
        if self._queue is not None:
            self.manager.unsubscribe(self._queue)
            self.app[STREAMS].discard(self._queue)
            self._queue = None


def catalog_of(request: web.Request) -> Catalog:
    try:
        return load_catalog(request.app[PATHS].home)
    except CatalogError as exc:  # a broken override in <home>/catalog: the message names the file to fix
        raise ApiError(500, str(exc), code="catalog_error") from None


# --- the native SSE stream ---


def sse_frames(update: Update) -> bytes:
    """The frames for one update: its progress, then `done` or `error` when it ended."""
    out = frame("download", msgspec.to_builtins(update.pull))
    state = update.pull.state
    if state == PullState.DONE:
        entry = msgspec.to_builtins(update.entry) if update.entry is not None else {"name": update.pull.name}
        out += frame("done", {"model": entry})
    elif state == PullState.FAILED:
        out += frame("error", {"error": {"message": update.pull.error or "the pull failed", "code": "pull_failed",
                                         "status": update.pull.error_status or 500}})
    elif state == PullState.CANCELLED:
        out += frame("error", {"error": {"message": "the pull was cancelled; run the same pull to resume",
                                         "code": "pull_cancelled"}})
    return out


async def model_pull(request: web.Request) -> web.StreamResponse:
    """Start (or join) a pull and stream its progress as SSE until it ends."""
    body: PullBody = parse_body(await request.read(), PullBody)
    follower = PullFollower(request, body.model, follow=not body.keep)
    # A refusal here is an HTTP error, in the usual mapping: an unknown shortcut is the manager's 404, with the
    # closest names (it judges names against the home catalog, the one the downloader resolves with).
    first = await follower.start()
    try:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        await resp.write(sse_frames(first))
        async for update in follower.updates():
            await resp.write(PING if update is None else sse_frames(update))
    finally:
        follower.close()
    return resp


async def cancel_pull(request: web.Request) -> web.Response:
    """Cancel the pull of a model (its .part files stay, so the same pull resumes); 404 when none runs."""
    name = valid_name(request.match_info["name"])
    reply: CancelPullReply = await request.app[MANAGER].request(CancelPullRequest, model=name)
    return web.json_response({"status": "cancelled", "pull": msgspec.to_builtins(reply.pull)})


# --- the catalog ---


def catalog_listing(catalog: Catalog, installed: list[ModelEntry], budget_bytes: int,
                    kind: str | None = None) -> dict[str, object]:
    """The catalog's entries with their sizes and which fit `budget_bytes` (0: unknown, so `fits` is None)."""
    pulled = {m.catalog for m in installed if m.catalog} | {m.name for m in installed}

    def fit(size: int) -> bool | None:
        return fits(size, budget_bytes) if budget_bytes > 0 and size > 0 else None

    models = []
    for entry in catalog.entries():
        if kind is not None and entry.kind != kind:
            continue
        default = entry.default_quant
        quants = [default, *(q for q in entry.quants if q != default)]
        names = {q: entry.canonical(q) for q in quants}
        models.append({
            "name": names[default], "kind": entry.kind, "description": entry.description,
            "capabilities": list(entry.capabilities), "context_length": entry.context_length,
            "quants": [{"quant": q, "name": names[q], "size_bytes": entry.size(q), "fits": fit(entry.size(q)),
                        "installed": names[q] in pulled} for q in quants],
            "default_quant": default, "fits": fit(entry.size(default)),
            "installed": any(n in pulled for n in names.values()),
            "repos": {"gguf": entry.gguf.repo if entry.gguf else None, "mlx": dict(entry.mlx) or None,
                      "safetensors": entry.safetensors or None,
                      "pypi": entry.pypi.requirement if entry.pypi else None},
            "draft": entry.draft or None,
        })
    return {"models": models, "budget_bytes": budget_bytes}


async def catalog_list(request: web.Request) -> web.Response:
    """GET /lf/catalog[?kind=]: every shortcut `lmforge pull` knows, with what fits this machine's budget."""
    kind = request.query.get("kind") or None
    if kind is not None and kind not in KINDS:
        raise ApiError(400, f"kind must be one of {', '.join(KINDS)}; got {kind!r}", param="kind",
                       code="invalid_request")
    snap: SnapshotReply = await request.app[MANAGER].request(SnapshotRequest)
    listing = catalog_listing(catalog_of(request), request.app[STORE].list(), snap.status.budget.total_bytes, kind)
    return web.json_response(listing)
