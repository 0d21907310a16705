"""Ollama's timestamps: RFC 3339 in UTC with nanoseconds, as Go writes time.Time."""

from __future__ import annotations

import time

NS = 1_000_000_000
# Ollama's expiry for a model kept forever: now plus Go's largest duration (about 292 years).
FOREVER_S = (2**63 - 1) / NS


class _Clock:
    """`created_at` for every frame of a stream, cheap: the date part is formatted once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def now(self) -> str:
        second, fraction = divmod(time.time_ns(), NS)
        if second != self.second:
            self.second, self.prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{fraction:09d}Z"


now = _Clock().now


def rfc3339(seconds: float) -> str:
    """An epoch time (index dates, expiries) as Ollama writes it."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * NS):09d}Z"
