"""Ollama's keep_alive: how long a model stays loaded after a request ends.

A duration string ("5m", "1h30m", "0.5s"), a number of seconds, 0 (unload as soon
as the request ends) or a negative value (stay until evicted or unloaded).
"""

from __future__ import annotations

import math
import re

FOREVER = None  # the parsed value of a negative keep_alive

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


class KeepAliveError(ValueError):
    pass


def parse_keep_alive(value: str | float | int | None) -> float | None:
    """Seconds to stay loaded after a request; None means forever."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise KeepAliveError(f"keep_alive must be a duration or a number, not {value!r}")
    if isinstance(value, (int, float)):
        return _from_seconds(float(value))
    text = value.strip()
    try:
        return _from_seconds(float(text))
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise KeepAliveError(
            f"keep_alive {value!r} is not a duration: use e.g. \"30s\", \"5m\", \"1h30m\", "
            "a number of seconds, 0 to unload after the request, or -1 to keep loaded"
        )
    return _from_seconds(sign * sum(float(n) * _UNITS[u] for n, u in parts))


def _from_seconds(seconds: float) -> float | None:
    if math.isnan(seconds):
        raise KeepAliveError("keep_alive must be a number, not NaN")
    if seconds < 0 or math.isinf(seconds):
        return FOREVER
    return seconds


def describe(seconds: float | None) -> str:
    if seconds is FOREVER:
        return "forever"
    if seconds == 0:
        return "unload after request"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n) or "0s"
