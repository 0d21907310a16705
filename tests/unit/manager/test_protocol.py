"""The wire contract: every message round-trips, the naming rule holds, bad bytes are refused."""

from __future__ import annotations

import msgspec
import pytest

from manager import protocol as p


def sample(cls: type) -> object:
    """An instance of a message class with every required field filled."""
    values = {
        "req_id": 7, "role": p.PeerRole.GATEWAY, "pid": 42, "epoch": "e1", "manager_pid": 1,
        "model": "gemma3:270m", "lease_id": "e1:3", "kind": p.SlotKind.CHAT, "base_url": "http://127.0.0.1:1",
        "engine": "llama.cpp", "unloaded": ("a",), "seq": 5, "models": (), "code": p.ErrorCode.BAD_REQUEST,
        "message": "no", "stage": "spawned", "time": 1.0, "text": "# metrics\n",
        "slot": p.SlotInfo(model="m", kind=p.SlotKind.CHAT, state=p.SlotState.READY, engine="llama.cpp", generation=1),
        "status": p.ManagerStatus(epoch="e", started_at=0.0, slots=(), last_errors={},
                                  budget=p.BudgetInfo(total_bytes=10, used_bytes=4, source="config")),
        "snapshot": p.HardwareSnapshot(os="linux", arch="x86_64", cpu_model="cpu", cpu_cores=2, cpu_threads=2,
                                       ram_total=8, ram_available=4),
        "error": p.LoadError(at=1.0, message="boom", severity=p.Severity.TRANSIENT),
        "path": "/m.gguf", "name": "m", "source": "a", "destination": "b",
        "entry": p.ModelEntry(name="m", path="/m.gguf", vision=True, mmproj="/mmproj-m.gguf", dir="/",
                              files=("m.gguf", "mmproj-m.gguf"), options={"temperature": 0.6}),
        "pull_id": "p1", "state": p.PullState.DOWNLOADING,
        "pull": p.PullInfo(pull_id="p1", model="m", state=p.PullState.QUEUED,
                           files=(p.PullFileProgress(path="m.gguf", size=10, done=4),)),
        "plan": p.PullPlan(name="m", source="hf", repo="o/r", directory="hf/o--r/Q4_K_M",
                           files=(p.PullFile(path="m.gguf", size=10, sha256="a" * 64),), primary="m.gguf"),
    }
    fields = {f.name: values[f.name] for f in msgspec.structs.fields(cls) if f.required}
    return cls(**fields)


@pytest.mark.parametrize("cls", p.REQUESTS + p.NOTICES, ids=lambda c: c.__name__)
def test_every_message_to_the_manager_round_trips(cls: type) -> None:
    msg = sample(cls)
    assert p.to_manager_decoder.decode(p.encoder.encode(msg)) == msg


@pytest.mark.parametrize("cls", p.REPLIES, ids=lambda c: c.__name__)
def test_every_reply_round_trips(cls: type) -> None:
    msg = sample(cls)
    assert p.from_manager_decoder.decode(p.encoder.encode(msg)) == msg


@pytest.mark.parametrize("cls", p.EVENTS, ids=lambda c: c.__name__)
def test_every_event_round_trips_and_has_a_topic(cls: type) -> None:
    msg = sample(cls)
    assert p.event_decoder.decode(p.encoder.encode(msg)) == msg
    assert cls in p.TOPICS


def test_the_tag_on_the_wire_is_the_class_name() -> None:
    raw = msgspec.msgpack.decode(p.encoder.encode(p.SnapshotRequest(req_id=1)))
    assert raw == {"type": "SnapshotRequest", "req_id": 1}


def test_unknown_message_type_is_refused() -> None:
    data = msgspec.msgpack.encode({"type": "LaunchMissilesRequest", "req_id": 1})
    with pytest.raises(msgspec.ValidationError, match="LaunchMissilesRequest"):
        p.to_manager_decoder.decode(data)


def test_fields_missing_on_the_wire_take_their_defaults() -> None:
    # An older peer that does not send `kind` or `keep_alive` still decodes.
    data = msgspec.msgpack.encode({"type": "AcquireRequest", "req_id": 1, "model": "m"})
    msg = p.to_manager_decoder.decode(data)
    assert msg == p.AcquireRequest(req_id=1, model="m", kind=p.SlotKind.CHAT, keep_alive=None)


def test_naming_rule_rejects_a_misnamed_message() -> None:
    class StatusQuery(p.Request):  # does not end in "Request"
        pass

    with pytest.raises(TypeError, match="StatusQuery"):
        p.check_naming_rule({"StatusQuery": StatusQuery})


def test_naming_rule_rejects_a_suffix_without_its_base() -> None:
    class FakeEvent(msgspec.Struct):
        pass

    with pytest.raises(TypeError, match="FakeEvent"):
        p.check_naming_rule({"FakeEvent": FakeEvent})


def test_protocol_version_travels_in_the_hello() -> None:
    hello = p.HelloRequest(req_id=1, role=p.PeerRole.PROBER, pid=1)
    assert msgspec.msgpack.decode(p.encoder.encode(hello))["protocol"] == p.PROTOCOL


def test_budget_free_bytes_never_goes_negative() -> None:
    assert p.BudgetInfo(total_bytes=5, used_bytes=9, source="ram").free_bytes == 0


def test_the_model_store_messages_from_their_own_module_are_in_every_union() -> None:
    from manager import protocol_pulls

    moved = [getattr(protocol_pulls, name) for name in protocol_pulls.__all__]
    messages = [cls for cls in moved if isinstance(cls, type) and issubclass(cls, msgspec.Struct)
                and issubclass(cls, (p.Request, p.Reply, p.Notice, p.Event))]
    assert p.PullJobReply in messages and p.ModelReply in messages and p.PullEvent in messages
    assert all(cls in (*p.REQUESTS, *p.REPLIES, *p.NOTICES, *p.EVENTS) for cls in messages)
    assert all(getattr(p, name) is getattr(protocol_pulls, name) for name in protocol_pulls.__all__)
    p.check_naming_rule(vars(protocol_pulls))


def test_a_job_handout_token_and_budget_travel_to_the_worker_and_back() -> None:
    job = p.from_manager_decoder.decode(p.encoder.encode(
        p.PullJobReply(req_id=1, pull_id="p1", model="o/r", token="t1", budget_bytes=8 << 30)))
    assert (job.token, job.budget_bytes) == ("t1", 8 << 30)
    report = p.to_manager_decoder.decode(p.encoder.encode(
        p.PullProgressRequest(req_id=2, pull_id="p1", state=p.PullState.DOWNLOADING, token="t1")))
    assert report.token == "t1"
