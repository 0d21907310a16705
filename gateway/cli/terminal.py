"""Terminal: the one rich Console behind every CLI message, with counted -v/-q and --json."""

from __future__ import annotations

import json
import sys
from typing import Iterable, Sequence

from rich.console import Console
from rich.table import Table


class Terminal:
    def __init__(self, verbosity: int = 0) -> None:
        self.verbosity = verbosity
        # Piped output keeps whole lines (rich would wrap tables at 80 columns).
        width = None if sys.stdout.isatty() else 240
        # No markup or emoji codes: model names and server messages are printed as they are.
        self.out = Console(highlight=False, markup=False, emoji=False, soft_wrap=True, width=width)
        self.err = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True, width=width)

    @property
    def interactive(self) -> bool:
        return self.out.is_terminal and sys.stdin.isatty()

    def info(self, message: str) -> None:
        if self.verbosity >= 0:
            self.out.print(message)

    def detail(self, message: str) -> None:
        if self.verbosity >= 1:
            self.err.print(message, style="dim")

    def success(self, message: str) -> None:
        if self.verbosity >= 0:
            self.out.print(message, style="green")

    def warning(self, message: str) -> None:
        if self.verbosity >= -1:
            self.err.print(message, style="yellow")

    def error(self, message: str) -> None:
        """One line, always: a message from the server or an engine may hold newlines."""
        self.err.print(one_line(message), style="bold red")

    def json(self, data: object) -> None:
        self.out.print_json(json.dumps(data)) if self.out.is_terminal else print(json.dumps(data))

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None) -> None:
        table = Table(title=title, title_justify="left", box=None, header_style="bold")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        self.out.print(table)


def one_line(message: str) -> str:
    return " ".join(message.split())
