"""A model served by an engine that already runs elsewhere (`[[remote]]`): here a real llama-server that LMForge
did not start, on another port, behind its own API key. LMForge routes to it with its own auth, metrics, dialects
and status, health-checks it, and charges it no local memory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.instance import Instance, free_port, llama_servers_of, running_instance, wait_until

REMOTE_KEY = "remote-side-key-0123456789abcdef"
ASK = [{"role": "user", "content": "hi"}]


class RemoteServer:
    """A llama-server of the test's own, serving the cycle model (" hello world" forever) as "cycle-there"."""

    def __init__(self, llama_server: str, model: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [llama_server, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), "--alias",
                 "cycle-there", "--api-key", REMOTE_KEY, "--ctx-size", "512", "--parallel", "2", "--no-webui"],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        wait_until(self.healthy, timeout=60, what="the remote llama-server to be ready")

    def healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[RemoteServer]:
    server = RemoteServer(llama_server, models_dir / "cycle.gguf", tmp_path_factory.mktemp("remote") / "engine.log")
    try:
        yield server
    finally:
        server.stop()


def config(url: str) -> str:
    return f"""health_interval_s = 0.5
health_failures = 2
load_timeout_s = 4

[[remote]]
name = "far:cycle"
url = "{url}"
model = "cycle-there"
api_key = "{REMOTE_KEY}"
context_length = 512

[[remote]]
name = "far:wrong-key"
url = "{url}"
api_key = "not-the-remote-key-0123456789"
"""


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, llama_server: str, remote: RemoteServer) -> Iterator[Instance]:
    with running_instance(tmp_path_factory.mktemp("remote-engine") / "home", llama_server, {},
                          config=config(remote.url)) as inst:
        yield inst


def test_a_remote_model_is_listed_with_the_installed_ones(inst: Instance) -> None:
    code, models = inst.get("/v1/models")
    assert code == 200 and "far:cycle" in [m["id"] for m in models["data"]]  # type: ignore[index]
    code, tags = inst.get("/api/tags")
    assert code == 200 and "far:cycle" in [m["name"] for m in tags["models"]]  # type: ignore[index]


def test_openai_and_ollama_chats_reach_the_remote_engine_with_its_key_and_name(inst: Instance) -> None:
    code, reply = inst.post("/v1/chat/completions", {"model": "far:cycle", "messages": ASK, "max_tokens": 4})
    assert code == 200, reply
    assert reply["choices"][0]["message"]["content"].split() == ["hello", "world", "hello", "world"]  # type: ignore
    assert reply["usage"]["completion_tokens"] == 4  # type: ignore[index]
    code, data = inst.request("POST", "/api/chat", raw=json.dumps(
        {"model": "far:cycle", "messages": ASK, "options": {"num_predict": 4}}).encode())
    lines = [json.loads(line) for line in str(data).splitlines() if line.strip()]
    assert code == 200 and lines[-1]["done"] is True and lines[-1]["eval_count"] == 4, lines[-1]
    assert "".join(line["message"]["content"] for line in lines).split() == ["hello", "world"] * 2


def test_it_is_shown_as_remote_and_charges_no_local_memory(inst: Instance, remote: RemoteServer) -> None:
    inst.post("/v1/chat/completions", {"model": "far:cycle", "messages": ASK, "max_tokens": 1})
    slot = inst.slot("far:cycle")
    assert slot is not None and slot["state"] == "ready"
    assert (slot["engine"], slot["pid"], slot["charged_bytes"], slot["threads"]) == ("remote", None, 0, 0)
    assert slot["engine_reason"] == f"[[remote]] in config: served by {remote.url}"
    assert inst.status()["budget"]["used_bytes"] == 0
    assert llama_servers_of(inst.home) == []  # nothing was started here


def test_the_remote_engine_refusing_lmforges_key_is_not_the_clients_auth_error(inst: Instance) -> None:
    code, reply = inst.post("/v1/chat/completions", {"model": "far:wrong-key", "messages": ASK, "max_tokens": 1})
    assert code == 502, reply
    assert reply["error"]["message"] == (  # type: ignore[index]
        "the remote engine of far:wrong-key refused LMForge's key (401): check api_key in its [[remote]] entry")


def test_its_tokens_are_counted_as_any_models(inst: Instance) -> None:
    inst.post("/v1/chat/completions", {"model": "far:cycle", "messages": ASK, "max_tokens": 1})
    code, text = inst.request("GET", "/metrics")
    assert code == 200
    counted = [line for line in str(text).split("\n")
               if line.startswith("lmforge_completion_tokens_total") and 'model="far:cycle"' in line]
    assert counted and float(counted[0].split()[-1]) >= 1, counted


def test_a_remote_engine_that_stops_answering_fails_its_slot_and_says_so(
        tmp_path: Path, llama_server: str, models_dir: Path) -> None:
    """A remote server of its own: this test stops it."""
    remote = RemoteServer(llama_server, models_dir / "cycle.gguf", tmp_path / "engine.log")
    try:
        with running_instance(tmp_path / "home", llama_server, {}, config=config(remote.url)) as inst:
            code, _ = inst.post("/v1/chat/completions", {"model": "far:cycle", "messages": ASK, "max_tokens": 1})
            assert code == 200 and inst.slot("far:cycle")["state"] == "ready"  # type: ignore[index]
            remote.stop()
            wait_until(lambda: inst.slot("far:cycle") is None, timeout=30, what="the health checks to fail the slot")
            error = inst.status()["last_errors"]["far:cycle"]
            assert error["message"] == "its remote engine stopped answering its health checks (2 in a row)"
            code, reply = inst.post("/v1/chat/completions", {"model": "far:cycle", "messages": ASK, "max_tokens": 1})
            assert code == 503 and "did not answer within 4s" in reply["error"]["message"], reply  # type: ignore
            assert remote.url not in str(reply)  # where it runs is not the client's business
    finally:
        remote.stop()
