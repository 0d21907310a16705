"""`lmforge doctor`: what this machine and this home come to for LMForge (hardware, the engine each model gets and
why, disk, the port, the login service, who can reach it), each problem with a one-line fix.

It reads the machine and the home itself and asks the running LMForge only what it alone knows (GET /lf/engines,
/health); exit status 1 when a problem is an error, 0 otherwise (warnings included).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil

from deploy import services
from gateway.cli.client import ApiError, GatewayClient, GatewayDown, GatewayError
from gateway.cli.context import Context
from manager.config import LOOPBACK_NETWORKS, Settings, env_overrides, is_loopback_host
from manager.config_remote import REMOTE_FORMAT, remote_entries
from manager.protocol import HardwareSnapshot, ModelEntry
from prober.engine_choice import LLAMA_CPP

GiB, MiB = 1024**3, 1024**2
HEALTH_TIMEOUT_S, ENGINES_TIMEOUT_S = 3.0, 15.0
# How each level is shown: its mark and style. Only errors make the exit status 1.
LOOPBACK = json.dumps(list(LOOPBACK_NETWORKS))
NEW_KEY = 'lmforge config set api_key "$(openssl rand -hex 24)"'
LEVELS = {"ok": ("✓", "green"), "info": ("·", "dim"), "warning": ("!", "yellow"), "error": ("✗", "bold red")}


@dataclass
class Check:
    level: str  # "ok", "info", "warning" or "error"
    text: str
    fix: str = ""  # one command line (after `#`, what else may do)


@dataclass
class Section:
    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, level: str, text: str, fix: str = "") -> None:
        self.checks.append(Check(level, text, fix))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check hardware, engines, disk, port, service and exposure; each problem "
                                      "with its fix (exit status 1: an error)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=doctor)


def doctor(args: argparse.Namespace, ctx: Context) -> int:
    from catalog.store import ModelStore, StoreError
    from prober.detect import take_snapshot

    snapshot = take_snapshot()
    try:
        client: GatewayClient | None = ctx.client
    except OSError:  # tls_cert cannot be read
        client = None
    health = _health(client)
    try:  # what this home's index holds, read as `lmforge list` does
        entries, unreadable = ModelStore(ctx.paths, remote_entries(ctx.settings.remote)).list(), ""
    except StoreError as exc:
        entries, unreadable = [], str(exc)
    sections = [hardware_section(snapshot), engines_section(ctx, client, health, snapshot, entries),
                disk_section(ctx, entries, unreadable), port_section(ctx, health), service_section(),
                exposure_section(ctx.settings)]
    problems = [c for s in sections for c in s.checks if c.level in ("warning", "error")]
    errors = sum(c.level == "error" for c in problems)
    if args.json:
        ctx.term.json({"ok": errors == 0, "errors": errors, "warnings": len(problems) - errors,
                       "sections": {s.name: {"title": s.title, "checks": [asdict(c) for c in s.checks],
                                             "data": s.data} for s in sections}})
    else:
        _show(ctx, sections, errors, len(problems) - errors)
    return 1 if errors else 0


def _show(ctx: Context, sections: list[Section], errors: int, warnings: int) -> None:
    """Every check on a terminal; with -q the problems only."""
    out = ctx.term.out
    for section in sections:
        shown = [c for c in section.checks if ctx.term.verbosity >= 0 or c.level in ("warning", "error")]
        if not shown:
            continue
        out.print(section.title, style="bold")
        for check in shown:
            mark, style = LEVELS[check.level]
            out.print(f"  {mark} {check.text}", style=style if check.level != "ok" else None)
            if check.fix:  # a problem's fix, or what to run next for a note
                out.print(f"      {'fix' if check.level in ('warning', 'error') else 'run'}: {check.fix}", style="dim")
    counts = [f"{n} {word}{'s' if n != 1 else ''}" for n, word in ((errors, "error"), (warnings, "warning")) if n]
    out.print(f"doctor: {', '.join(counts) or 'no problems found'}", style="bold red" if errors else None)


def hardware_section(hw: HardwareSnapshot) -> Section:
    section = Section("hardware", "Hardware", data=msgspec.to_builtins(hw))
    section.add("ok", f"OS: {hw.os} {hw.arch}" + (f", {hw.apple_chip} (unified memory)" if hw.apple_chip else ""))
    plan = hw.cpu_plan
    budget = (f"; engines get {plan.cores} core{'s' if plan.cores != 1 else ''} (limited by {plan.limited_by}"
              + (f", quota {plan.quota:g}" if plan.quota else "") + ")") if plan else ""
    section.add("ok", f"CPU: {hw.cpu_model}, {hw.cpu_cores} cores / {hw.cpu_threads} threads{budget}")
    section.add("ok", f"RAM: {hw.ram_available / GiB:.1f} GiB available of {hw.ram_total / GiB:.1f} GiB")
    for gpu in hw.gpus:
        extra = "".join(f", {what} {value}" for what, value in (("driver", gpu.driver),
                                                               ("compute", gpu.compute_capability)) if value)
        section.add("ok", f"GPU {gpu.index}: {gpu.name} ({gpu.vendor}), VRAM {gpu.vram_free / GiB:.1f} GiB free of "
                          f"{gpu.vram_total / GiB:.1f} GiB{extra}")
    if not hw.gpus and not hw.apple_chip:
        section.add("info", "no GPU found: models run on the CPU, budgeted in RAM")
    return section


# --- engines ---


def engines_section(ctx: Context, client: GatewayClient | None, health: dict[str, Any],
                    snapshot: HardwareSnapshot, entries: list[ModelEntry]) -> Section:
    section = Section("engines", "Engines")
    report, source = None, "computed here with a fresh hardware reading (LMForge is not running)"
    if client is not None and health["state"] in ("lmforge", "lmforge_degraded"):
        try:
            report, source = client.get("/lf/engines", timeout=ENGINES_TIMEOUT_S), "GET /lf/engines"
        except GatewayError as exc:
            source = f"computed here: GET /lf/engines failed ({exc})"
    if report is None:
        from gateway.api.native.engines import engines_report  # the gateway's own, off the CLI's start-up path

        report = engines_report(ctx.settings, ctx.paths, snapshot, entries)
    section.data = {"source": source, **report}
    host = report["host"]
    if host["hardware"]:
        section.add("ok", f"host default: {host['engine']} ({host['reason']})")
        llama = next(row for row in report["engines"] if row["name"] == LLAMA_CPP)
        if not llama["configured"]:  # a configured llama-server (a container's CUDA build) is used as it is
            section.add("ok", f"llama.cpp builds here for: {host['llama_cpp_backend']}")
            if any(gpu.vendor == "nvidia" for gpu in snapshot.gpus) and not host["nvcc"]:
                section.add("warning", "an NVIDIA GPU but no nvcc on PATH: llama.cpp builds for the CPU only",
                            "lmforge engine install llama.cpp --rebuild  # after installing the CUDA toolkit")
    else:
        section.add("warning", host["reason"], "lmforge logs prober")
    needed = {choice["engine"] for model in report["models"] for choice in model["kinds"].values()}
    for row in report["engines"]:
        _engine_line(section, row, host, needed)
    if not report["models"]:
        section.add("info", "no models installed", "lmforge pull smollm2:135m")
    for model in report["models"]:
        for kind, choice in model["kinds"].items():
            _choice_line(section, model, kind, choice)
    section.add("info", f"source: {source}")
    return section


def _engine_line(section: Section, row: dict[str, Any], host: dict[str, Any], needed: set[str]) -> None:
    name = row["name"]
    if row["installed"]:
        versions = ", ".join(f"{k} {v}" for k, v in row["versions"].items()) or "version unknown"
        backend = f", {row['backend']} build" if row["backend"] else ""
        section.add("ok", f"{name}: installed, {row['path']} ({versions}{backend}; {row['source']})")
        wanted = host.get("llama_cpp_backend")  # a build of ours for another backend than this machine's
        if not row["configured"] and wanted and row["backend"] not in (None, wanted):
            section.add("warning", f"llama.cpp was built for {row['backend']}, but this machine can use {wanted}",
                        "lmforge engine install llama.cpp --rebuild")
    elif row["status"] == "broken":  # a configured program (llama_cpp.server, mlx.python...) that is not there
        section.add("error", f"{name}: {row['detail']}", row["fix"])
    elif row["status"] == "remote":  # nothing to install here, and never a model's missing engine
        section.add("info", f"{name}: {row['detail']}")
    else:
        why = "models here need it: their first load installs it" if name in needed else "no model here needs it"
        section.add("warning" if name in needed else "info", f"{name}: not installed ({why})", row["install"] or "")


def _choice_line(section: Section, model: dict[str, Any], kind: str, choice: dict[str, Any]) -> None:
    name = model["model"]
    if choice["engine"]:
        fallbacks = f" (then {', '.join(choice['fallbacks'])})" if choice["fallbacks"] else ""
        section.add("ok", f"{name} ({kind}) → {choice['engine']}{fallbacks}: {choice['reason']}")
        return
    fix = f"lmforge config edit  # remove \"{name}\" = \"{model['override']}\" from [engines]" if model["override"] \
        else f"lmforge rm {name}  # no engine here can serve {model['format']} as {kind}"
    section.add("error", f"{name} ({kind}): no engine can serve it here: {choice['reason']}", fix)


# --- disk ---


def disk_section(ctx: Context, entries: list[ModelEntry], unreadable: str) -> Section:
    """Free space where models are written (the home's filesystem, or the disk `models` links to: pulls check it
    there, as catalog/downloader.py does) against disk_reserve_mb, and what the models take."""
    paths, reserve_mb = ctx.paths, ctx.settings.disk_reserve_mb
    entries = [e for e in entries if e.format != REMOTE_FORMAT]  # [[remote]] models keep nothing here
    where = _existing(paths.models)
    usage = shutil.disk_usage(where)
    models_bytes, partial = _tree_size(paths.models, skip=paths.downloads), _tree_size(paths.downloads)
    section = Section("disk", "Disk", data={"path": str(where), "free_bytes": usage.free, "total_bytes": usage.total,
                                            "reserve_bytes": reserve_mb * MiB, "models": len(entries),
                                            "models_bytes": models_bytes, "partial_bytes": partial})
    text = f"{usage.free / GiB:.1f} GiB free of {usage.total / GiB:.1f} GiB at {where}"
    if usage.free < reserve_mb * MiB:
        section.add("error", f"{text}: less than disk_reserve_mb ({reserve_mb} MiB), so pulls are refused",
                    "lmforge rm NAME  # or: lmforge config set disk_reserve_mb 256")
    else:
        section.add("ok", f"{text} (pulls keep {reserve_mb} MiB free)")
    if unreadable:
        section.add("error", f"the model index cannot be read: {unreadable}", f"lmforge list  # then fix {paths.index}")
    section.add("ok", f"models: {len(entries)} installed, {models_bytes / GiB:.2f} GiB in {paths.models}")
    if partial:
        section.add("info", f"unfinished pulls hold {partial / GiB:.2f} GiB in {paths.downloads} (the same pull "
                            "resumes them)")
    for entry in entries:
        if not Path(entry.path).exists():
            section.add("error", f"{entry.name}: its file is missing ({entry.path})", f"lmforge rm {entry.name}")
    return section


def _existing(path: Path) -> Path:
    """The path, or its nearest ancestor that exists (a home not created yet is measured where it will be)."""
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def _tree_size(root: Path, skip: Path | None = None) -> int:
    total = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) != skip]
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # removed while we walked
    return total


# --- port ---


def _health(client: GatewayClient | None) -> dict[str, Any]:
    """Who answers on the configured port: "lmforge" (healthy), "lmforge_degraded" (its gateway answers 503: no
    manager), "other" (something answers, not as LMForge does), or "nothing" (nothing that could be asked)."""
    if client is None:  # an unreadable tls_cert: the exposure section says so
        return {"state": "nothing", "detail": "the CLI cannot read tls_cert to ask"}
    try:
        answer = client.get("/health", timeout=HEALTH_TIMEOUT_S)
    except GatewayDown as exc:
        return {"state": "nothing", "detail": str(exc)}
    except ApiError as exc:
        state = "lmforge_degraded" if exc.status == 503 else "other"
        return {"state": state, "detail": f"/health answered HTTP {exc.status}"}
    except GatewayError as exc:
        return {"state": "other", "detail": str(exc)}
    if answer.get("status") != "ok":
        return {"state": "other", "detail": f"/health answered {str(answer)[:80]}"}
    return {"state": "lmforge", "detail": f"LMForge {answer.get('version', '')} answers /health".replace("  ", " ")}


def port_section(ctx: Context, health: dict[str, Any]) -> Section:
    host, port = ctx.settings.host, ctx.settings.port
    section = Section("port", "Port", data={"host": host, "port": port, **health})
    where = f"port {port} on {host}"
    state = health["state"]
    if state in ("lmforge", "lmforge_degraded"):
        section.add("ok", f"{where}: held by LMForge ({health['detail']})")
        if state == "lmforge_degraded":
            section.add("error", "the gateway answers but its manager does not", "lmforge stop && lmforge start")
        return section
    failed = _bind_error(host, port) if state == "nothing" else None
    if state == "nothing" and failed is None:
        section.add("ok", f"{where} is free")
        section.add("info", "LMForge is not running", "lmforge start")
        return section
    if failed is not None and failed.errno == errno.EADDRNOTAVAIL:
        section.add("error", f"host {host} is not an address of this machine ({failed.strerror})",
                    "lmforge config set host 127.0.0.1")
        return section
    if failed is not None and failed.errno != errno.EADDRINUSE:
        section.add("error", f"{where} cannot be bound: {failed.strerror}", _port_fix(section))
        return section
    holder = _holder(port)
    section.data["holder"] = holder
    who = f"{holder['name']} (pid {holder['pid']}: {holder['cmdline']})" if holder and holder["pid"] else \
        "another program (psutil cannot say which)"
    section.add("error", f"{where} is held by {who}, not LMForge", _port_fix(section))
    return section


def _bind_error(host: str, port: int) -> OSError | None:
    """None when the gateway could bind host:port now (as aiohttp does, reusing a TIME_WAIT address)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        return exc
    return None


