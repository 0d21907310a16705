"""The charge that follows what an engine really holds, and the ledger of what loads taught."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from manager.engines.base import MemoryPlan
from manager.memory import LEDGER_SCHEMA, MemoryLedger, charge, growth_after_ready

MiB = 1024**2


# --- charge ---

def test_before_any_measurement_the_estimate_is_charged() -> None:
    assert charge(1200 * MiB, None, None, 100 * MiB) == 1200 * MiB


def test_a_measured_engine_is_charged_what_it_held_at_ready_plus_its_growth() -> None:
    # An estimate that was too high comes down once the engine is measured.
    assert charge(1200 * MiB, 370 * MiB, 370 * MiB, 130 * MiB) == 500 * MiB


def test_growth_is_not_charged_twice_as_the_engine_grows() -> None:
    assert charge(1200 * MiB, 450 * MiB, 370 * MiB, 130 * MiB) == 500 * MiB


def test_an_engine_that_outgrows_its_forecast_is_charged_what_it_holds() -> None:
    assert charge(1200 * MiB, 700 * MiB, 370 * MiB, 130 * MiB) == 700 * MiB


def test_without_a_reading_at_ready_the_first_measurement_stands_in_for_it() -> None:
    assert charge(1200 * MiB, 400 * MiB, None, 100 * MiB) == 500 * MiB


def test_a_reading_that_goes_missing_keeps_the_forecast_from_ready() -> None:
    assert charge(1200 * MiB, None, 370 * MiB, 130 * MiB) == 500 * MiB


def test_growth_is_read_where_the_budget_counts() -> None:
    plan = MemoryPlan(weights=1, kv_cache=2, compute=3, ctx_size=8192, growth=300, growth_gpu=20)
    assert growth_after_ready(plan, on_gpu=False) == 300
    assert growth_after_ready(plan, on_gpu=True) == 20
    assert growth_after_ready(MemoryPlan(1, 2, 3, 8192), on_gpu=False) == 0


# --- the ledger ---

def test_a_missing_ledger_has_learned_nothing(tmp_path: Path) -> None:
    assert MemoryLedger(tmp_path / "engines" / "memory.json").learned("m", "chat", 8192) is None


def test_what_was_recorded_is_learned_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "engines" / "memory.json"
    MemoryLedger(path).record("gemma3:270m", "chat", 8192, 500 * MiB)
    again = MemoryLedger(path)
    assert again.learned("gemma3:270m", "chat", 8192) == 500 * MiB
    assert again.learned("gemma3:270m", "chat", 4096) is None
    assert again.learned("gemma3:270m", "embed", 8192) is None
    assert json.loads(path.read_text())["schema_version"] == LEDGER_SCHEMA


def test_a_later_record_replaces_the_figure(tmp_path: Path) -> None:
    ledger = MemoryLedger(tmp_path / "memory.json")
    ledger.record("m", "chat", 8192, 500 * MiB)
    ledger.record("m", "chat", 8192, 450 * MiB)
    assert MemoryLedger(tmp_path / "memory.json").learned("m", "chat", 8192) == 450 * MiB


def test_a_figure_learned_against_another_header_estimate_is_stale(tmp_path: Path) -> None:
    ledger = MemoryLedger(tmp_path / "memory.json")
    ledger.record("m", "chat", 8192, 500 * MiB, basis=1200 * MiB)
    assert ledger.learned("m", "chat", 8192, basis=1200 * MiB) == 500 * MiB
    assert ledger.learned("m", "chat", 8192, basis=900 * MiB) is None  # re-imported, or other settings
    assert ledger.learned("m", "chat", 8192) == 500 * MiB


def test_forget_drops_every_figure_of_a_model(tmp_path: Path) -> None:
    ledger = MemoryLedger(tmp_path / "memory.json")
    ledger.record("m", "chat", 8192, 1)
    ledger.record("m", "embed", 8192, 2)
    ledger.record("other", "chat", 8192, 3)
    ledger.forget("m")
    again = MemoryLedger(tmp_path / "memory.json")
    assert again.learned("m", "chat", 8192) is None and again.learned("m", "embed", 8192) is None
    assert again.learned("other", "chat", 8192) == 3


@pytest.mark.parametrize("content", [b"{not json", b"\x00\xff" * 10, b'{"schema_version": 1, "entries": 5}', b""])
def test_a_corrupt_ledger_starts_empty_with_a_warning_and_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "memory.json"
    path.write_bytes(content)
    ledger = MemoryLedger(path)
    with caplog.at_level(logging.WARNING, logger="lmforge.manager"):
        assert ledger.learned("m", "chat", 8192) is None
    assert "memory ledger" in caplog.text
    ledger.record("m", "chat", 8192, 7)
    assert MemoryLedger(path).learned("m", "chat", 8192) == 7


def test_a_ledger_of_another_schema_is_not_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "memory.json"
    path.write_text(json.dumps({"schema_version": LEDGER_SCHEMA + 1, "entries": [{"new": "shape"}]}))
    with caplog.at_level(logging.WARNING, logger="lmforge.manager"):
        assert MemoryLedger(path).learned("m", "chat", 8192) is None
    assert "schema" in caplog.text


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "memory.json"
    ledger = MemoryLedger(path)
    for n in range(5):
        ledger.record(f"m{n}", "chat", 8192, n + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.json"]


def test_an_unwritable_ledger_is_logged_and_the_figure_kept_for_this_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "engines"
    blocker.write_text("a file where the directory should be")
    ledger = MemoryLedger(blocker / "memory.json")
    with caplog.at_level(logging.WARNING, logger="lmforge.manager"):
        ledger.record("m", "chat", 8192, 7)
    assert "cannot write the memory ledger" in caplog.text
    assert ledger.learned("m", "chat", 8192) == 7


def test_records_from_many_threads_all_land(tmp_path: Path) -> None:
    path = tmp_path / "memory.json"
    ledger = MemoryLedger(path)

    def work(n: int) -> None:
        for ctx in range(10):
            ledger.record(f"m{n}", "chat", 1024 + ctx, n * 100 + ctx)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    again = MemoryLedger(path)
    assert all(again.learned(f"m{n}", "chat", 1024 + ctx) == n * 100 + ctx for n in range(8) for ctx in range(10))
