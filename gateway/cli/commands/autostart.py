"""`lmforge service install|uninstall|status`: LMForge as a per-user service that starts at login.

deploy/services renders and installs the platform's unit (a systemd user unit, a launchd agent, a scheduled task);
here is what the user is told. Each unit runs `lmforge start --foreground` (gateway/cli/commands/service.py, which
also holds `lmforge stop` and `lmforge status`) for the home it was installed from.
"""

from __future__ import annotations

import argparse
import shlex
from types import ModuleType

from deploy import services, supervisord
from deploy.services import Status, UnitError, UnsupportedPlatform
from gateway.cli.context import CommandError, Context

ACTIONS = {"created": "installed", "updated": "updated", "unchanged": "unchanged"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("service", help="run LMForge at login as a per-user service (install, uninstall, status)")
    ssub = p.add_subparsers(dest="service_command", required=True, metavar="{install,uninstall,status}")
    inst = ssub.add_parser("install", help="write the service for this home, enable it and start it (again: "
                                           "rewrites it)")
    inst.set_defaults(func=install)
    remove = ssub.add_parser("uninstall", help="stop and remove the service (a no-op when none is installed)")
    remove.set_defaults(func=uninstall)
    st = ssub.add_parser("status", help="whether the service is installed, where, and what the service manager "
                                        "says (exit status 1: not installed)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=status)


def install(args: argparse.Namespace, ctx: Context) -> int:
    backend = _backend()
    unit = services.unit_for(ctx.paths.home, ctx.paths.logs)
    outside = _running_outside(ctx, backend)
    for name, key in services.left_out().items():
        ctx.term.warning(f"warning: {name} is set, but the service will not have it: a unit file is readable by "
                         f"every user of this machine. It belongs in config.toml (mode 0600): "
                         f"lmforge config set {key} \"${name}\"")
    try:
        outcome = backend.install(unit)
    except UnitError as exc:
        raise CommandError(str(exc)) from None
    if outcome.error:  # the service manager refused: nothing runs at login, whatever the file says
        raise CommandError(f"{outcome.error}; the unit {outcome.path} is written but will not start at login: "
                           "fix that, then run `lmforge service install` again")
    ctx.term.success(f"LMForge service {ACTIONS[outcome.action]} ({backend.MANAGER}): {outcome.path}")
    port = f", port {unit.environment['LMFORGE_PORT']}" if "LMFORGE_PORT" in unit.environment else ""
    ctx.term.info(f"  runs {shlex.join(unit.argv)} for home {ctx.paths.home}{port}")
    for line in outcome.done:
        ctx.term.info(f"  {line}")
    if outside:
        ctx.term.warning(f"warning: LMForge already runs here, started by `lmforge start` (supervisord pid {outside}): "
                         f"the service takes over after `lmforge stop` and `{backend.start_command()}` "
                         "(or at the next login)")
    for warning in outcome.warnings:
        ctx.term.warning(f"warning: {warning}")
    return 0


def uninstall(args: argparse.Namespace, ctx: Context) -> int:
    backend = _backend()
    outcome = backend.uninstall()
    if outcome.action == "absent":
        ctx.term.info(f"no LMForge service is installed (nothing at {outcome.path}); nothing to do")
        return 0
    ctx.term.success(f"LMForge service removed ({backend.MANAGER}): {outcome.path}")
    for line in outcome.done:
        ctx.term.info(f"  {line}")
    for warning in outcome.warnings:
        ctx.term.warning(f"warning: {warning}")
    if outcome.error:
        raise CommandError(outcome.error)
    return 0


def status(args: argparse.Namespace, ctx: Context) -> int:
    backend = _backend()
    found: Status = backend.status()
    outside = _outside_pid(ctx, found)
    if args.json:
        ctx.term.json({**found.to_json(), "running_outside_service": outside})
        return 0 if found.installed else 1
    if not found.installed:
        ctx.term.info(f"LMForge service: not installed ({found.manager}; it would be at {found.path}); "
                      "`lmforge service install` installs it")
        return 1
    ctx.term.info(f"LMForge service: installed ({found.manager})")
    ctx.term.info(f"  file:    {found.path}")
    ctx.term.info(f"  enabled: {_yes_no(found.enabled)}")
    pid = f", pid {found.pid}" if found.pid else ""
    ctx.term.info(f"  active:  {_yes_no(found.active)}" + (f" ({found.state}{pid})" if found.state else ""))
    if found.reason:
        ctx.term.warning(f"{found.reason}; {found.hint}")
    for note in found.notes:
        ctx.term.warning(f"note: {note}")
    if outside:
        ctx.term.warning(f"note: LMForge runs outside the service, started by `lmforge start` (supervisord pid "
                         f"{outside}); the service takes over after `lmforge stop` and `{backend.start_command()}`")
    return 0


def _backend() -> ModuleType:
    try:
        return services.backend()
    except UnsupportedPlatform as exc:
        raise CommandError(str(exc)) from None


def _running_outside(ctx: Context, backend: ModuleType) -> int | None:
    """supervisord's pid when this home's LMForge runs, but not as the service."""
    if supervisord.running_pid(ctx.paths) is None:
        return None
    return _outside_pid(ctx, backend.status())


def _outside_pid(ctx: Context, found: Status) -> int | None:
    pid = supervisord.running_pid(ctx.paths)
    if pid is None or found.pid == pid or (found.pid is None and found.active):
        return None  # the service's own (a scheduled task names no pid: its being active says so)
    return pid


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")