def _holder(port: int) -> dict[str, Any] | None:
    """The process listening on `port`, as far as psutil may tell (other users' pids are hidden)."""
    try:
        pid = next((c.pid for c in psutil.net_connections("inet")
                    if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN), 0)
        proc = psutil.Process(pid) if pid else None
        return {"pid": pid, "name": proc.name(), "cmdline": " ".join(proc.cmdline())[:120]} if proc else None
    except (psutil.Error, OSError):
        return None


def _port_fix(section: Section) -> str:
    free = section.data["suggested_port"] = _free_port(section.data["host"], section.data["port"])
    if "port" in env_overrides():  # the environment's port wins over the file's
        return f"export LMFORGE_PORT={free}"
    return f"lmforge config set port {free}  # port = {free} in config.toml, or LMFORGE_PORT={free}"


def _free_port(host: str, after: int) -> int:
    return next((p for p in range(after + 1, min(after + 100, 65536)) if _bind_error(host, p) is None), after + 1)


# --- service and exposure ---


def service_section() -> Section:
    section = Section("service", "Login service")
    try:
        backend = services.backend()
    except services.UnsupportedPlatform as exc:
        section.add("info", str(exc))
        return section
    found = backend.status()
    section.data = found.to_json()
    if not found.installed:
        section.add("info", f"not installed ({found.manager}; it would be {found.path}): LMForge starts only with "
                            "`lmforge start`", "lmforge service install")
        return section
    enabled = {True: "enabled", False: "not enabled", None: "enabled: unknown"}[found.enabled]
    active = {True: "active", False: f"not active ({found.state})", None: "activity unknown"}[found.active]
    text = f"installed, {active} ({found.manager}, {enabled}{f', pid {found.pid}' if found.pid else ''}): " \
           f"{found.path}" + (f"; {found.reason}" if found.reason else "")
    fix = "" if found.active else (found.hint if found.active is None else backend.start_command())
    section.add("ok" if found.active else "warning", text, fix)
    for note in found.notes:
        section.add("info", note)
    return section


