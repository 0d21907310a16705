"""tls_cert and tls_key serve HTTPS on the gateway's port, and nothing else: plain HTTP there fails."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.certificates import self_signed
from tests.support.instance import wait_until


def test_https_is_served_with_the_configured_certificate_and_plain_http_is_not(make_instance, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    inst = make_instance(f'tls_cert = "{cert}"\ntls_key = "{key}"\n').start(wait=False)
    trusting = ssl.create_default_context(cafile=str(cert))  # verifies the chain and 127.0.0.1 against it

    def https_health() -> int | None:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{inst.port}/health", context=trusting, timeout=5) as r:
                return r.status
        except OSError:
            return None

    assert wait_until(https_health, timeout=20, what="/health over HTTPS") == 200
    with urllib.request.urlopen(f"https://127.0.0.1:{inst.port}/v1/models", context=trusting, timeout=5) as resp:
        assert json.loads(resp.read())["object"] == "list"
    conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("GET", "/health")
        conn.getresponse()
    conn.close()
    listed = inst.lmforge("ps", "--json")  # the CLI speaks HTTPS, trusting the configured certificate
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_a_certificate_that_cannot_be_loaded_stops_the_gateway_with_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'tls_cert = "{tmp_path}/missing.pem"\ntls_key = "{tmp_path}/missing.key"\n')
    done = subprocess.run([sys.executable, "-m", "gateway"], env=dict(os.environ, LMFORGE_HOME=str(home)),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("lmforge gateway: cannot use tls_cert")
    assert "Traceback" not in done.stderr
