"""IndexWriter: index changes answered with the right reply or error code, and the engines they make stale unloaded.

A real store in a temporary home and a real slot table (driven by tests/support/table_driver);
the offload seam runs each change at once instead of in a thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from catalog.store import ModelStore, StoreError
from manager.config import Paths
from manager.index import IndexWriter, error_of
from manager.protocol import (
    AcquireReply, AcquireRequest, CopyModelRequest, DeleteModelReply, DeleteModelRequest, ErrorCode, ErrorReply,
    ImportModelRequest, ModelEntry, ModelReply, PullFile, PullPlan, Reply,
)
from tests.support.table_driver import CHAT, GATEWAY, Driver


class Harness:
    def __init__(self, home: Path) -> None:
        self.driver = Driver()
        self.store = ModelStore(Paths(home))
        self.replies: list[Reply] = []
        self.writer = IndexWriter(self.store, self.driver.table, self._offload, lambda peer, r: self.replies.append(r))
        self._ids = iter(range(1000, 10_000))

    @staticmethod
    def _offload(work, then) -> None:  # type: ignore[no-untyped-def]
        try:
            result = work()
        except Exception as exc:  # as the service's offload hands it on
            result = exc
        then(result)

    def ask(self, cls: type, **fields: object) -> Reply:
        handler = self.writer.handlers()[cls]
        handler(GATEWAY, cls(req_id=next(self._ids), **fields))
        self.driver.settle()
        return self.replies[-1]

    def serve(self, name: str) -> AcquireReply:
        """A ready slot of the installed model, with one lease held."""
        self.driver.sizes[name] = 100
        req = AcquireRequest(req_id=next(self._ids), model=name, kind=CHAT)
        self.driver.table.acquire(GATEWAY, req, self.store.get(name))
        self.driver.settle()
        self.driver.ready(name)
        return self.driver.lease(req.req_id)


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "home")


def test_an_import_is_answered_with_its_entry(h: Harness, models_dir: Path) -> None:
    reply = h.ask(ImportModelRequest, path=str(models_dir / "chat.gguf"), name="tiny:chat",
                  mmproj=str(models_dir / "mmproj.gguf"))
    assert isinstance(reply, ModelReply) and reply.entry.vision and h.store.get("tiny:chat") == reply.entry


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"path": "chat.gguf", "name": "x"}, "must be absolute"),
    ({"path": "/nowhere/chat.gguf", "name": "x"}, "does not exist"),
    ({"path": "MODELS/chat.gguf", "name": "../x"}, "invalid model name"),
    ({"path": "MODELS/chat.gguf", "name": ""}, "invalid model name"),
    ({"path": "MODELS/chat.gguf", "name": "x", "mmproj": "MODELS/embed.gguf"}, "not a vision projector"),
])
def test_a_bad_import_is_a_bad_request_that_changes_nothing(h: Harness, models_dir: Path,
                                                           fields: dict[str, str], fragment: str) -> None:
    fields = {k: v.replace("MODELS", str(models_dir)) for k, v in fields.items()}
    reply = h.ask(ImportModelRequest, **fields)
    assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.BAD_REQUEST and fragment in reply.message
    assert h.store.list() == []


def test_reimporting_the_same_file_leaves_its_engine_alone(h: Harness, models_dir: Path) -> None:
    h.ask(ImportModelRequest, path=str(models_dir / "chat.gguf"), name="m")
    h.serve("m")
    assert isinstance(h.ask(ImportModelRequest, path=str(models_dir / "chat.gguf"), name="m"), ModelReply)
    assert h.driver.state("m") is not None and h.driver.stopped == []


def test_importing_another_file_under_a_served_name_unloads_the_stale_engine(h: Harness, models_dir: Path) -> None:
    h.ask(ImportModelRequest, path=str(models_dir / "chat.gguf"), name="m")
    lease = h.serve("m")
    h.ask(ImportModelRequest, path=str(models_dir / "cycle.gguf"), name="m")
    assert h.driver.state("m") is None  # off the table: the next request loads the new file
    assert h.driver.stopped == []  # but its request in flight finishes first
    h.driver.release(lease.lease_id)
    assert ("m", lease.generation) in h.driver.stopped


def test_copying_onto_a_served_name_unloads_it_and_the_source_keeps_serving(h: Harness, models_dir: Path) -> None:
    h.ask(ImportModelRequest, path=str(models_dir / "chat.gguf"), name="a")
    h.ask(ImportModelRequest, path=str(models_dir / "cycle.gguf"), name="b")
    h.serve("a")
    h.serve("b")
    reply = h.ask(CopyModelRequest, source="a", destination="b")
    assert isinstance(reply, ModelReply) and reply.entry.name == "b"
    assert h.driver.state("b") is None and h.driver.state("a") is not None


def test_copying_a_missing_model_is_model_not_found(h: Harness) -> None:
    reply = h.ask(CopyModelRequest, source="nope", destination="b")
    assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.MODEL_NOT_FOUND


def test_a_delete_unloads_the_model_then_removes_its_entry_and_files(h: Harness, models_dir: Path) -> None:
    h.ask(ImportModelRequest, path=str(models_dir / "chat.gguf"), name="m")
    h.serve("m")
    reply = h.ask(DeleteModelRequest, model="m")
    assert isinstance(reply, DeleteModelReply) and reply.model == "m"
    assert h.driver.state("m") is None and h.store.get("m") is None
    assert not h.store.model_dir("m").exists()


def test_a_model_is_deleted_and_copied_by_the_name_it_was_pulled_as(h: Harness, models_dir: Path) -> None:
    """`qwen3:8b` is stored as `qwen3:8b:4bit`: the delete unloads and removes that one, and says so."""
    assert isinstance(index_pulled(h, pull_plan(h, models_dir / "chat.gguf", name="qwen3:8b:4bit")), ModelEntry)
    copied = h.ask(CopyModelRequest, source="qwen3:8b:latest", destination="mine")
    assert isinstance(copied, ModelReply) and copied.entry.repo == "o/r"
    h.serve("qwen3:8b:4bit")
    reply = h.ask(DeleteModelRequest, model="qwen3:8b")
    assert isinstance(reply, DeleteModelReply) and reply.model == "qwen3:8b:4bit"
    assert h.driver.state("qwen3:8b:4bit") is None and h.store.get("qwen3:8b:4bit") is None
    assert h.store.get("mine") is not None


def test_deleting_a_missing_model_is_model_not_found(h: Harness) -> None:
    reply = h.ask(DeleteModelRequest, model="nope")
    assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.MODEL_NOT_FOUND and "nope" in reply.message


def pull_plan(h: Harness, source: Path, name: str = "m") -> PullPlan:
    """A pull's file as the downloader leaves it: verified and moved into its directory."""
    directory = h.store.paths.models / "hf/o--r/Q4_K_M"
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, directory / source.name)
    return PullPlan(name=name, source="hf", repo="o/r", quant="Q4_K_M", directory="hf/o--r/Q4_K_M",
                    primary=source.name, files=(PullFile(path=source.name, size=source.stat().st_size),))


