"""What every CLI command gets: the terminal, this instance's settings and paths, and a gateway client."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.cli.client import GatewayClient
from gateway.cli.terminal import Terminal
from manager.config import Paths, Settings


class CommandError(Exception):
    """An expected failure: printed as one line (with the fix), exit status 1."""


@dataclass
class Context:
    term: Terminal
    settings: Settings
    paths: Paths

    @property
    def load_timeout_s(self) -> float:
        """How long to wait for a load: past the gateway's own wait (the load, the drain of an engine it evicts,
        and 30 s), so that the gateway's answer, not a timeout here, says what happened."""
        return self.settings.acquire_wait_s + 30

    @property
    def client(self) -> GatewayClient:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        return GatewayClient(host, self.settings.port, key=self.settings.api_key, tls_cert=self.settings.tls_cert)
