"""`lmforge logs [NAME] [-n N] [-f] [--json]`: the logs of LMForge's processes and engines, through the gateway.

Without NAME, the list; with it, its last lines; with -f, then every line written to it until Ctrl-C (130) or
until the gateway goes away (1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from urllib.parse import quote

from gateway.cli.context import CommandError, Context

DEFAULT_LINES = 50
# The gateway pings a quiet log stream every 15 s: a read that waits longer than this has lost it.
STREAM_TIMEOUT_S = 60.0
KiB = 1024


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("logs", help="list LMForge's logs, or show one (-f follows it)")
    p.add_argument("name", nargs="?", help="a log from the list, e.g. manager, gateway or engine-<model>-chat")
    p.add_argument("-n", "--lines", type=int, default=DEFAULT_LINES, metavar="N",
                   help=f"how many of its last lines to show (default {DEFAULT_LINES}; 0 with -f: none)")
    p.add_argument("-f", "--follow", action="store_true", help="keep showing lines as they are written")
    p.add_argument("--json", action="store_true", help="the list as JSON; a log's lines as one JSON object each")
    p.set_defaults(func=logs, usage_error=p.error)


def logs(args: argparse.Namespace, ctx: Context) -> int:
    if args.name is None:
        if args.follow:
            args.usage_error("-f/--follow needs the NAME of a log (`lmforge logs` lists them)")
        return list_logs(args, ctx)
    lowest = 0 if args.follow else 1
    if not lowest <= args.lines <= 5000:
        args.usage_error(f"-n/--lines must be from {lowest} to 5000")
    if args.follow:
        return follow(args, ctx)
    text = ctx.client.text(f"/lf/logs/{quote(args.name, safe='')}?lines={args.lines}")
    for line in text.splitlines():
        _print(line, args.json)
    return 0


def list_logs(args: argparse.Namespace, ctx: Context) -> int:
    found = ctx.client.get("/lf/logs")["logs"]
    if args.json:
        ctx.term.json(found)
        return 0
    if not found:
        ctx.term.info("no logs yet")
        return 0
    ctx.term.table(["NAME", "KIND", "SIZE", "MODIFIED"],
                   [[log["name"], log["kind"], _size(log["size_bytes"]) + _backups(log.get("backups", 0)),
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(log["modified_at"]))] for log in found])
    return 0


def follow(args: argparse.Namespace, ctx: Context) -> int:
    """Print lines as the gateway streams them; the stream ending means the gateway went away (stopped or
    restarting), which is an error: the log did not end."""
    path = f"/lf/logs/{quote(args.name, safe='')}/stream?lines={args.lines}"
    events = ctx.client.events(path, None, timeout=STREAM_TIMEOUT_S)
    try:
        for _, data in events:
            _print(data.get("line", ""), args.json)
    finally:
        events.close()
    raise CommandError(f"the gateway ended the stream of {args.name} (LMForge stopped or restarted); "
                       "`lmforge status` tells which")


def _print(line: str, as_json: bool) -> None:
    # Not through rich: a log line is printed as it was written, and at once (a pipe must see it now).
    sys.stdout.write((json.dumps({"line": line}) if as_json else line) + "\n")
    sys.stdout.flush()


def _size(n: int) -> str:
    if n < KiB:
        return f"{n} B"
    return f"{n / KiB:.1f} KiB" if n < KiB * KiB else f"{n / KiB / KiB:.1f} MiB"


def _backups(n: int) -> str:
    return f" (+{n} rotated)" if n else ""
