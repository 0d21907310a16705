"""PullBoard: the manager's record of model pulls, and the queue the downloader takes its jobs from.

A pull is asked for by name (PullRequest). Two asks with the same key (catalog/entries.pull_key: the canonical
shortcut, or the normalised Hub name) share one pull. The downloader's workers long-poll for jobs
(NextPullRequest), so at most `max_pulls` run and the rest wait here, in order. While a job runs its worker
reports at least once a second (PullProgressRequest); each report's reply says whether to go on, which is how a
cancel reaches it. A finished download is indexed here, by the manager alone (PullDoneRequest →
IndexWriter.index_pulled). Every change is published as a PullEvent, the status stream's `download` event.

Nothing here blocks or awaits: the service runs the handlers on its loop and carries out the outbox.
"""

from __future__ import annotations

import collections
import logging
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgspec

from catalog.entries import CatalogError, UnknownModel, load_catalog, pull_key
from catalog.store import ModelStore, StoreError, check_name
from manager.effects import Clock, Outbox
from manager.protocol import (
    PULL_ENDED, PULL_POLL_S, CancelPullReply, CancelPullRequest, ErrorCode, ModelEntry, ModelReply, NextPullRequest,
    PullDoneRequest, PullEvent, PullInfo, PullJobReply, PullLeaveNotice, PullPlan, PullProgressReply,
    PullProgressRequest, PullReply, PullRequest, PullState,
)

log = logging.getLogger("lmforge.manager")

ACK_S = 10.0  # a job handed out but never reported on goes back to the queue (its worker died on the way)
STALL_S = 30.0  # a running job whose worker stopped reporting fails: the downloader is gone
CANCEL_WAIT_S = 10.0  # a cancelled job whose worker does not confirm is ended anyway
MAX_HANDOUTS = 3  # times a job may be handed out unanswered before it fails
RECENT = 10  # ended pulls kept for /lf/status
RATE_WINDOW_S = 5.0  # bytes_per_s is taken over the reports of this last stretch

Index = Callable[[PullPlan, Callable[[object], None]], None]
RUNNING = (PullState.RESOLVING, PullState.DOWNLOADING)  # what a worker's report may say while the job goes on


@dataclass
class Pull:
    info: PullInfo
    key: str
    keep: bool = False  # someone asked for it without following it: it goes on when every follower leaves
    cancel: bool = False  # asked to stop; the worker hears it in its next report's reply
    cancelled_at: float = 0.0
    worker: bytes | None = None  # the downloader peer running it
    token: str = ""  # this handout's token: one process's workers share a peer, so the peer alone cannot tell them apart
    handed_at: float = 0.0
    handouts: int = 0
    reported_at: float = 0.0  # monotonic; 0 until its worker first reports
    samples: collections.deque[tuple[float, int]] = field(default_factory=lambda: collections.deque(maxlen=64))

    @property
    def id(self) -> str:
        return self.info.pull_id


@dataclass(frozen=True)
class Poll:
    """A downloader worker waiting for a job."""

    peer: bytes
    req_id: int
    since: float


