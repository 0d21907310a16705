"""`lmforge start|stop|status`: the four processes under supervisord, and any this home left without it.

`lmforge service install|uninstall|status` (LMForge at login, a unit that runs `lmforge start --foreground`) is
gateway/cli/commands/autostart.py.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import nullcontext

from deploy import orphans, supervisord
from gateway.cli.client import GatewayError
from gateway.cli.commands.engine import ensure_engine
from gateway.cli.commands.models import print_slots
from gateway.cli.context import CommandError, Context
from manager.process import read_tail

START_TIMEOUT_S = 60.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("start", help="start LMForge in the background (a no-op when it runs)")
    p.add_argument("--foreground", action="store_true", help="keep supervisord in this terminal")
    p.set_defaults(func=start)
    p = sub.add_parser("stop", help="stop LMForge and every engine it started")
    p.set_defaults(func=stop)
    p = sub.add_parser("status", help="processes, loaded models and hardware")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=status)


def start(args: argparse.Namespace, ctx: Context) -> int:
    paths = ctx.paths
    pid = supervisord.running_pid(paths)
    if pid is not None:
        ctx.term.info(f"LMForge is already running (supervisord pid {pid}) at {ctx.client.url}")
        return 0
    _stop_orphans(ctx)
    ensure_engine(ctx)
    supervisord.write_config(paths, ctx.settings)
    if args.foreground:
        argv = supervisord.command(paths, foreground=True)
        os.execv(argv[0], argv)
    supervisord.start_daemon(paths)
    _wait_healthy(ctx)
    ctx.term.success(f"LMForge is running at {ctx.client.url} (home {paths.home}, logs in {paths.logs})")
    return 0


def _stop_orphans(ctx: Context) -> None:
    """Never a second set beside processes that outlived their supervisord: stop those first."""
    found = orphans.find(ctx.paths)
    if not found:
        return
    ctx.term.warning(f"this home's processes run without supervisord ({orphans.describe(found)}); "
                     "stopping them first")
    stopped = orphans.stop(ctx.paths)
    supervisord.clean_runtime(ctx.paths)
    ctx.term.info(f"stopped {orphans.describe(stopped)}")


def _wait_healthy(ctx: Context) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with ctx.term.err.status("starting LMForge...", spinner="dots") if ctx.term.interactive else nullcontext():
        while time.monotonic() < deadline:
            if ctx.client.healthy():
                return
            failed = [p for p in _states(ctx) if p["state"] in ("FATAL", "BACKOFF", "EXITED")]
            if failed:
                break
            time.sleep(0.2)  # poll: supervisord gives no readiness signal
    _explain_failure(ctx)
    raise CommandError(f"LMForge did not become healthy at {ctx.client.url}; `lmforge stop` cleans up")


def _states(ctx: Context) -> list[dict[str, object]]:
    try:
        return supervisord.process_states(ctx.paths)
    except OSError:
        return []


def _explain_failure(ctx: Context) -> None:
    for proc in _states(ctx):
        if proc["state"] != "RUNNING":
            ctx.term.error(f"{proc['name']}: {proc['state']} {proc['description']}")
            tail = read_tail(ctx.paths.logs / f"{proc['name']}.log", lines=8)
            if tail:
                ctx.term.err.print(tail, style="dim")


def stop(args: argparse.Namespace, ctx: Context) -> int:
    supervised = supervisord.stop_daemon(ctx.paths)
    # Whatever supervisord did not stop: everything, when it was killed; engines of a killed manager.
    leftovers = orphans.stop(ctx.paths)
    supervisord.clean_runtime(ctx.paths)
    if leftovers:
        where = "left running beside supervisord" if supervised else "running without supervisord"
        ctx.term.info(f"stopped this home's processes {where}: {orphans.describe(leftovers)}")
    if supervised or leftovers:
        ctx.term.success("LMForge stopped")
    else:
        ctx.term.info("LMForge is not running")
    return 0


def status(args: argparse.Namespace, ctx: Context) -> int:
    procs = _states(ctx) if supervisord.running_pid(ctx.paths) else []
    try:
        state = ctx.client.get("/lf/status")
    except GatewayError as exc:
        state = {"error": str(exc)}
    if args.json:
        ctx.term.json({"processes": procs, "url": ctx.client.url, **state})
        return 0 if procs else 1
    if not procs:
        found = orphans.find(ctx.paths)
        if found:
            ctx.term.warning(f"supervisord is not running, but this home's processes are "
                             f"({orphans.describe(found)}); `lmforge stop` stops them")
            return 1
        ctx.term.info(f"LMForge is not running (home {ctx.paths.home}); start it with `lmforge start`")
        return 1
    ctx.term.table(["PROCESS", "STATE", "PID", "UPTIME"],
                   [[p["name"], p["state"], p["pid"], p["description"]] for p in procs], title="Processes")
    if "error" in state:
        ctx.term.warning(f"API: {state['error']}")
        return 1
    ctx.term.info("")
    print_slots(ctx, state)
    _print_pulls(ctx, state.get("pulls", []))
    _print_hardware(ctx, state)
    _print_cpu(ctx, state.get("cpu"))
    return 0


def _print_pulls(ctx: Context, pulls: list[dict]) -> None:
    """Running and queued pulls, and the last few that ended."""
    if not pulls:
        return
    rows = []
    for p in pulls:
        total, done = p["total_bytes"], p["done_bytes"]
        progress = f"{done / total:.0%} of {total / 1e9:.2f} GB" if total else ""
        speed = f"{p['bytes_per_s'] / 1e6:.1f} MB/s" if p["bytes_per_s"] else ""
        rows.append([p["model"], p["state"], progress, speed, p["error"][:60]])
    ctx.term.info("")
    ctx.term.table(["PULL", "STATE", "PROGRESS", "SPEED", "ERROR"], rows, title="Pulls")


def _print_hardware(ctx: Context, state: dict) -> None:
    hw, budget = state.get("hardware"), state["budget"]
    gib = 1024**3
    ctx.term.info("")
    if hw:
        ctx.term.info(f"Hardware: {hw['os']}/{hw['arch']}, {hw['cpu_model']} ({hw['cpu_cores']} cores), "
                      f"RAM {hw['ram_available'] / gib:.1f} of {hw['ram_total'] / gib:.1f} GiB free")
        for gpu in hw.get("gpus", []):
            ctx.term.info(f"  GPU {gpu['index']}: {gpu['name']}, VRAM {gpu['vram_free'] / gib:.1f} "
                          f"of {gpu['vram_total'] / gib:.1f} GiB free")
    ctx.term.info(f"Model memory: {budget['used_bytes'] / gib:.2f} GiB used of {budget['total_bytes'] / gib:.2f} "
                  f"GiB ({budget['source']})")


def _print_cpu(ctx: Context, cpu: dict | None) -> None:
    """The cores budget (manager/cores.py): the plan and what limited it, the policy and what it comes to now."""
    if not cpu:
        return
    plan = cpu.get("plan")
    if plan:
        why = f"{plan['limited_by']}; " + (f"quota {plan['quota']:g} cores" if plan.get("quota") else "no quota")
    else:
        why = "no CPU plan from the prober: its core count"
    if cpu["mode"] == "gpu":
        ctx.term.info(f"CPU: {_count(cpu['cores'], 'core')} ({why}) · engines run on the GPU: cores not budgeted")
        return
    at_once = _count(cpu["at_once"], "engine")
    ctx.term.info(f"CPU: {_count(cpu['cores'], 'core')} ({why}) · policy {cpu['policy']} → {cpu['mode']}, "
                  f"{at_once} at once, "
                  f"{_count(cpu['threads'], 'thread')} each · busy {cpu['busy_threads']}/{cpu['cores']} threads "
                  f"(peak {cpu['busy_threads_peak']})")
    if cpu["waiting"]:
        ctx.term.info(f"  waiting for cores: {', '.join(cpu['waiting'])} (each gets them within "
                      f"{cpu['fair_share_s']:g}s plus a request)")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
