"""The gateway's TLS context: server side, TLS 1.2 at least, from tls_cert and tls_key; none when unset."""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.__main__ import tls_context
from manager.config import Settings
from tests.support.certificates import self_signed


def test_tls_is_off_unless_a_certificate_is_configured() -> None:
    assert tls_context(Settings()) is None


def test_the_tls_context_serves_tls_1_2_or_later(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = tls_context(Settings(tls_cert=str(cert), tls_key=str(key)))
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER
