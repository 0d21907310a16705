"""PullBoard without processes: asks, sharing, the downloader's job queue, progress, cancel, leave, watchdogs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import msgspec
import pytest

from catalog.index_file import SCHEMA_VERSION
from catalog.store import ModelStore
from manager import pulls as pulls_module
from manager.config import Paths
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

    def __init__(self, **options) -> None:  # type: ignore[no-untyped-def]
        self.clock = FakeClock()
        self.indexing: list[tuple[PullPlan, Callable[[object], None]]] = []
        options.setdefault("key", str.lower)
        self.board = PullBoard(index=lambda plan, answer: self.indexing.append((plan, answer)), clock=self.clock,
                               **options)
        self.ids = iter(range(1, 10_000))
        self.tokens: dict[str, str] = {}  # the token of each job's latest handout, echoed as a worker does

    def ask(self, cls, peer: bytes = GATEWAY, **fields):  # type: ignore[no-untyped-def]
        if "req_id" in {f.name for f in msgspec.structs.fields(cls)}:
            fields["req_id"] = next(self.ids)
        if cls in (PullProgressRequest, PullDoneRequest):
            fields.setdefault("token", self.tokens.get(fields["pull_id"], ""))
        message = cls(**fields)
        self.board.handlers()[cls](peer, message)
        return message

    def take(self) -> tuple[list[tuple[bytes | None, object]], list[PullEvent]]:
        effects = self.board.out.take()
        sent = [(e.peer, e.message) for e in effects if isinstance(e, Send)]
        self.tokens.update((m.pull_id, m.token) for _, m in sent if isinstance(m, PullJobReply) and m.pull_id)
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


# --- handouts, end states, the real names ---


def test_a_job_handed_out_again_is_run_only_by_its_latest_worker(b: Board) -> None:
    """Every worker of one downloader shares its peer: the handout's token tells them apart."""
    pull_id = b.start_job()
    stale = b.tokens[pull_id]
    b.clock.t += pulls_module.ACK_S  # the first worker is slow to report: the job goes to a second one
    b.board.tick()
    b.ask(NextPullRequest, peer=WORKER)
    b.take()
    assert b.tokens[pull_id] != stale
    b.ask(PullProgressRequest, peer=WORKER, pull_id=pull_id, state=PullState.DOWNLOADING, token=stale)
    (reply,) = b.replies(WORKER)
    assert reply.cancel  # the first worker stops
    b.ask(PullDoneRequest, peer=WORKER, pull_id=pull_id, plan=PLAN, token=stale)
    (reply,) = b.replies(WORKER)
    assert isinstance(reply, ErrorReply) and b.indexing == []
    b.ask(PullProgressRequest, peer=WORKER, pull_id=pull_id, state=PullState.DOWNLOADING)
    (reply,) = b.replies(WORKER)
    assert isinstance(reply, PullProgressReply) and not reply.cancel
    assert b.board.active[pull_id].info.state == PullState.DOWNLOADING


def test_done_twice_indexes_once(b: Board) -> None:
    pull_id = b.start_job()
    b.ask(PullDoneRequest, peer=WORKER, pull_id=pull_id, plan=PLAN)
    b.take()
    b.ask(PullDoneRequest, peer=WORKER, pull_id=pull_id, plan=PLAN)
    (reply,) = b.replies(WORKER)
    assert isinstance(reply, ErrorReply) and "already being indexed" in reply.message
    assert len(b.indexing) == 1


@pytest.mark.parametrize("state", [PullState.DONE, PullState.INDEXING, PullState.QUEUED])
def test_a_report_of_a_state_a_worker_cannot_be_in_is_refused(b: Board, state: PullState) -> None:
    pull_id = b.start_job()
    b.ask(PullProgressRequest, peer=WORKER, pull_id=pull_id, state=PullState.DOWNLOADING)
    b.take()
    b.ask(PullProgressRequest, peer=WORKER, pull_id=pull_id, state=state)
    (reply,) = b.replies(WORKER)
    assert isinstance(reply, ErrorReply) and reply.code == "bad_request" and str(state) in reply.message
    assert b.board.active[pull_id].info.state == PullState.DOWNLOADING
    b.clock.t += pulls_module.STALL_S  # and the watchdog still ends it: nothing is stuck in `active`
    b.board.tick()
    assert pull_id not in b.board.active


