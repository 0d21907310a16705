"""Every `lmforge` error is one line on stderr with exit status 1 (2 for usage), never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from catalog.store import ModelStore
from manager.config import Paths
from tests.support.gguf_patches import KV_COUNT_AT, VERSION_AT, alignment_zero, patched, write_small
from tests.support.instance import Instance, free_port, wait_until
from tests.support.raw_peer import RawPeer, Reply, http, not_http


def assert_one_line_error(result: subprocess.CompletedProcess, status: int = 1) -> str:
    """The error line, after checking the whole contract."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def lmforge(home: Path, port: int, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LMFORGE_HOME=str(home), LMFORGE_PORT=str(port))
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


# --- against a running LMForge ---


@pytest.fixture
def inst(make_instance, models_dir: Path) -> Instance:
    return make_instance(models={"tiny:chat": models_dir / "chat.gguf"}).start()


@pytest.mark.parametrize("command", ["load", "unload"])
def test_load_and_unload_of_an_unknown_model_is_one_line_and_status_1(inst: Instance, command: str) -> None:
    line = assert_one_line_error(inst.lmforge(command, "nope"))
    assert "nope" in line


def test_chatting_with_an_unknown_model_is_one_line(inst: Instance) -> None:
    result = inst.lmforge("run", "nope", "hello")
    assert "nope" in assert_one_line_error(result) and result.stdout == ""


@pytest.mark.parametrize("args", [("load",), ("load", "tiny:chat", "--kind", "poem"),
                                  ("run", "tiny:chat", "--max-tokens", "many"), ("frobnicate",), ()])
def test_a_usage_error_is_one_line_and_status_2(inst: Instance, args: tuple[str, ...]) -> None:
    line = assert_one_line_error(inst.lmforge(*args), status=2)
    assert "--help" in line


def test_without_a_manager_ps_says_so_and_list_reads_the_store(inst: Instance) -> None:
    inst.stop("manager")
    wait_until(lambda: inst.get("/health")[0] == 503, what="/health 503 without a manager")
    assert "manager" in assert_one_line_error(inst.lmforge("ps"))
    listed = inst.lmforge("list")
    assert listed.returncode == 0 and "tiny:chat" in listed.stdout


def test_with_the_gateway_down_but_the_manager_running_rm_and_import_leave_the_store_alone(
        inst: Instance, models_dir: Path) -> None:
    inst.stop("gateway")  # the manager may still hold engines on the store's files
    line = assert_one_line_error(inst.lmforge("rm", "tiny:chat"))
    assert "manager (pid" in line and "still runs" in line
    line = assert_one_line_error(inst.lmforge("import", str(models_dir / "chat.gguf"), "--name", "other:1b"))
    assert "still runs" in line
    assert [m.name for m in ModelStore(Paths(inst.home)).list()] == ["tiny:chat"]


# --- against nothing, or something that is not LMForge ---


def test_run_with_an_empty_piped_prompt_says_there_is_none(home: Path) -> None:
    env = dict(os.environ, LMFORGE_HOME=str(home), LMFORGE_PORT=str(free_port()))
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "tiny:chat"], env=env, input="  \n",
                            capture_output=True, text=True, timeout=60)
    assert "no prompt" in assert_one_line_error(result)


def test_the_catalog_with_a_broken_override_and_lmforge_stopped_names_the_file(home: Path) -> None:
    (home / "catalog").mkdir(parents=True)
    (home / "catalog" / "broken.toml").write_text("[[model]\nname = \n")
    line = assert_one_line_error(lmforge(home, free_port(), "catalog"))
    assert "broken.toml" in line and "bug" not in line


@pytest.mark.parametrize("args", [("ps",), ("load", "x"), ("unload", "--all"), ("run", "x", "hi")])
def test_with_nothing_listening_each_command_says_how_to_start(home: Path, args: tuple[str, ...]) -> None:
    line = assert_one_line_error(lmforge(home, free_port(), *args))
    assert "LMForge is not running" in line and "lmforge start" in line


@pytest.fixture
def peer() -> Iterator[list[RawPeer]]:
    started: list[RawPeer] = []
    yield started
    for p in started:
        p.close()


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [(http("200 OK", b"<html>hello</html>", "text/html"), "not JSON"),
     (http("502 Bad Gateway", b"upstream exploded\nat line 2", "text/plain"), "upstream exploded at line 2"),
     (not_http, "is another program using port")],
)
def test_a_gateway_that_answers_garbage_is_one_line(home: Path, peer: list[RawPeer], reply: Reply,
                                                    fragment: str) -> None:
    peer.append(RawPeer(reply))
    assert fragment in assert_one_line_error(lmforge(home, peer[0].port, "ps"))


def test_an_unexpected_reply_shape_hits_the_backstop_in_one_line(home: Path, peer: list[RawPeer]) -> None:
    peer.append(RawPeer(http("200 OK", b"{}")))  # JSON, but no "slots": a bug or another version
    line = assert_one_line_error(lmforge(home, peer[0].port, "ps"))
    assert line.startswith("error: unexpected KeyError") and "-v shows the traceback" in line
    verbose = lmforge(home, peer[0].port, "-v", "ps")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr  # for the bug report


def test_an_unreadable_config_is_one_line(home: Path) -> None:
    (home / "config.toml").mkdir(parents=True)
    line = assert_one_line_error(lmforge(home, free_port(), "ps"))
    assert line == f"error: {home / 'config.toml'}: Is a directory"


# --- lmforge import of malformed files ---


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [(lambda d: patched(d, VERSION_AT, "I", 1), "GGUF version 1 is not supported (GGUF versions 2 and 3 are)"),
     (alignment_zero, "general.alignment is 0; it must be a power of two"),
     (lambda d: patched(d, KV_COUNT_AT, "Q", 2**40), "metadata keys"),
     (lambda d: d[:-64], "truncated")],
    ids=["version", "alignment", "kv count", "truncated"],
)
def test_importing_a_malformed_gguf_is_one_line_and_adds_nothing(
    home: Path, tmp_path: Path, patch: Callable[[bytes], bytes], fragment: str
) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(patch(write_small(tmp_path / "good.gguf")))
    line = assert_one_line_error(lmforge(home, free_port(), "import", str(bad), "--name", "x"))
    assert fragment in line
    paths = Paths(home)
    assert ModelStore(paths).list() == [] and not paths.index.exists()
    assert not paths.models.exists() or not any(paths.models.iterdir())
