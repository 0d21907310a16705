"""`lmforge doctor` as a user runs it: the real CLI against a running instance and against stopped homes, each
section's content, a port another program holds, how far the bind exposes LMForge, and the exit status.

XDG_CONFIG_HOME points into the test's directory, so the login-service section looks there, not at the user's own.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.instance import Instance, prepare_instance

GGUF_REASON = "GGUF weights: llama.cpp serves them on every host"
OVERRIDE = '[engines]\n"tiny:mlx" = "mlx"\n'
KEY = "doctor-admin-key-0123456789"


def doctor(inst: Instance, tmp_path: Path, *args: str) -> tuple[int, str]:
    env = dict(inst.env, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "doctor", *args], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout


def report_of(inst: Instance, tmp_path: Path) -> tuple[int, dict]:
    code, out = doctor(inst, tmp_path, "--json")
    return code, json.loads(out)


def checks(report: dict, section: str, *levels: str) -> list[dict]:
    return [c for c in report["sections"][section]["checks"] if not levels or c["level"] in levels]


def texts(report: dict, section: str, *levels: str) -> list[str]:
    return [c["text"] for c in checks(report, section, *levels)]


def test_running_and_stopped_every_section_reports_and_a_model_no_engine_serves_is_an_error(
        make_instance, models_dir: Path, tmp_path: Path) -> None:
    models = {"tiny:chat": models_dir / "chat.gguf", "tiny:embed": models_dir / "embed.gguf",
              "tiny:mlx": models_dir / "chat.gguf"}
    inst = make_instance(OVERRIDE, models).start()
    code, running = report_of(inst, tmp_path)
    assert code == 1 and running["ok"] is False

    hardware = running["sections"]["hardware"]
    assert hardware["data"]["os"] == platform.system().lower() and hardware["data"]["ram_total"] > 0
    assert any(t.startswith(f"CPU: {hardware['data']['cpu_model']}, ") for t in texts(running, "hardware", "ok"))

    engines = running["sections"]["engines"]
    assert engines["data"]["source"] == "GET /lf/engines"
    assert f"tiny:chat (chat) → llama.cpp: {GGUF_REASON}" in texts(running, "engines", "ok")
    assert f"tiny:embed (embed) → llama.cpp: {GGUF_REASON}" in texts(running, "engines", "ok")
    llama = next(t for t in texts(running, "engines", "ok") if t.startswith("llama.cpp: installed, "))
    assert inst.env["LMFORGE_LLAMA_SERVER"] in llama
    # The override is the only problem: one error per kind the model serves, each with the way out of it.
    problems = [(section, c) for section in running["sections"] for c in checks(running, section, "warning", "error")]
    assert [(s, c["level"], c["text"].partition(": no engine")[0]) for s, c in problems] == [
        ("engines", "error", "tiny:mlx (chat)"), ("engines", "error", "tiny:mlx (embed)")]
    assert running["errors"] == 2 and running["warnings"] == 0
    for _, check in problems:
        assert "cannot serve gguf weights" in check["text"] and '[engines]' in check["fix"]

    disk = running["sections"]["disk"]["data"]
    assert disk["models"] == 3 and disk["models_bytes"] >= (models_dir / "embed.gguf").stat().st_size
    assert disk["reserve_bytes"] == 1024 * 1024**2 and 0 < disk["free_bytes"] <= disk["total_bytes"]
    port = running["sections"]["port"]["data"]
    assert (port["state"], port["port"]) == ("lmforge", inst.port)
    service = running["sections"]["service"]["data"]
    assert service["installed"] is False and service["path"].startswith(str(tmp_path / "xdg"))
    assert checks(running, "service")[0]["fix"] == "lmforge service install"
    exposure = running["sections"]["exposure"]["data"]
    assert (exposure["exposure"], exposure["keys"], exposure["tls"]) == ("loopback", 0, False)

    code, shown = doctor(inst, tmp_path)
    assert code == 1 and "✗ tiny:mlx (chat): no engine can serve it here" in shown
    assert '      fix: lmforge config edit  # remove "tiny:mlx" = "mlx" from [engines]' in shown.splitlines()
    assert shown.splitlines()[-1] == "doctor: 2 errors"

    inst.stop()
    code, stopped = report_of(inst, tmp_path)
    assert code == 1
    assert stopped["sections"]["engines"]["data"]["source"].startswith("computed here")
    # Computed here with the same registry, it comes to the same choices as the manager's.
    assert stopped["sections"]["engines"]["data"]["models"] == engines["data"]["models"]
    assert stopped["sections"]["port"]["data"]["state"] == "nothing"
    assert f"port {inst.port} on 127.0.0.1 is free" in texts(stopped, "port", "ok")


@pytest.mark.parametrize("port_from", ["config", "environment"])
def test_a_port_held_by_another_program_names_it_and_the_fix(
        tmp_path: Path, llama_server: str, port_from: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        inst = prepare_instance(tmp_path / "home", llama_server, {}, f"port = {port}\n")
        if port_from == "config":
            del inst.env["LMFORGE_PORT"]
        else:
            inst.env["LMFORGE_PORT"] = str(port)
        code, report = report_of(inst, tmp_path)
    assert code == 1
    data = report["sections"]["port"]["data"]
    assert data["state"] == "other" and data["holder"]["pid"] == os.getpid()
    [error] = checks(report, "port", "error")
    assert error["text"].startswith(f"port {port} on 127.0.0.1 is held by {data['holder']['name']} (pid {os.getpid()}")
    suggested = data["suggested_port"]
    assert suggested != port
    if port_from == "config":
        assert error["fix"] == f"lmforge config set port {suggested}  # port = {suggested} in config.toml, " \
                               f"or LMFORGE_PORT={suggested}"
    else:  # the environment's port wins over the file's
        assert error["fix"] == f"export LMFORGE_PORT={suggested}"


def test_a_home_bound_to_every_interface_with_a_key_is_exposed_with_a_key_and_no_error(
        tmp_path: Path, llama_server: str, models_dir: Path) -> None:
    config = f'host = "0.0.0.0"\napi_key = "{KEY}"\ntrusted_networks = ["127.0.0.0/8", "10.0.0.0/8"]\n'
    inst = prepare_instance(tmp_path / "home", llama_server, {"tiny:chat": models_dir / "chat.gguf"}, config)
    code, report = report_of(inst, tmp_path)
    assert code == 0 and report["ok"] is True and report["errors"] == 0
    data = report["sections"]["exposure"]["data"]
    assert (data["exposure"], data["loopback"], data["keys"], data["admin_keys"]) == ("exposed-with-key", False, 1, 1)
    assert data["trusted_networks_beyond_loopback"] == ["10.0.0.0/8"]
    assert texts(report, "exposure", "ok") == ["bound to 0.0.0.0: reachable from the network, with a key; "
                                               "1 key configured (1 admin)"]
    assert texts(report, "exposure", "warning") == [
        "trusted_networks beyond loopback need no key for inference and status: 10.0.0.0/8",
        "no TLS: keys and prompts cross the network in clear text"]
    assert f"port {inst.port} on 0.0.0.0 is free" in texts(report, "port", "ok")
    code, shown = doctor(inst, tmp_path)
    assert code == 0 and shown.splitlines()[-1] == "doctor: 2 warnings"
    assert KEY not in shown and KEY not in json.dumps(report)  # a count, never the key