def test_a_new_pull_of_a_model_still_cancelling_is_a_new_pull(b: Board) -> None:
    first = b.start_job("a/one")
    b.ask(CancelPullRequest, pull_id=first)
    b.take()
    assert b.board.active[first].cancel  # its worker has not confirmed yet
    b.ask(PullRequest, model="a/one")
    (reply,) = b.replies(GATEWAY)
    assert isinstance(reply, PullReply) and not reply.joined and reply.pull.pull_id != first
    b.ask(PullProgressRequest, peer=WORKER, pull_id=first, state=PullState.CANCELLED)
    b.take()
    assert first not in b.board.active and b.board.active[reply.pull.pull_id].info.state == PullState.QUEUED


def test_leaving_while_indexing_does_not_cancel(b: Board) -> None:
    pull_id = b.start_job()
    b.ask(PullDoneRequest, peer=WORKER, pull_id=pull_id, plan=PLAN)
    b.take()
    b.ask(PullLeaveNotice, pull_id=pull_id)
    pull = b.board.active[pull_id]
    assert pull.info.state == PullState.INDEXING and not pull.cancel
    b.indexing[0][1](ModelEntry(name="owner/repo", path="/m/x.gguf"))
    assert b.take()[1][-1].pull.state == PullState.DONE


def test_the_job_carries_the_memory_budget() -> None:
    b = Board(budget=lambda: 12 * 10**9)
    b.ask(PullRequest, model="o/r")
    b.ask(NextPullRequest, peer=WORKER)
    (job,) = [m for p, m in b.take()[0] if p == WORKER]
    assert job.budget_bytes == 12 * 10**9 and job.token


@pytest.fixture
def real(tmp_path: Path) -> Board:
    """The real pull_key over the home's catalog, check_name and store."""
    return Board(key=None, home=tmp_path, store=ModelStore(Paths(tmp_path)))


@pytest.mark.parametrize("name", ["https://huggingface.co/o/r", "o/r@v1:Q4_K_M", "HTTP://hf.co/o/r:q4_k_m",
                                  "www.huggingface.co/o/r"])
def test_every_hub_spelling_the_resolver_takes_is_queued(real: Board, name: str) -> None:
    real.ask(PullRequest, model=name)
    (reply,) = real.replies(GATEWAY)
    assert isinstance(reply, PullReply) and reply.pull.model == name


def test_two_spellings_of_one_hub_model_share_a_pull(real: Board) -> None:
    real.ask(PullRequest, model="hf.co/O/R:latest")
    real.ask(PullRequest, model="https://huggingface.co/o/r")
    first, second = real.replies(GATEWAY)
    assert second.joined and second.pull.pull_id == first.pull.pull_id


def test_an_unknown_shortcut_is_refused_at_once_with_suggestions(real: Board) -> None:
    real.ask(PullRequest, model="qwen3:9b")
    (reply,) = real.replies(GATEWAY)
    assert isinstance(reply, ErrorReply) and reply.code == "model_not_found" and "did you mean" in reply.message
    assert real.board.active == {}


def test_a_shortcut_of_the_home_catalog_is_known(tmp_path: Path) -> None:
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "mine.toml").write_text(
        '[[model]]\nname = "mine:1b"\nkind = "chat"\ndescription = "d"\ncapabilities = ["chat"]\n'
        'context_length = 4096\ndefault_quant = "Q4_K_M"\n[model.gguf]\nrepo = "me/Mine-GGUF"\n'
        'quants.Q4_K_M = { file = "mine-Q4_K_M.gguf", size_bytes = 1000 }\n')
    b = Board(key=None, home=tmp_path)
    b.ask(PullRequest, model="mine:1b")
    (reply,) = b.replies(GATEWAY)
    assert isinstance(reply, PullReply)
    assert b.board.active[reply.pull.pull_id].key == "mine:1b:4bit"


def test_no_pull_is_queued_while_the_index_cannot_be_read(real: Board, tmp_path: Path) -> None:
    Paths(tmp_path).index.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "models": []}))
    real.ask(PullRequest, model="o/r")
    (reply,) = real.replies(GATEWAY)
    assert isinstance(reply, ErrorReply) and "newer LMForge" in reply.message
    assert real.board.active == {}
