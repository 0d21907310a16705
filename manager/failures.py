"""FailureBook: load and crash failures per (model, kind) for backoff, and per label for /lf/status."""

from __future__ import annotations

from dataclasses import dataclass

from manager.protocol import LoadError, Severity
from manager.slots import SlotKey

FAILURE_WINDOW_S = 300.0  # failures further apart than this start a new count
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 60.0  # a slot ready this long clears its failure count
MAX_ERRORS = 16


@dataclass
class Failures:
    count: int
    last_at: float  # monotonic
    message: str = ""


class FailureBook:
    """Owned by the slot table; times come from its clock."""

    def __init__(self) -> None:
        self.counts: dict[SlotKey, Failures] = {}
        self.last_errors: dict[str, LoadError] = {}

    def record(self, key: SlotKey, label: str, message: str, severity: Severity, tail: str,
               mono: float, wall: float) -> LoadError:
        rec = self.counts.get(key)
        if rec is None or mono - rec.last_at > FAILURE_WINDOW_S:
            rec = self.counts[key] = Failures(0, mono)
        rec.count, rec.last_at, rec.message = rec.count + 1, mono, message
        error = LoadError(at=wall, message=message, severity=severity, stderr_tail=tail, count=rec.count)
        self.last_errors[label] = error
        while len(self.last_errors) > MAX_ERRORS:
            self.last_errors.pop(min(self.last_errors, key=lambda k: self.last_errors[k].at))
        return error

    def backoff_left(self, key: SlotKey, mono: float) -> float:
        rec = self.counts.get(key)
        if rec is None or rec.count < 2:
            return 0.0
        delay = min(BACKOFF_BASE_S * 2 ** (rec.count - 2), BACKOFF_MAX_S)
        return max(0.0, rec.last_at + delay - mono)

    def loaded(self, label: str) -> None:
        """A good load clears what /lf/status shows; the count clears once the slot is stable."""
        self.last_errors.pop(label, None)

    def stable(self, key: SlotKey) -> None:
        self.counts.pop(key, None)