class PullBoard:
    """See the module docstring."""

    def __init__(self, index: Index, clock: Clock | None = None, key: Callable[[str], str] | None = None, *,
                 home: Path | None = None, store: ModelStore | None = None,
                 budget: Callable[[], int] = lambda: 0) -> None:
        """`key` defaults to pull_key over `home`'s catalog (the one the downloader resolves with); `store`, when
        given, must be readable for a pull to be queued; `budget` is the memory budget a job's quant must fit."""
        self.index, self.clock, self.store, self.budget = index, clock or Clock(), store, budget
        self.key = key or (lambda name: pull_key(name, load_catalog(home)))
        self.out = Outbox()
        self.active: dict[str, Pull] = {}  # by pull_id, in the order they were asked
        self.queue: collections.deque[str] = collections.deque()  # pull ids waiting for a worker
        self.polls: collections.deque[Poll] = collections.deque()
        self.recent: collections.deque[PullInfo] = collections.deque(maxlen=RECENT)

    def handlers(self) -> dict[type, Callable[[bytes, Any], None]]:
        return {PullRequest: self.pull, CancelPullRequest: self.cancel, NextPullRequest: self.next_job,
                PullProgressRequest: self.progress, PullDoneRequest: self.done, PullLeaveNotice: self.leave}

    def infos(self) -> tuple[PullInfo, ...]:
        return (*(p.info for p in self.active.values()), *self.recent)

    # --- asks from the gateway and the CLI ---

    def pull(self, peer: bytes, req: PullRequest) -> None:
        try:
            # A Hub URL's scheme is no part of the name (the resolver takes the URL as it is).
            key = self.key(check_name(re.sub(r"^https?://", "", req.model.strip(), flags=re.IGNORECASE)))
        except (StoreError, UnknownModel, CatalogError) as exc:
            code = ErrorCode.MODEL_NOT_FOUND if isinstance(exc, UnknownModel) else ErrorCode.BAD_REQUEST
            self.out.error(peer, req.req_id, code, str(exc))
            return
        try:
            if self.store is not None:
                self.store.list()  # an index this version cannot read (a newer schema) could not take the model
        except StoreError as exc:
            self.out.error(peer, req.req_id, ErrorCode.INTERNAL, f"cannot pull {req.model!r}: {exc}")
            return
        running = next((p for p in self.active.values() if p.key == key and not p.cancel), None)
        if running is not None:
            self._follow(running, req.follow)
            self.out.send(peer, PullReply(req_id=req.req_id, pull=running.info, joined=True))
            return
        info = PullInfo(pull_id=uuid.uuid4().hex[:12], model=req.model, state=PullState.QUEUED,
                        started_at=self.clock.now())
        pull = Pull(info=info, key=key)
        self._follow(pull, req.follow)
        self.active[pull.id] = pull
        self.queue.append(pull.id)
        log.info("pull %s of %s queued", pull.id, req.model)
        self.out.send(peer, PullReply(req_id=req.req_id, pull=pull.info))
        self._publish(pull)
        self._hand_out()

    def _follow(self, pull: Pull, follow: bool) -> None:
        if follow:
            self._update(pull, followers=pull.info.followers + 1)
        else:
            pull.keep = True

    def cancel(self, peer: bytes, req: CancelPullRequest) -> None:
        pull = self.active.get(req.pull_id) if req.pull_id else self._by_model(req.model)
        if pull is None:
            self.out.error(peer, req.req_id, ErrorCode.MODEL_NOT_FOUND,
                           f"no pull of {req.model or req.pull_id!r} is running")
            return
        if pull.info.state == PullState.INDEXING:
            self.out.error(peer, req.req_id, ErrorCode.BAD_REQUEST,
                           f"the pull of {pull.info.model!r} is complete and being indexed; delete the model instead")
            return
        self._stop(pull, "cancelled")
        self.out.send(peer, CancelPullReply(req_id=req.req_id, pull=pull.info))

    def leave(self, peer: bytes, notice: PullLeaveNotice) -> None:
        pull = self.active.get(notice.pull_id)
        if pull is None:
            return
        self._update(pull, followers=max(0, pull.info.followers - 1))
        if pull.info.followers == 0 and not pull.keep and pull.info.state != PullState.INDEXING:
            self._stop(pull, "every client following it left")

    def _by_model(self, model: str) -> Pull | None:
        try:
            key = self.key(model)
        except (StoreError, UnknownModel, CatalogError):
            key = model
        return next((p for p in self.active.values() if p.key == key or p.info.model == model), None)

    def _stop(self, pull: Pull, why: str) -> None:
        log.info("pull %s of %s: %s", pull.id, pull.info.model, why)
        if pull.worker is None:  # still queued: nobody downloads it yet
            self._end(pull, PullState.CANCELLED)
        elif not pull.cancel:
            pull.cancel, pull.cancelled_at = True, self.clock.mono()

    # --- the downloader's workers ---

    def next_job(self, peer: bytes, req: NextPullRequest) -> None:
        self.polls.append(Poll(peer, req.req_id, self.clock.mono()))
        self._hand_out()

    def _hand_out(self) -> None:
        while self.queue and self.polls:
            poll, pull = self.polls.popleft(), self.active[self.queue.popleft()]
            pull.worker, pull.handed_at, pull.reported_at = poll.peer, self.clock.mono(), 0.0
            pull.token = uuid.uuid4().hex[:12]
            pull.handouts += 1
            self.out.send(poll.peer, PullJobReply(req_id=poll.req_id, pull_id=pull.id, model=pull.info.model,
                                                  token=pull.token, budget_bytes=self.budget()))

    def _running(self, peer: bytes, pull_id: str, token: str) -> Pull | None:
        """The pull a worker reports on, if this worker runs it: an ended job, one the manager before us handed
        out, or one handed out again since (the stale token) is not its any more."""
        pull = self.active.get(pull_id)
        return pull if pull is not None and pull.worker == peer and pull.token == token else None

    def progress(self, peer: bytes, req: PullProgressRequest) -> None:
        pull = self._running(peer, req.pull_id, req.token)
        if pull is None:
            self.out.send(peer, PullProgressReply(req_id=req.req_id, cancel=True))
            return
        if req.state not in (*RUNNING, PullState.FAILED, PullState.CANCELLED):
            # DONE comes as a PullDoneRequest, INDEXING is the manager's own: taking either here would leave the
            # pull in `active` with no worker to end it.
            self.out.error(peer, req.req_id, ErrorCode.BAD_REQUEST,
                           f"a progress report says {req.state}; it may say {', '.join(RUNNING)}, failed or cancelled")
            return
        pull.reported_at = self.clock.mono()
        if req.state in (PullState.FAILED, PullState.CANCELLED):
            self.out.send(peer, PullProgressReply(req_id=req.req_id, cancel=True))
            self._end(pull, req.state, error=req.error, status=req.error_status)
            return
        changes: dict[str, Any] = {"state": req.state}
        if req.plan is not None:
            changes.update(name=req.plan.name, repo=req.plan.repo, quant=req.plan.quant,
                           total_bytes=req.plan.total_bytes)
        if req.files:
            done = sum(f.done for f in req.files)
            changes.update(files=req.files, done_bytes=done, bytes_per_s=self._rate(pull, done))
        self._update(pull, **changes)
        self.out.send(peer, PullProgressReply(req_id=req.req_id, cancel=pull.cancel))
        self._publish(pull)

    def _rate(self, pull: Pull, done: int) -> float:
        now = self.clock.mono()
        pull.samples.append((now, done))
        while len(pull.samples) > 2 and now - pull.samples[0][0] > RATE_WINDOW_S:
            pull.samples.popleft()
        (t0, b0), (t1, b1) = pull.samples[0], pull.samples[-1]
        return round((b1 - b0) / (t1 - t0), 1) if t1 > t0 else pull.info.bytes_per_s

    def done(self, peer: bytes, req: PullDoneRequest) -> None:
        pull = self._running(peer, req.pull_id, req.token)
        if pull is None:
            self.out.error(peer, req.req_id, ErrorCode.BAD_REQUEST, f"no pull {req.pull_id} is running")
            return
        if pull.info.state == PullState.INDEXING:
            self.out.error(peer, req.req_id, ErrorCode.BAD_REQUEST, f"the pull {req.pull_id} is already being indexed")
            return
        pull.reported_at = self.clock.mono()
        if pull.cancel:  # asked to stop while its last bytes came in: the downloader takes its files back out
            self.out.error(peer, req.req_id, ErrorCode.BAD_REQUEST, f"the pull of {pull.info.model!r} was cancelled")
            self._end(pull, PullState.CANCELLED)
            return
        self._update(pull, state=PullState.INDEXING, name=req.plan.name, done_bytes=req.plan.total_bytes,
                     total_bytes=req.plan.total_bytes)
        self._publish(pull)

        def indexed(result: object) -> None:
            if isinstance(result, BaseException):
                message = f"the files arrived but could not be indexed: {result}"
                self.out.error(peer, req.req_id, ErrorCode.BAD_REQUEST, message)
                self._end(pull, PullState.FAILED, error=message, status=500)
            else:
                assert isinstance(result, ModelEntry)
                self.out.send(peer, ModelReply(req_id=req.req_id, entry=result))
                self._end(pull, PullState.DONE, entry=result)
        self.index(req.plan, indexed)

    # --- time ---

    def tick(self) -> None:
        now = self.clock.mono()
        while self.polls and now - self.polls[0].since >= PULL_POLL_S:
            poll = self.polls.popleft()  # nothing came: it asks again (and a dead worker's poll is dropped)
            self.out.send(poll.peer, PullJobReply(req_id=poll.req_id, pull_id="", model=""))
        for pull in list(self.active.values()):
            if pull.worker is None or pull.info.state == PullState.INDEXING:
                continue
            if pull.cancel and now - pull.cancelled_at >= CANCEL_WAIT_S:
                self._end(pull, PullState.CANCELLED)
            elif not pull.reported_at and now - pull.handed_at >= ACK_S:
                self._requeue(pull)
            elif pull.reported_at and now - pull.reported_at >= STALL_S:
                self._end(pull, PullState.FAILED, error="the downloader stopped reporting on this pull (see `lmforge "
                          "logs downloader`); pull again: what was downloaded is kept and resumed")

    def _requeue(self, pull: Pull) -> None:
        if pull.handouts >= MAX_HANDOUTS:
            self._end(pull, PullState.FAILED, error="no downloader took the job; is the downloader process running? "
                      "(`lmforge status`)")
            return
        log.warning("pull %s of %s: its worker never reported; queued again", pull.id, pull.info.model)
        pull.worker, pull.token = None, ""
        self.queue.appendleft(pull.id)
        self._hand_out()

    # --- state ---

    def _update(self, pull: Pull, **changes: Any) -> None:
        pull.info = msgspec.structs.replace(pull.info, **changes)

    def _end(self, pull: Pull, state: PullState, *, error: str = "", status: int = 0,
             entry: ModelEntry | None = None) -> None:
        if pull.info.state in PULL_ENDED:
            return
        status = status or (500 if state == PullState.FAILED else 0)
        self._update(pull, state=state, error=error, error_status=status, bytes_per_s=0.0)
        self.active.pop(pull.id, None)
        if pull.id in self.queue:
            self.queue.remove(pull.id)
        self.recent.append(pull.info)
        level = logging.WARNING if state == PullState.FAILED else logging.INFO
        log.log(level, "pull %s of %s: %s%s", pull.id, pull.info.model, state, f" ({error})" if error else "")
        self._publish(pull, entry)

    def _publish(self, pull: Pull, entry: ModelEntry | None = None) -> None:
        self.out.publish(PullEvent(pull=pull.info, entry=entry))