def index_pulled(h: Harness, plan: PullPlan) -> ModelEntry | BaseException:
    answers: list[ModelEntry | BaseException] = []
    h.writer.index_pulled(plan, answers.append)
    h.driver.settle()
    (answer,) = answers
    return answer


def test_a_pull_is_indexed_and_answered_with_its_entry(h: Harness, models_dir: Path) -> None:
    entry = index_pulled(h, pull_plan(h, models_dir / "chat.gguf"))
    assert isinstance(entry, ModelEntry) and entry.repo == "o/r" and h.store.get("m") == entry


def test_a_pull_replacing_a_served_name_unloads_the_stale_engine(h: Harness, models_dir: Path) -> None:
    h.ask(ImportModelRequest, path=str(models_dir / "chat.gguf"), name="m")
    lease = h.serve("m")
    assert isinstance(index_pulled(h, pull_plan(h, models_dir / "cycle.gguf")), ModelEntry)
    assert h.driver.state("m") is None
    h.driver.release(lease.lease_id)
    assert ("m", lease.generation) in h.driver.stopped


def test_a_pull_whose_files_are_missing_is_answered_with_the_error(h: Harness, models_dir: Path) -> None:
    plan = pull_plan(h, models_dir / "chat.gguf")
    (h.store.paths.models / plan.directory / "chat.gguf").unlink()
    answer = index_pulled(h, plan)
    assert isinstance(answer, StoreError) and "chat.gguf is missing" in str(answer)
    assert error_of(answer)[0] == ErrorCode.BAD_REQUEST and h.store.list() == []
