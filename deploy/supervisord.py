"""Renders supervisord's config into the LMForge home and starts, queries and stops supervisord."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import xmlrpc.client
from importlib.resources import files
from pathlib import Path

import psutil
from supervisor.xmlrpc import SupervisorTransport

from manager.config import Paths, Settings
from manager.ipc import ensure_runtime_dir, remove_endpoints

PROGRAMS = ("manager", "prober", "downloader", "gateway")
# Passed through to the four programs so each instance keeps its own settings.
ENV_PASSTHROUGH = (
    "LMFORGE_PORT", "LMFORGE_LLAMA_SERVER", "LMFORGE_LOG_LEVEL", "XDG_RUNTIME_DIR",
    # Pulls: the Hub (or a mirror) and its token, pip's index for the offline-first defaults, proxies.
    "HF_ENDPOINT", "HF_TOKEN", "HF_HOME", "HF_HUB_OFFLINE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS",
    "PIP_CACHE_DIR", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy",
)


def render(paths: Paths, settings: Settings) -> str:
    template = files("deploy").joinpath("supervisord.conf.tmpl").read_text()
    env = {"LMFORGE_HOME": str(paths.home), "PYTHONUNBUFFERED": "1"}
    env.update({k: os.environ[k] for k in ENV_PASSTHROUGH if k in os.environ})
    environment = ",".join(f'{k}="{_quote(v)}"' for k, v in env.items())
    values = {
        "home": paths.home, "conf": paths.supervisord_conf, "logs": paths.logs,
        "runtime": paths.runtime, "python": sys.executable, "environment": environment,
        "log_maxbytes": f"{settings.log_max_mb}MB", "log_backups": settings.log_backups,
    }
    # supervisord reads the file with ConfigParser interpolation: a literal % is %%.
    return template.format(**{k: str(v).replace("%", "%%") for k, v in values.items()})


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def write_config(paths: Paths, settings: Settings) -> Path:
    paths.logs.mkdir(parents=True, exist_ok=True)
    ensure_runtime_dir(paths.runtime)
    paths.supervisord_conf.write_text(render(paths, settings))
    return paths.supervisord_conf


def running_pid(paths: Paths) -> int | None:
    """supervisord's pid when it runs for this home (a stale pidfile does not count)."""
    try:
        pid = int(_pidfile(paths).read_text().strip())
        proc = psutil.Process(pid)
        if "supervisord" in " ".join(proc.cmdline()) and str(paths.supervisord_conf) in proc.cmdline():
            return pid
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def _pidfile(paths: Paths) -> Path:
    return paths.home / "supervisord.pid"


def _socket(paths: Paths) -> Path:
    return paths.runtime / "supervisor.sock"  # as the template names it


def command(paths: Paths, *, foreground: bool) -> list[str]:
    argv = [sys.executable, "-m", "supervisor.supervisord", "-c", str(paths.supervisord_conf)]
    return argv + (["-n"] if foreground else [])


def start_daemon(paths: Paths) -> None:
    """Start supervisord in the background; it returns once it has forked."""
    result = subprocess.run(command(paths, foreground=False), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"supervisord did not start: {(result.stderr or result.stdout).strip()}")


def rpc(paths: Paths) -> xmlrpc.client.ServerProxy:
    url = f"unix://{_socket(paths)}"
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, url))


def process_states(paths: Paths) -> list[dict[str, object]]:
    """supervisord's view of the four programs: name, state, pid, uptime description."""
    return [
        {"name": p["name"], "state": p["statename"], "pid": p["pid"] or None, "description": p["description"]}
        for p in rpc(paths).supervisor.getAllProcessInfo()
    ]


def stop_daemon(paths: Paths, timeout: float = 60.0) -> bool:
    """SIGTERM supervisord (it stops the programs in reverse priority) and wait for it to exit."""
    pid = running_pid(paths)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
    return True


def clean_runtime(paths: Paths) -> None:
    """Remove socket files and the runtime directory that dead processes left; a running supervisord keeps its own."""
    remove_endpoints(paths)
    if running_pid(paths) is not None:
        return
    _socket(paths).unlink(missing_ok=True)
    _pidfile(paths).unlink(missing_ok=True)
    try:
        paths.runtime.rmdir()
    except OSError:
        pass  # something else lives there; leave it
