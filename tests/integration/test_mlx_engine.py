"""The MLX engine through a real LMForge: a tiny MLX model pulled from the local Hub as a user pulls one, served by
a real mlx_lm.server (mlx[cpu] off Apple Silicon) under LMForge's launcher. Chat in both dialects, whole and
streamed; unload; a crash and the reload after it; a model MLX cannot load; what /lf/status and the CLI say.

The engine's environment is installed once into the shared test cache home (scripts/test.sh does it, or the first
test here), and every instance is pointed at it with LMFORGE_MLX_PYTHON. Where MLX cannot be installed (no wheel
for this platform), every test here skips saying why, unless LMFORGE_REQUIRE_MLX=1 (CI) makes that a failure.
The tiny model never ends and writes one visible character a token (tests/support/tiny_mlx.py), so counts are
exact, under greedy decoding (temperature 0), without asserting on any text.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from manager.config import MlxSettings, Paths, Settings
from manager.engines import mlx_launch
from manager.engines.base import EngineMissing
from manager.engines.mlx import MlxAdapter
from manager.protocol import ModelEntry, SlotKind
from tests.support import tiny_mlx
from tests.support.canary import Canary
from tests.support.hub import LocalHub
from tests.support.instance import Instance, clean_up, free_port, wait_until
from tests.support.pulls import hub_instance

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="MLX does not run on Windows")

TEST_CACHE = Path(os.environ.get("LMFORGE_TEST_CACHE", Path.home() / ".cache" / "lmforge-tests"))
REPO = "tester/tiny-llama-mlx"  # "mlx" in its name: the resolver takes it for an MLX repo, as the Hub's names are
BROKEN = "tester/broken-llama-mlx"  # the same files, with weights that are not a safetensors file
FAST_HEALTH = "health_interval_s = 0.2\nhealth_failures = 2\n"
MESSAGES = [{"role": "user", "content": "hi"}]
TOKENS = 6
LOAD_S = 60  # a cold load: the engine imports mlx_lm (seconds on 2 cores), then loads the model (0.1 s)


@pytest.fixture(scope="module")
def mlx_python() -> Path:
    """The MLX environment's Python: LMFORGE_MLX_PYTHON, or the one in the test cache home, installed once."""
    if os.environ.get("LMFORGE_MLX_PYTHON"):
        return Path(os.environ["LMFORGE_MLX_PYTHON"])
    from prober.detect import take_snapshot

    adapter = MlxAdapter(Settings(), Paths(TEST_CACHE / "home"))
    try:
        return adapter.find_binary() or adapter.install(take_snapshot(), lambda pct, line: None)
    except EngineMissing as exc:
        if os.environ.get("LMFORGE_REQUIRE_MLX") == "1":
            raise
        lines = str(exc).splitlines()  # what failed, then pip's last lines: its own reason last
        pytest.skip(f"MLX could not be installed here: {lines[-1]} ({lines[0]}); LMFORGE_REQUIRE_MLX=1 makes this "
                    "a failure")


@pytest.fixture(scope="module")
def model_files(mlx_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_mlx.write_model(mlx_python, tmp_path_factory.mktemp("tiny-mlx"))


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, module_hub: LocalHub, mlx_python: Path,
         model_files: Path) -> Iterator[Instance]:
    files: dict[str, bytes | Path] = {name: model_files / name for name in tiny_mlx.FILES}
    module_hub.add_repo(REPO, files)
    module_hub.add_repo(BROKEN, {**files, "model.safetensors": b"\0" * 4096})
    inst = hub_instance(tmp_path_factory.mktemp("mlx") / "home", llama_server, module_hub, FAST_HEALTH)
    inst.env["LMFORGE_MLX_PYTHON"] = str(mlx_python)
    try:
        inst.start()
        for repo in (REPO, BROKEN):
            pulled = inst.lmforge("pull", repo)
            assert pulled.returncode == 0, pulled.stderr
        yield inst
    finally:
        clean_up(inst)
        for proc in mlx_engines_of(inst.home):  # clean_up knows llama-server's only
            proc.kill()


