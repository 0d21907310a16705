"""A pull as each surface shows it: Ollama's NDJSON lines, the native SSE frames, the catalog listing, and the
CLI's plain progress lines, from the manager's PullInfo."""

from __future__ import annotations

import io
import json

import msgspec
import pytest
from rich.console import Console

from catalog.entries import load_catalog
from gateway.api.native.pulls import Update, catalog_listing, sse_frames
from gateway.api.ollama.pull_handlers import PullLines, file_digest
from gateway.cli.commands.pull import BarView, PlainView, _view, done_line, left_line
from gateway.cli.terminal import Terminal
from gateway.openapi import openapi_document
from manager.protocol import ModelEntry, PullFileProgress, PullInfo, PullState

WEIGHTS = "model-Q4_K_M.gguf"
MMPROJ = "mmproj-F16.gguf"


def info(state: PullState = PullState.DOWNLOADING, *files: PullFileProgress, **fields: object) -> PullInfo:
    return PullInfo(pull_id="p1", model="org/repo:Q4_K_M", state=state, name="org/repo:Q4_K_M", repo="org/repo",
                    files=files, **fields)


def file(path: str = WEIGHTS, done: int = 0, state: str = "downloading", size: int = 1000) -> PullFileProgress:
    return PullFileProgress(path=path, size=size, done=done, state=state)


def sse(data: bytes) -> list[tuple[str, dict]]:
    """(event, data) of each frame."""
    frames = []
    for block in data.decode().strip().split("\n\n"):
        head, body = block.split("\n")
        frames.append((head.removeprefix("event: "), json.loads(body.removeprefix("data: "))))
    return frames


# --- Ollama's NDJSON ---


def test_ollama_lines_follow_ollamas_steps_from_manifest_to_success() -> None:
    lines = PullLines()
    assert lines.lines(info(PullState.QUEUED)) == [{"status": "pulling manifest"}]
    first = lines.lines(info(PullState.DOWNLOADING, file(done=100), file(MMPROJ, state="present", size=50)))
    digest = file_digest(info(), file())
    assert first == [
        {"status": f"pulling {digest[:12]}", "digest": f"sha256:{digest}", "total": 1000, "completed": 100},
        {"status": f"pulling {file_digest(info(), file(MMPROJ))[:12]}",
         "digest": f"sha256:{file_digest(info(), file(MMPROJ))}", "total": 50, "completed": 50},  # present: whole
    ]
    ended = [file(done=1000, state="done"), file(MMPROJ, state="present", size=50)]
    assert [line["status"] for line in lines.lines(info(PullState.INDEXING, *ended))] == [
        f"pulling {digest[:12]}", "verifying sha256 digest", "writing manifest"]
    assert lines.lines(info(PullState.DONE, *ended)) == [{"status": "success"}]


def test_a_file_line_is_sent_again_only_when_its_progress_changed() -> None:
    lines = PullLines()
    lines.lines(info(PullState.DOWNLOADING, file(done=10)))
    assert lines.lines(info(PullState.DOWNLOADING, file(done=10))) == []
    assert [line["completed"] for line in lines.lines(info(PullState.DOWNLOADING, file(done=20)))] == [20]


def test_once_indexing_every_file_shows_complete_whatever_its_last_report_said() -> None:
    lines = PullLines()
    lines.lines(info(PullState.DOWNLOADING, file(done=500)))  # the last report before the files were moved
    indexing = lines.lines(info(PullState.INDEXING, file(done=500)))
    assert indexing[0]["completed"] == indexing[0]["total"] == 1000


def test_a_failed_or_cancelled_pull_ends_in_one_error_line() -> None:
    failed = PullLines().lines(info(PullState.FAILED, error="needs 9.0 GB, 1.0 GB free"))
    assert failed == [{"status": "pulling manifest"}, {"error": "needs 9.0 GB, 1.0 GB free"}]
    cancelled = PullLines().lines(info(PullState.CANCELLED))
    assert "cancelled" in cancelled[-1]["error"] and "status" not in cancelled[-1]


