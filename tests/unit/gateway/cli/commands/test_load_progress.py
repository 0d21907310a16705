"""What `lmforge load` prints of the status stream's events when not on a terminal: the model's stages, once each."""

from __future__ import annotations

import pytest

from gateway.cli.commands.load_progress import PlainView, Watch
from gateway.cli.terminal import Terminal


def slot(state: str, stage: str = "", progress: float | None = None, model: str = "a", detail: str = "") -> dict:
    return {"model": model, "kind": "chat", "state": state, "load_stage": stage, "load_progress": progress,
            "detail": detail}


def load(stage: str, progress: float | None = None, detail: str = "", model: str = "a") -> dict:
    return {"model": model, "kind": "chat", "stage": stage, "progress": progress, "detail": detail}


def shown(capsys: pytest.CaptureFixture[str], events: list[tuple[str, dict]]) -> list[str]:
    watch = Watch("a", "chat", PlainView(Terminal(), "a"))
    for name, data in events:
        watch.saw(name, data)
    return capsys.readouterr().out.splitlines()


def test_each_stage_of_the_model_is_a_line_and_its_weights_every_ten_percent(
        capsys: pytest.CaptureFixture[str]) -> None:
    events = [
        ("snapshot", {"slots": []}),
        ("slot", {"slot": slot("pending"), "previous": None}),  # before it waits for anything: no line
        ("load", load("waiting", detail="evicting b")),
        ("load", load("waiting", detail="evicting b")),
        ("slot", {"slot": slot("loading"), "previous": "pending"}),
        ("load", load("spawned", detail="pid 7 on port 9")),
        ("load", load("spawned", model="b")),  # another model's load
        ("load", load("loading_weights", 0.05, "12 of 240 MiB in memory")),
        ("load", load("loading_weights", 0.10)),
        ("load", load("loading_weights", 0.20)),
        ("load", load("loading_weights", 0.99)),
        ("load", load("warming_up")),
        ("slot", {"slot": slot("ready"), "previous": "loading"}),
        ("load", load("ready", 1.0)),  # the command's own line says it
    ]
    assert shown(capsys, events) == [
        "a: waiting (evicting b)", "a: engine started (pid 7 on port 9)",
        "a: loading weights 5% (12 of 240 MiB in memory)", "a: loading weights 20%", "a: loading weights 99%",
        "a: warming up",
    ]


def test_a_load_under_way_is_shown_from_the_snapshot_and_a_failure_with_its_reason(
        capsys: pytest.CaptureFixture[str]) -> None:
    events = [
        ("snapshot", {"slots": [slot("loading", "loading_weights", 0.43), slot("ready", model="b")]}),
        ("slot", {"slot": slot("loading", "loading_weights", 0.5), "previous": None}),  # the load events lead
        ("load", load("failed", detail="the engine for a made no progress for 45 s")),
    ]
    assert shown(capsys, events) == ["a: loading weights 43%",
                                     "a: failed (the engine for a made no progress for 45 s)"]