def mlx_engines_of(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if mlx_launch.__file__ in cmd and any(str(home) in part for part in cmd):
            found.append(proc)
    return found


def chat(inst: Instance, **extra: Any) -> dict:
    code, body = inst.post("/v1/chat/completions", {"model": REPO, "messages": MESSAGES, "max_tokens": TOKENS,
                                                    "temperature": 0, **extra}, timeout=LOAD_S)
    assert code == 200, body
    return body  # type: ignore[return-value]


def post_lines(url: str, body: dict) -> list[bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=LOAD_S) as resp:
        assert resp.status == 200
        return resp.read().splitlines()


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# --- the model and its engine ---


def test_a_pulled_mlx_repo_is_served_by_mlx_and_status_says_why(inst: Instance, model_files: Path) -> None:
    entry = next(m for m in inst.get("/lf/model/list")[1]["models"] if m["name"] == REPO)  # type: ignore[index]
    assert (entry["format"], entry["context_length"], entry["chat_template"]) == ("mlx", tiny_mlx.CONTEXT, True)
    chat(inst)
    slot = inst.slot(REPO)
    assert slot is not None and slot["engine"] == "mlx" and slot["state"] == "ready"
    assert slot["engine_reason"].startswith("mlx weights: MLX reads them")
    if sys.platform != "darwin":
        assert slot["engine_reason"].endswith("off Apple Silicon, on the CPU (mlx[cpu])")
    assert (slot["ctx_size"], slot["parallel"]) == (tiny_mlx.CONTEXT, MlxSettings().parallel)  # capped by config.json
    cmdline = psutil.Process(slot["pid"]).cmdline()
    assert cmdline[1] == mlx_launch.__file__ and cmdline[cmdline.index("--model") + 1] == entry["dir"]
    # Memory is read from the engine's process group, as for llama-server: the Python process itself.
    measured = wait_until(lambda: (inst.slot(REPO) or {}).get("measured_bytes"), what="a memory reading")
    assert measured > 32 * 1024**2, "the interpreter with mlx loaded holds more than this"


def test_chat_whole_and_streamed_on_v1(inst: Instance) -> None:
    body = chat(inst)
    choice = body["choices"][0]
    assert body["model"] == REPO and choice["finish_reason"] == "length"
    assert len(choice["message"]["content"]) == TOKENS
    assert body["usage"]["completion_tokens"] == TOKENS and body["usage"]["prompt_tokens"] > 0
    lines = post_lines(inst.url + "/v1/chat/completions", {
        "model": REPO, "messages": MESSAGES, "max_tokens": TOKENS, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}})
    data = [line[5:].strip() for line in lines if line.startswith(b"data:")]
    assert data[-1] == b"[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    assert len(deltas) > 1, "the reply streams in pieces"
    assert len("".join(d["delta"].get("content") or "" for d in deltas)) == TOKENS
    assert deltas[-1]["finish_reason"] == "length"
    assert [c["usage"]["completion_tokens"] for c in chunks if c.get("usage")] == [TOKENS]


def test_chat_whole_and_streamed_on_api_chat(inst: Instance) -> None:
    body = {"model": REPO, "messages": MESSAGES, "options": {"num_predict": TOKENS, "temperature": 0}}
    code, whole = inst.post("/api/chat", {**body, "stream": False}, timeout=LOAD_S)
    assert code == 200, whole
    assert whole["done"] is True and whole["done_reason"] == "length"  # type: ignore[index]
    assert len(whole["message"]["content"]) == whole["eval_count"] == TOKENS  # type: ignore[index]
    assert whole["prompt_eval_count"] > 0  # type: ignore[index]
    lines = [json.loads(line) for line in post_lines(inst.url + "/api/chat", body)]
    assert [line["done"] for line in lines].count(True) == 1 and lines[-1]["done"] is True
    assert len("".join(line["message"]["content"] for line in lines)) == TOKENS
    assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == TOKENS


# --- lifecycle ---


def test_unload_stops_the_engine(inst: Instance) -> None:
    chat(inst)
    pid = inst.slot(REPO)["pid"]  # type: ignore[index]
    code, reply = inst.post("/lf/model/unload", {"model": REPO})
    assert code == 200, reply
    wait_until(lambda: inst.slot(REPO) is None, what="the slot to leave the table")
    wait_until(lambda: gone(pid), what="the engine to exit")