def test_file_digests_are_sha256_shaped_and_tell_files_apart() -> None:
    a, b = file_digest(info(), file(WEIGHTS)), file_digest(info(), file(MMPROJ))
    assert a != b and len(a) == 64 and int(a, 16) >= 0
    assert file_digest(info(), file(WEIGHTS)) == a  # stable across updates, so a client's bar is kept


# --- the native SSE stream ---


def test_sse_frames_carry_the_pull_then_done_with_the_indexed_model() -> None:
    entry = ModelEntry(name="org/repo:Q4_K_M", path="/m/model.gguf", files=(WEIGHTS,))
    frames = sse(sse_frames(Update(info(PullState.DONE, file(done=1000, state="done")), entry)))
    assert [name for name, _ in frames] == ["download", "done"]
    assert frames[0][1] == json.loads(msgspec.json.encode(info(PullState.DONE, file(done=1000, state="done"))))
    assert frames[1][1]["model"]["name"] == "org/repo:Q4_K_M" and frames[1][1]["model"]["files"] == [WEIGHTS]


def test_sse_frames_of_a_running_pull_are_progress_only() -> None:
    assert [name for name, _ in sse(sse_frames(Update(info(PullState.DOWNLOADING, file(done=5)))))] == ["download"]


@pytest.mark.parametrize(("state", "code", "words"), [
    (PullState.FAILED, "pull_failed", "sha256 mismatch"),
    (PullState.CANCELLED, "pull_cancelled", "run the same pull to resume"),
])
def test_sse_frames_of_an_ended_pull_end_in_an_error(state: PullState, code: str, words: str) -> None:
    frames = sse(sse_frames(Update(info(state, error="sha256 mismatch" if state == PullState.FAILED else ""))))
    assert frames[-1][0] == "error" and frames[-1][1]["error"]["code"] == code
    assert words in frames[-1][1]["error"]["message"]


# --- the catalog listing ---


def test_the_catalog_listing_marks_what_fits_and_what_is_installed() -> None:
    catalog = load_catalog()
    small = min(catalog.entries(), key=lambda e: e.size(e.default_quant))
    installed = [ModelEntry(name="mine", path="/m/x.gguf", catalog=small.canonical())]
    budget = small.size(small.default_quant) * 2 + (512 << 20)
    listing = catalog_listing(catalog, installed, budget)
    assert listing["budget_bytes"] == budget and len(listing["models"]) == len(catalog.entries())
    row = next(m for m in listing["models"] if m["name"] == small.canonical())
    assert row["installed"] and row["fits"] is True and row["quants"][0]["quant"] == small.default_quant
    assert row["quants"][0]["installed"] and row["quants"][0]["size_bytes"] == small.size(small.default_quant)
    biggest = max(listing["models"], key=lambda m: m["quants"][0]["size_bytes"])
    assert biggest["fits"] is False and not biggest["installed"]


def test_the_catalog_listing_filters_by_kind_and_says_unknown_without_a_budget() -> None:
    listing = catalog_listing(load_catalog(), [], 0, "chat")
    assert listing["models"] and {m["kind"] for m in listing["models"]} == {"chat"}
    assert {m["fits"] for m in listing["models"]} == {None}


# --- the CLI's plain lines ---


def test_plain_progress_prints_a_files_line_at_most_every_two_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    now = [100.0]
    view = PlainView(Terminal(), clock=lambda: now[0])
    data = msgspec.to_builtins(info(PullState.DOWNLOADING, file(done=450_000, size=1_000_000),
                                    file(MMPROJ, state="present", size=50), bytes_per_s=12.3e6))
    view.show("download", data)
    data["files"][0]["done"] = 500_000
    now[0] += 1.0
    view.show("download", data)  # within two seconds: nothing
    data["files"][0]["done"] = 900_000
    now[0] += 1.5
    view.show("download", data)
    assert capsys.readouterr().out.splitlines() == [
        f"pulling {WEIGHTS} 45% 12.3 MB/s",
        f"present {MMPROJ} (already in the store)",
        f"pulling {WEIGHTS} 90% 0.2 MB/s",  # 450 kB in 2.5 s
    ]