def exposure_section(settings: Settings) -> Section:
    keys = ([settings.api_key] if settings.api_key else []) + [k.key for k in settings.api_keys]
    admin = bool(settings.api_key) + sum(k.scope == "admin" for k in settings.api_keys)
    loopback = is_loopback_host(settings.host)
    wide = [net for net in settings.trusted_networks if not _loopback_network(net)]
    tls = bool(settings.tls_cert and settings.tls_key)
    # No key on a non-loopback bind means allow_unauthenticated: without it the settings do not load at all.
    exposure = "loopback" if loopback else ("exposed-with-key" if keys else "exposed-without-key")
    section = Section("exposure", "Who can reach it", data={
        "host": settings.host, "loopback": loopback, "exposure": exposure, "keys": len(keys), "admin_keys": admin,
        "allow_unauthenticated": settings.allow_unauthenticated, "trusted_networks_beyond_loopback": wide,
        "tls": tls})
    counted = f"{len(keys)} key{'s' if len(keys) != 1 else ''} configured ({admin} admin)"
    level, what, fix = {
        "loopback": ("ok", "only this machine can reach it", ""),
        "exposed-with-key": ("ok", "reachable from the network, with a key", ""),
        "exposed-without-key": ("warning", "reachable from the network with no key (allow_unauthenticated): anyone "
                                           "who reaches it may use it", NEW_KEY),
    }[exposure]
    section.add(level, f"bound to {settings.host}: {what}; {counted}", fix)
    if wide and not loopback:  # bound to loopback, no one from those networks can connect
        section.add("warning", f"trusted_networks beyond loopback need no key for inference and status: "
                               f"{', '.join(wide)}", f"lmforge config set trusted_networks '{LOOPBACK}'")
    missing = [p for p in (settings.tls_cert, settings.tls_key) if tls and not Path(p).is_file()]
    if missing:
        section.add("error", f"TLS: {', '.join(missing)} cannot be found", "lmforge config edit  # tls_cert, tls_key")
    elif tls:
        section.add("ok", f"TLS: HTTPS with {settings.tls_cert}")
    elif not loopback:
        section.add("warning", "no TLS: keys and prompts cross the network in clear text",
                    "lmforge config set tls_cert /path/cert.pem && lmforge config set tls_key /path/key.pem")
    return section


def _loopback_network(cidr: str) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    return net.network_address.is_loopback and net.broadcast_address.is_loopback
