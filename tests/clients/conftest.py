"""Real third-party clients against one real LMForge: the shared instance, model names, offline guard.

One Instance serves every client module in this directory (engines stay warm between
modules); the clients run unchanged, pointed at it, and must never reach the internet.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.clients.served import CHAT, CYCLE, EMBED, GEMMA, RERANK
from tests.support.instance import Instance, running_instance

# litellm downloads a price map from GitHub at import unless told to use its bundled
# copy; this must be set before any test module imports it.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`-m clients` selects this directory (and `-m "not clients"` leaves it out)."""
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.clients)


class OfflineGuard:
    """Refuses, and records, every name lookup or connection a client makes beyond loopback.

    An audit hook cannot be removed, so it is installed once and only acts while `active`.
    """

    def __init__(self) -> None:
        self.active = False
        self.attempts: list[str] = []
        sys.addaudithook(self._audit)

    def _audit(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "socket.getaddrinfo":
            host = args[0]
        elif event == "socket.connect" and isinstance(args[1], tuple):
            host = args[1][0]
        else:
            return
        if isinstance(host, bytes):
            host = host.decode()
        if host is None or _is_loopback(host):
            return
        self.attempts.append(f"{event} {host}")
        raise OSError(f"tests/clients run offline: a client tried to reach {host}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


GUARD = OfflineGuard()


@pytest.fixture(autouse=True)
def offline() -> Iterator[None]:
    """Fails a test whose client tried the internet, even when the client swallowed the error."""
    GUARD.active, GUARD.attempts = True, []
    yield
    GUARD.active = False
    assert not GUARD.attempts, f"a client reached beyond loopback: {GUARD.attempts}"


@pytest.fixture(scope="package")
def lmforge(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path,
            gemma_gguf: Path) -> Iterator[Instance]:
    """The one LMForge every client module talks to: the tiny models and the real Gemma."""
    models = {CHAT: models_dir / "chat.gguf", CYCLE: models_dir / "cycle.gguf",
              EMBED: models_dir / "embed.gguf", RERANK: models_dir / "rerank.gguf", GEMMA: gemma_gguf}
    with running_instance(tmp_path_factory.mktemp("clients") / "home", llama_server, models) as inst:
        yield inst


@pytest.fixture(scope="module")
def own_lmforge(tmp_path_factory: pytest.TempPathFactory, llama_server: str, models_dir: Path) -> Iterator[Instance]:
    """An LMForge of the module's own, with the tiny models, for a module that changes state at random."""
    models = {CHAT: models_dir / "chat.gguf", EMBED: models_dir / "embed.gguf", RERANK: models_dir / "rerank.gguf"}
    with running_instance(tmp_path_factory.mktemp("own") / "home", llama_server, models) as inst:
        yield inst


@pytest.fixture(scope="package")
def v1(lmforge: Instance) -> str:
    """The OpenAI-style base URL, as clients take it."""
    return lmforge.url + "/v1"
