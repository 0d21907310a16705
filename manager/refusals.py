"""Why a request may not have a new slot for its model: the code and a message that says what to do next."""

from __future__ import annotations

from typing import NamedTuple

from manager.failures import FailureBook
from manager.protocol import PROTOCOL, BudgetInfo, ErrorCode, ModelEntry, SlotKind
from manager.scheduler import fmt_bytes
from prober.engine_choice import Choice


class Refusal(NamedTuple):
    code: ErrorCode
    message: str
    retry_after_s: float | None = None


def refuse_new_slot(model: str, kind: SlotKind, entry: ModelEntry | None, choice: Choice | None,
                    failures: FailureBook, mono: float) -> Refusal | None:
    """None when a slot may be created: the model is installed, serves `kind` on an engine here (`choice`), and is
    not backing off."""
    if entry is None:
        return Refusal(ErrorCode.MODEL_NOT_FOUND, f"model {model!r} is not installed; `lmforge list` shows what "
                       "is, `lmforge import FILE.gguf --name NAME` adds one")
    if kind not in entry.kinds:
        can = ", ".join(entry.kinds) or "nothing"
        return Refusal(ErrorCode.NOT_SUPPORTED, f"model {model!r} cannot serve {kind}; it serves: {can}")
    if choice is not None and not choice.engine:
        return Refusal(ErrorCode.NOT_SUPPORTED, f"model {model!r} cannot be served as {kind} here: {choice.reason}")
    if (left := failures.backoff_left((model, kind), mono)) > 0:
        rec = failures.counts[(model, kind)]
        return Refusal(ErrorCode.BACKING_OFF, f"{model} failed {rec.count} times in a row (last: {rec.message}); "
                       f"next attempt allowed in {left:.0f}s", left)
    return None


def waited_too_long(label: str, need: int, budget: BudgetInfo, reason: str, timeout_s: float) -> str:
    """Why a load that waited `drain_timeout_s` for room is refused: what it needs, what is free, what it waited for."""
    return (f"cannot load {label}: it needs {fmt_bytes(need)} and {fmt_bytes(budget.free_bytes)} of "
            f"{fmt_bytes(budget.total_bytes)} is free; still {reason} after {timeout_s:.0f}s (drain_timeout_s)")


def protocol_mismatch(theirs: int) -> str:
    return f"peer speaks protocol {theirs}, manager {PROTOCOL}: restart LMForge so every process runs the same version"