def test_a_crashed_engine_fails_its_slot_and_the_next_request_reloads_it(inst: Instance) -> None:
    chat(inst)
    old = inst.slot(REPO)["pid"]  # type: ignore[index]
    os.kill(old, signal.SIGKILL)  # idle: no request in flight
    wait_until(lambda: inst.slot(REPO) is None, what="the dead slot to leave the table")
    error = inst.status()["last_errors"][REPO]
    assert "SIGKILL" in error["message"] and error["severity"] == "transient"
    assert len(chat(inst)["choices"][0]["message"]["content"]) == TOKENS
    assert inst.slot(REPO)["pid"] != old  # type: ignore[index]
    assert REPO not in inst.status()["last_errors"]  # a good load clears the record


def test_a_model_mlx_cannot_load_fails_with_the_engines_reason(inst: Instance) -> None:
    code, body = inst.post("/v1/chat/completions", {"model": BROKEN, "messages": MESSAGES, "max_tokens": 1},
                           timeout=LOAD_S)
    assert code == 503 and mlx_launch.FAILED in body["error"]["message"], body  # type: ignore[index]
    assert inst.slot(BROKEN) is None
    wait_until(lambda: not [p for p in mlx_engines_of(inst.home) if "broken" in " ".join(p.cmdline())],
               what="no engine left for the broken model")
    error = inst.status()["last_errors"][BROKEN]
    assert error["severity"] == "user_error" and "exit code 1" in error["message"]


# --- the launcher on its own ---


def test_a_request_names_no_other_model_and_no_image_url_is_fetched(mlx_python: Path, model_files: Path,
                                                                    canary: Canary, tmp_path: Path) -> None:
    """What a request may not do to the engine, whoever sends it: load another model, adapter or draft model
    (mlx_lm would load a path or download a repo), or make it fetch an image URL (the canary sees no one)."""
    adapter = MlxAdapter(Settings(), Paths(tmp_path))
    entry = ModelEntry(name="tiny", path=str(model_files), dir=str(model_files), format="mlx")
    port, plan = free_port(), adapter.plan(entry, SlotKind.CHAT, None, 0)
    argv = adapter.command(mlx_python, entry, SlotKind.CHAT, port, plan)
    with open(tmp_path / "engine.log", "wb") as log:
        engine = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **adapter.environment(plan)})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url + "/health"), timeout=LOAD_S, what="the engine to serve")
        elsewhere = {"model": str(tmp_path / "nothing"), "adapters": str(tmp_path / "nothing"),
                     "draft_model": "nobody/draft", "messages": MESSAGES, "max_tokens": TOKENS, "temperature": 0}
        code, answer = _post(url + "/v1/chat/completions", elsewhere)
        assert code == 200 and len(answer["choices"][0]["message"]["content"]) == TOKENS, answer
        image = {"type": "image_url", "image_url": {"url": f"http://127.0.0.1:{canary.port}/cat.png"}}
        code, answer = _post(url + "/v1/chat/completions", {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}], "max_tokens": 1})
        assert code == 400 and "data: URL" in answer["error"], answer
        assert canary.seen() == []
    finally:
        engine.kill()
        engine.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=LOAD_S) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# --- the CLI ---


def test_engine_list_and_install_go_through_the_registry(inst: Instance, mlx_python: Path, llama_server: str) -> None:
    listed = inst.lmforge("engine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["engine"]: row for row in json.loads(listed.stdout)}
    assert (rows["mlx"]["installed"], rows["mlx"]["path"]) == (True, str(mlx_python))
    assert rows["llama.cpp"]["path"] == llama_server
    installed = inst.lmforge("engine", "install", "mlx", "--print-path")
    assert (installed.returncode, installed.stdout.strip()) == (0, str(mlx_python))  # found: nothing installed
    assert inst.lmforge("engine", "install", "--print-path").stdout.strip() == llama_server  # still the default
    unknown = inst.lmforge("engine", "install", "vllm")
    assert unknown.returncode == 1 and "no engine 'vllm' here: use one of" in unknown.stderr
