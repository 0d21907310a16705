"""The `lmforge` command: the CLI beside the server, talking to the gateway over HTTP.

Owns the exit contract: 0 done, 1 an error (one line on stderr), 2 a usage error, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import NoReturn

from gateway.cli.client import GatewayError
from gateway.cli.commands import autostart, config, doctor, engine, launch, logs, models, pull, run, service
from gateway.cli.context import CommandError, Context
from gateway.cli.terminal import Terminal, one_line
from manager.config import ConfigError, Paths, Settings, effective, home_dir, load_settings

COMMANDS = (service, autostart, models, pull, run, launch, engine, logs, config, doctor)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {one_line(message)} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="lmforge", description="Run several local LLMs behind one API.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more output (repeatable)")
    p.add_argument("-q", "--quiet", action="count", default=0, help="less output (repeatable)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")  # subparsers are Parsers too
    for module in COMMANDS:
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # usage errors exit with status 2
    term = Terminal(args.verbose - args.quiet)
    try:
        settings, paths = _settings(args.command)
        return int(args.func(args, Context(term, settings, paths)))
    except (CommandError, ConfigError, GatewayError) as exc:
        term.error(f"error: {exc}")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout was closed early (`lmforge list | head -1`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:  # the home or a file in it could not be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        term.error(f"error: {where}{exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - the backstop: a bug, but still one line
        if term.verbosity >= 1:
            traceback.print_exc()
        term.error(f"error: unexpected {type(exc).__name__}: {exc} (a bug in lmforge; -v shows the traceback)")
    return 1


def _settings(command: str) -> tuple[Settings, Paths]:
    try:
        return load_settings()
    except ConfigError:
        if command != "config":
            raise
        # `lmforge config edit` (or set) is how a broken config.toml gets fixed: it must run in spite of it,
        # with the environment's port and key, to reach the LMForge that runs.
        return effective(Settings(), home_dir()), Paths(home_dir())


if __name__ == "__main__":
    sys.exit(main())