def test_the_done_line_counts_files_and_gigabytes() -> None:
    entry = {"name": "qwen3:0.6b:4bit", "files": ["a.gguf", "b.gguf"], "size_bytes": 2_500_000_000}
    assert done_line(entry, {}) == "done: qwen3:0.6b:4bit (2 files, 2.50 GB)"


def test_ollamas_digest_is_the_files_own_sha256_when_the_pull_reports_it() -> None:
    known = "ab" * 32
    reported = PullFileProgress(path=WEIGHTS, size=1000, done=1000, state="done", sha256=known)
    assert file_digest(info(), reported) == known
    lines = PullLines().lines(info(PullState.DOWNLOADING, reported))
    assert {"status": f"pulling {known[:12]}", "digest": f"sha256:{known}", "total": 1000,
            "completed": 1000} in lines


# --- the CLI's views ---


def bar_console() -> tuple[Terminal, io.StringIO]:
    out = io.StringIO()
    term = Terminal()
    term.out = Console(file=out, force_terminal=True, width=120, highlight=False, markup=False, emoji=False)
    return term, out


def rendered(view: BarView) -> list[str]:
    """The progress rows as a terminal shows them last, without colour codes."""
    screen = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    screen.print(view.progress.make_tasks_table(view.progress.tasks))
    return screen.file.getvalue().splitlines()  # type: ignore[attr-defined]


def test_a_terminal_gets_the_bars_and_a_pipe_the_plain_lines() -> None:
    term, _ = bar_console()
    assert isinstance(_view(term, as_json=False), BarView)
    term.out = Console(file=io.StringIO(), force_terminal=False)
    assert isinstance(_view(term, as_json=False), PlainView)


def test_the_bars_show_a_row_per_file_the_present_ones_full_and_all_full_once_indexing() -> None:
    term, _ = bar_console()
    view = BarView(term)
    try:
        view.show("download", msgspec.to_builtins(info(PullState.RESOLVING)))
        assert [line for line in rendered(view) if "resolving org/repo:Q4_K_M" in line]
        downloading = info(PullState.DOWNLOADING, file(done=250_000, size=1_000_000),
                           file(MMPROJ, state="present", size=50_000))
        view.show("download", msgspec.to_builtins(downloading))
        rows = rendered(view)
        assert len(rows) == 2 and not any("resolving" in row for row in rows), rows
        assert WEIGHTS in rows[0] and "0.2/1.0 MB" in rows[0]
        assert f"{MMPROJ} (present)" in rows[1] and "50.0/50.0 kB" in rows[1]
        view.show("download", msgspec.to_builtins(msgspec.structs.replace(downloading, state=PullState.INDEXING)))
        assert [(task.completed, task.total) for task in view.progress.tasks] == [(1_000_000, 1_000_000),
                                                                                 (50_000, 50_000)]
        assert "1.0/1.0 MB" in rendered(view)[0]
    finally:
        view.close()


@pytest.mark.parametrize(("last", "said"), [
    ({"state": "downloading", "followers": 3}, "stopped; the pull goes on for 2 other clients"),
    ({"state": "downloading", "followers": 2}, "stopped; the pull goes on for 1 other client"),
    ({"state": "indexing", "followers": 1}, "stopped; the pull was being indexed and finishes anyway"),
    ({"state": "downloading", "followers": 1}, "cancelled; run the same pull to resume"),
    ({}, "cancelled; run the same pull to resume"),
])
def test_ctrl_c_says_what_hanging_up_did_to_the_pull(last: dict, said: str) -> None:
    assert left_line(last) == said


def test_the_openapi_document_says_what_each_pull_route_streams() -> None:
    paths = openapi_document("0")["paths"]
    assert set(paths["/lf/model/pull"]["post"]["responses"]["200"]["content"]) == {"text/event-stream"}
    assert set(paths["/api/pull"]["post"]["responses"]["200"]["content"]) == {"application/x-ndjson",
                                                                              "application/json"}
