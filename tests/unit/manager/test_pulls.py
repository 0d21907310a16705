"""PullBoard without processes: asks, sharing, the downloader's job queue, progress, cancel, leave, watchdogs."""

from __future__ import annotations

from typing import Callable

import msgspec
import pytest

from manager import pulls as pulls_module
from manager.effects import Publish, Send
from manager.protocol import (
    CancelPullReply, CancelPullRequest, ErrorReply, ModelEntry, ModelReply, NextPullRequest, PullDoneRequest, PullEvent,
    PullFile, PullFileProgress, PullJobReply, PullLeaveNotice, PullPlan, PullProgressReply, PullProgressRequest,
    PullReply, PullRequest, PullState,
)
from manager.pulls import PullBoard
from tests.support.table_driver import FakeClock

GATEWAY, WORKER = b"gateway-1", b"downloader-1"


class Board:
    """A PullBoard, its clock, and the index writes it asked for (answered by the test)."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.indexing: list[tuple[PullPlan, Callable[[object], None]]] = []
        self.board = PullBoard(index=lambda plan, answer: self.indexing.append((plan, answer)), clock=self.clock,
                               key=str.lower)
        self.ids = iter(range(1, 10_000))

    def ask(self, cls, peer: bytes = GATEWAY, **fields):  # type: ignore[no-untyped-def]
        if "req_id" in {f.name for f in msgspec.structs.fields(cls)}:
            fields["req_id"] = next(self.ids)
        message = cls(**fields)
        self.board.handlers()[cls](peer, message)
        return message

    def take(self) -> tuple[list[tuple[bytes | None, object]], list[PullEvent]]:
        effects = self.board.out.take()
        sent = [(e.peer, e.message) for e in effects if isinstance(e, Send)]
        events = [e.event for e in effects if isinstance(e, Publish)]
        return sent, events

    def replies(self, peer: bytes) -> list[object]:
        return [m for p, m in self.take()[0] if p == peer]

    def start_job(self, model: str = "owner/repo") -> str:
        """A pull handed to the worker; its pull_id."""
        self.ask(PullRequest, model=model)
        self.ask(NextPullRequest, peer=WORKER)
        job = [m for p, m in self.take()[0] if p == WORKER and isinstance(m, PullJobReply)]
        assert job, "the worker got no job"
        return job[0].pull_id


PLAN = PullPlan(name="owner/repo", source="hf", repo="owner/repo", directory="hf/owner--repo/Q4_K_M",
                files=(PullFile(path="m-Q4_K_M.gguf", size=1000, sha256="a" * 64),), primary="m-Q4_K_M.gguf",
                quant="Q4_K_M")


@pytest.fixture
def b() -> Board:
    return Board()


def test_a_pull_is_queued_and_published(b: Board) -> None:
    b.ask(PullRequest, model="owner/repo")
    sent, events = b.take()
    (peer, reply), = sent
    assert peer == GATEWAY and isinstance(reply, PullReply) and not reply.joined
    assert reply.pull.state == PullState.QUEUED and reply.pull.followers == 1
    assert [e.pull.state for e in events] == [PullState.QUEUED]
    assert b.board.infos() == (reply.pull,)


def test_the_same_model_twice_shares_one_pull(b: Board) -> None:
    b.ask(PullRequest, model="Owner/Repo")
    first = b.replies(GATEWAY)[0]
    b.ask(PullRequest, model="owner/repo")
    second = b.replies(GATEWAY)[0]
    assert second.joined and second.pull.pull_id == first.pull.pull_id and second.pull.followers == 2
    assert len(b.board.active) == 1


def test_a_bad_name_is_refused(b: Board) -> None:
    b.ask(PullRequest, model="../../etc")
    (reply,) = b.replies(GATEWAY)
    assert isinstance(reply, ErrorReply) and reply.code == "bad_request"


def test_jobs_wait_for_a_worker_and_go_in_order(b: Board) -> None:
    b.ask(PullRequest, model="a/one")
    b.ask(PullRequest, model="a/two")
    b.take()
    b.ask(NextPullRequest, peer=WORKER)
    (job,) = b.replies(WORKER)
    assert job.model == "a/one"
    b.ask(NextPullRequest, peer=WORKER)
    (job,) = b.replies(WORKER)
    assert job.model == "a/two"


def test_a_waiting_worker_gets_the_next_ask_at_once(b: Board) -> None:
    b.ask(NextPullRequest, peer=WORKER)
    assert b.replies(WORKER) == []
    b.ask(PullRequest, model="a/one")
    jobs = [m for p, m in b.take()[0] if p == WORKER]
    assert [j.model for j in jobs] == ["a/one"]


def test_an_idle_poll_is_answered_empty_so_the_worker_asks_again(b: Board) -> None:
    b.ask(NextPullRequest, peer=WORKER)
    b.clock.t += pulls_module.PULL_POLL_S
    b.board.tick()
    (reply,) = b.replies(WORKER)
    assert isinstance(reply, PullJobReply) and reply.pull_id == ""


def test_progress_updates_the_pull_and_its_rate(b: Board) -> None:
    pull_id = b.start_job()
    b.ask(PullProgressRequest, peer=WORKER, pull_id=pull_id, state=PullState.DOWNLOADING, plan=PLAN,
          files=(PullFileProgress(path="m-Q4_K_M.gguf", size=1000, done=100, state="downloading"),))
    b.take()
    b.clock.t += 2
    b.ask(PullProgressRequest, peer=WORKER, pull_id=pull_id, state=PullState.DOWNLOADING,
          files=(PullFileProgress(path="m-Q4_K_M.gguf", size=1000, done=500, state="downloading"),))
    sent, events = b.take()
    assert [m for p, m in sent if p == WORKER] == [PullProgressReply(req_id=sent[0][1].req_id, cancel=False)]
    info = events[-1].pull
    assert (info.total_bytes, info.done_bytes, info.quant, info.name) == (1000, 500, "Q4_K_M", "owner/repo")
    assert info.bytes_per_s == 200.0


def test_done_indexes_through_the_manager_and_ends_the_pull(b: Board) -> None:
    pull_id = b.start_job()
    b.ask(PullDoneRequest, peer=WORKER, pull_id=pull_id, plan=PLAN)
    assert [e.pull.state for e in b.take()[1]] == [PullState.INDEXING]
    (plan, answer), = b.indexing
    entry = ModelEntry(name="owner/repo", path="/m/x.gguf")
    answer(entry)
    sent, events = b.take()
    assert [m for p, m in sent if p == WORKER][0] == ModelReply(req_id=sent[0][1].req_id, entry=entry)
    assert events[-1].pull.state == PullState.DONE and events[-1].entry == entry
    assert b.board.active == {} and b.board.infos()[-1].state == PullState.DONE


def test_an_index_failure_fails_the_pull(b: Board) -> None:
    pull_id = b.start_job()
    b.ask(PullDoneRequest, peer=WORKER, pull_id=pull_id, plan=PLAN)
    b.take()
    b.indexing[0][1](ValueError("not a GGUF file"))
    sent, events = b.take()
    assert isinstance(sent[0][1], ErrorReply)
    assert events[-1].pull.state == PullState.FAILED and "not a GGUF file" in events[-1].pull.error


def test_cancel_of_a_queued_pull_ends_it_at_once(b: Board) -> None:
    b.ask(PullRequest, model="a/one")
    b.take()
    b.ask(CancelPullRequest, model="A/One")
    sent, events = b.take()
    assert isinstance(sent[0][1], CancelPullReply)
    assert events[-1].pull.state == PullState.CANCELLED and not b.board.queue


def test_cancel_of_a_running_pull_reaches_the_worker_in_its_next_reply(b: Board) -> None:
    pull_id = b.start_job()
    b.ask(CancelPullRequest, pull_id=pull_id)
    b.take()
    b.ask(PullProgressRequest, peer=WORKER, pull_id=pull_id, state=PullState.DOWNLOADING)
    (reply,) = b.replies(WORKER)
    assert reply.cancel
    b.ask(PullProgressRequest, peer=WORKER, pull_id=pull_id, state=PullState.CANCELLED)
    events = b.take()[1]
    assert events[-1].pull.state == PullState.CANCELLED


def test_a_cancel_the_worker_never_confirms_ends_anyway(b: Board) -> None:
    pull_id = b.start_job()
    b.ask(PullProgressRequest, peer=WORKER, pull_id=pull_id, state=PullState.DOWNLOADING)
    b.ask(CancelPullRequest, pull_id=pull_id)
    b.take()
    b.clock.t += pulls_module.CANCEL_WAIT_S
    b.board.tick()
    assert b.take()[1][-1].pull.state == PullState.CANCELLED


def test_a_cancel_before_the_files_were_indexed_wins(b: Board) -> None:
    pull_id = b.start_job()
    b.ask(CancelPullRequest, pull_id=pull_id)
    b.take()
    b.ask(PullDoneRequest, peer=WORKER, pull_id=pull_id, plan=PLAN)
    sent, events = b.take()
    assert isinstance(sent[0][1], ErrorReply) and b.indexing == []  # the downloader takes its files back out
    assert events[-1].pull.state == PullState.CANCELLED


def test_cancel_of_nothing_is_not_found(b: Board) -> None:
    b.ask(CancelPullRequest, model="a/none")
    (reply,) = b.replies(GATEWAY)
    assert isinstance(reply, ErrorReply) and reply.code == "model_not_found"


def test_the_last_follower_leaving_cancels_unless_kept(b: Board) -> None:
    b.ask(PullRequest, model="a/one")
    b.ask(PullRequest, model="a/one")
    pull_id = b.replies(GATEWAY)[0].pull.pull_id
    b.ask(PullLeaveNotice, pull_id=pull_id)
    assert b.board.active[pull_id].info.followers == 1
    b.ask(PullLeaveNotice, pull_id=pull_id)
    assert pull_id not in b.board.active  # queued, so cancelled at once

    b.ask(PullRequest, model="a/two")
    kept = b.replies(GATEWAY)[0].pull.pull_id
    b.ask(PullRequest, model="a/two", follow=False)
    b.ask(PullLeaveNotice, pull_id=kept)
    assert b.board.active[kept].info.state == PullState.QUEUED


def test_a_job_never_reported_on_is_queued_again_then_fails(b: Board) -> None:
    pull_id = b.start_job()
    for _ in range(pulls_module.MAX_HANDOUTS - 1):
        b.clock.t += pulls_module.ACK_S
        b.board.tick()
        assert b.board.queue[0] == pull_id
        b.ask(NextPullRequest, peer=WORKER)
        b.take()
    b.clock.t += pulls_module.ACK_S
    b.board.tick()
    assert b.take()[1][-1].pull.state == PullState.FAILED


def test_a_worker_that_stops_reporting_fails_the_pull(b: Board) -> None:
    pull_id = b.start_job()
    b.ask(PullProgressRequest, peer=WORKER, pull_id=pull_id, state=PullState.DOWNLOADING)
    b.take()
    b.clock.t += pulls_module.STALL_S
    b.board.tick()
    info = b.take()[1][-1].pull
    assert info.state == PullState.FAILED and "stopped reporting" in info.error


def test_reports_on_an_unknown_job_are_told_to_stop(b: Board) -> None:
    b.ask(PullProgressRequest, peer=WORKER, pull_id="gone", state=PullState.DOWNLOADING)
    (reply,) = b.replies(WORKER)
    assert reply.cancel


def test_a_failure_reported_by_the_worker_ends_the_pull(b: Board) -> None:
    pull_id = b.start_job()
    b.ask(PullProgressRequest, peer=WORKER, pull_id=pull_id, state=PullState.FAILED, error="sha256 mismatch")
    info = b.take()[1][-1].pull
    assert info.state == PullState.FAILED and info.error == "sha256 mismatch" and info.error_status == 500
    assert b.board.infos()[-1] == info
