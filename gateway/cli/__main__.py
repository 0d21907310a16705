"""The `lmforge` command: the CLI beside the server, talking to the gateway over HTTP."""

from __future__ import annotations

import argparse
import sys

from gateway.cli.client import GatewayDown
from gateway.cli.commands import engine, models, run, service
from gateway.cli.context import CommandError, Context
from gateway.cli.terminal import Terminal
from manager.config import ConfigError, load_settings

COMMANDS = (service, models, run, engine)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmforge", description="Run several local LLMs behind one API.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more output (repeatable)")
    p.add_argument("-q", "--quiet", action="count", default=0, help="less output (repeatable)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # usage errors exit with status 2
    term = Terminal(args.verbose - args.quiet)
    try:
        settings, paths = load_settings()
        return int(args.func(args, Context(term, settings, paths)))
    except (CommandError, ConfigError, GatewayDown) as exc:
        term.error(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
