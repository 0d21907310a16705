"""A load's stages from llama-server's log lines, its weights' share, when progress is reported, and when a load
that stands still is given up: the pure policy of manager/load_watch.py, and what the table makes of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.effects import Publish
from manager.engines.llamacpp_stages import LOAD_MARKERS
from manager.load_watch import (
    CPU_SIGN_S, PROGRESS_CAP, READ_SIGN, REPORT_EVERY_S, RSS_SIGN, LogTail, ReportGate, Signs, StallClock, Stalled,
    stages_in, stall_message, stall_window, weights_progress,
)
from manager.protocol import LoadProgressEvent, Severity, SlotKind, SlotState
from tests.support.table_driver import Driver

MiB = 1024**2
# llama-server's output while loading Gemma 3 270M, our build at its default verbosity (-lv 3).
DEFAULT_LOG = """\
0.00.010.691 I srv  llama_server: initializing ...
0.00.023.628 I cmn  common_param: common_params_print_info: verbosity = 3 (adjust with the `-lv N` CLI arg)
0.00.026.979 I srv    load_model: loading model '/models/gemma-3-270m-q4_k_m.gguf'
0.01.990.714 W load: control-looking token:    212 '</s>' was not control-type; this is probably a bug in the model.
0.02.295.007 I cmn          init: llama threadpool init, n_threads = 1
0.02.657.208 I srv    load_model: initializing, n_slots = 4, n_ctx_slot = 8192, kv_unified = 'true'
0.02.657.783 I srv  llama_server: model loaded
0.02.657.821 I srv  llama_server: listening on http://127.0.0.1:18991
""".splitlines()
# The lines -lv 4 adds that name a stage (among some two hundred more).
VERBOSE_LOG = """\
0.00.018.059 I srv    load_model: loading model '/models/gemma-3-270m-q4_k_m.gguf'
0.02.294.503 I load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
0.02.348.820 I llama_context: constructing llama_context
0.02.349.260 I llama_kv_cache:        CPU KV buffer size =    24.00 MiB
0.02.416.745 I cmn          init: llama threadpool init, n_threads = 1
0.02.416.752 I cmn  common_init_: warming up the model with an empty run - please wait ... (--no-warmup to disable)
0.02.513.785 I srv    load_model: initializing, n_slots = 4, n_ctx_slot = 8192, kv_unified = 'true'
""".splitlines()


def test_the_default_log_tells_loading_weights_then_warming_up() -> None:
    assert stages_in(DEFAULT_LOG, "spawned", LOAD_MARKERS) == ["loading_weights", "warming_up"]


def test_a_verbose_log_also_tells_the_context_being_built_and_no_stage_twice() -> None:
    assert stages_in(VERBOSE_LOG, "spawned", LOAD_MARKERS) == ["loading_weights", "building_context", "warming_up"]


def test_stages_only_go_forward_and_other_lines_open_none() -> None:
    assert stages_in(DEFAULT_LOG, "warming_up", LOAD_MARKERS) == []  # "loading model" comes again: not back
    assert stages_in(["srv  update_slots: all slots are idle", ""], "spawned", LOAD_MARKERS) == []
    assert stages_in(["x load_model: loading model 'm'"], "spawned", (("load_model", "no_such_stage"),)) == []


def test_the_weights_share_stays_below_one_until_ready_and_is_unknown_without_a_size() -> None:
    assert weights_progress(120 * MiB, 240 * MiB) == 0.5
    assert weights_progress(300 * MiB, 240 * MiB) == PROGRESS_CAP < 1
    assert weights_progress(-MiB, 240 * MiB) == 0
    assert weights_progress(None, 240 * MiB) is None and weights_progress(MiB, 0) is None


def test_the_weights_held_are_the_mapped_pages_since_spawn_else_resident_memory() -> None:
    signs = Signs(rss=300 * MiB, mapped=250 * MiB)
    assert signs.weights(mapped_at_spawn=10 * MiB) == 240 * MiB  # its own binary was mapped at the start
    assert Signs(rss=300 * MiB).weights(mapped_at_spawn=None) == 300 * MiB  # where mapped pages are not told


def test_the_stall_window_grows_with_the_models_size_and_zero_turns_it_off() -> None:
    assert stall_window(30, 15, 1_000_000_000) == 45
    assert stall_window(30, 15, 7_000_000_000) == 135
    assert stall_window(30, 15, 0) == 30
    assert stall_window(0, 15, 7_000_000_000) == 0


def test_a_load_that_shows_no_sign_of_life_past_its_window_has_stalled() -> None:
    clock = StallClock(45, now=0)
    still = Signs(log_bytes=100, rss=50 * MiB, read_bytes=10 * MiB, cpu_s=1.0)
    for t in range(0, 46):
        clock.saw(still, new_stage=False, now=t)
    assert clock.still_for(45) is None  # not past it yet
    clock.saw(still, new_stage=False, now=46)
    assert clock.still_for(46) == 46


@pytest.mark.parametrize("moved", [
    Signs(log_bytes=101, rss=50 * MiB, read_bytes=10 * MiB, cpu_s=1.0),  # a log line
    Signs(log_bytes=100, rss=50 * MiB + RSS_SIGN, read_bytes=10 * MiB, cpu_s=1.0),  # weights paged in
    Signs(log_bytes=100, rss=50 * MiB, read_bytes=10 * MiB + READ_SIGN, cpu_s=1.0),  # read() into a buffer
    Signs(log_bytes=100, rss=50 * MiB, read_bytes=10 * MiB, cpu_s=1.0 + CPU_SIGN_S),  # computing
])
def test_any_sign_of_life_restarts_the_window(moved: Signs) -> None:
    clock = StallClock(45, now=0)
    clock.saw(Signs(log_bytes=100, rss=50 * MiB, read_bytes=10 * MiB, cpu_s=1.0), new_stage=False, now=0)
    clock.saw(moved, new_stage=False, now=40)
    assert clock.still_for(80) is None and clock.still_for(86) == 46


def test_a_new_stage_restarts_the_window_and_memory_that_only_wobbles_does_not() -> None:
    clock = StallClock(10, now=0)
    clock.saw(Signs(rss=50 * MiB), new_stage=False, now=0)
    clock.saw(Signs(rss=50 * MiB + RSS_SIGN - 1), new_stage=False, now=5)  # below the threshold
    clock.saw(Signs(rss=49 * MiB), new_stage=False, now=8)
    assert clock.still_for(11) == 11
    clock.saw(Signs(rss=49 * MiB), new_stage=True, now=11)
    assert clock.still_for(20) is None


def test_slow_growth_adds_up_to_a_sign_against_the_last_one() -> None:
    clock = StallClock(10, now=0)
    for t in range(0, 9):  # a quarter of the threshold a second: a sign once it adds up
        clock.saw(Signs(rss=t * RSS_SIGN // 4), new_stage=False, now=t)
    assert clock.since == 8


def test_without_a_window_a_load_never_stalls() -> None:
    clock = StallClock(0, now=0)
    clock.saw(Signs(), new_stage=False, now=0)
    assert clock.still_for(10_000) is None


def test_every_new_stage_is_reported_and_progress_only_by_a_percent_at_most_four_times_a_second() -> None:
    gate = ReportGate("spawned")
    assert not gate.admit("spawned", None, 0)
    assert gate.admit("loading_weights", None, 0.0)
    assert gate.admit("loading_weights", 0.10, 0.3)
    assert not gate.admit("loading_weights", 0.5, 0.3 + REPORT_EVERY_S / 2)  # too soon after the last
    assert not gate.admit("loading_weights", 0.105, 0.6)  # less than a percent more
    assert gate.admit("loading_weights", 0.5, 0.6)
    assert gate.admit("warming_up", None, 0.61)  # a stage at once, however soon


def test_the_stall_message_names_the_model_the_time_the_stage_and_the_log() -> None:
    message = stall_message("a", "engine-a-chat", Stalled(45.2, "loading_weights", 0.43))
    assert message.startswith("the engine for a made no progress for 45 s while loading_weights (43%): it was "
                              "stopped; check `lmforge logs engine-a-chat`")
    assert "for 31 s while spawned: it was stopped" in stall_message("a", "engine-a-chat", Stalled(31, "spawned", None))


def test_the_log_tail_reads_whole_lines_appended_since_its_offset_and_follows_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_bytes(b"an earlier run\n")
    tail = LogTail(log, offset=log.stat().st_size)
    with log.open("ab") as f:
        f.write(b"one\ntw")
    assert tail.read() == ["one"]
    with log.open("ab") as f:
        f.write(b"o\n")
    assert tail.read() == ["two"] and tail.total == len(b"one\ntwo\n")
    log.write_bytes(b"after\n")  # copied and truncated (logfiles.py), then written again
    assert tail.read() == ["after"]


def test_the_table_shows_a_loading_slots_stage_and_tells_the_stream_until_ready() -> None:
    d = Driver()
    d.acquire("a")
    slot = d.table.slots[("a", SlotKind.CHAT)]
    assert slot.state == SlotState.LOADING
    d.table.spawned(slot.key, slot.generation, pid=1234, port=20000)
    d.table.progressed(slot.key, slot.generation, "loading_weights", 0.43, "103 of 240 MiB in memory")
    info = slot.info()
    assert info.load_stage == "loading_weights" and info.load_progress == 0.43  # a snapshot mid-load
    d.table.ready(slot.key, slot.generation)
    loads = [e.event for e in d.table.drain() if isinstance(e, Publish) and isinstance(e.event, LoadProgressEvent)]
    assert [(e.stage, e.progress) for e in loads] == [("spawned", None), ("loading_weights", 0.43), ("ready", 1.0)]
    assert loads[0].detail == "pid 1234 on port 20000"
    assert slot.info().load_stage == "" and slot.info().load_progress is None
    d.table.progressed(slot.key, slot.generation, "warming_up", None, "")  # late, from a runner: ignored
    assert not d.table.drain() and slot.info().load_stage == ""


def test_a_failed_load_is_told_with_its_reason() -> None:
    d = Driver()
    d.acquire("a")
    slot = d.table.slots[("a", SlotKind.CHAT)]
    d.settle()
    d.table.failed(slot.key, slot.generation, "the engine for a made no progress for 45 s", Severity.TRANSIENT, "")
    loads = [e.event for e in d.table.drain() if isinstance(e, Publish) and isinstance(e.event, LoadProgressEvent)]
    assert [(e.stage, e.detail) for e in loads] == [("failed", "the engine for a made no progress for 45 s")]
