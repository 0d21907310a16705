"""How much context an engine is started with, and when a request's num_ctx needs a bigger engine.

Pure. An engine whose context holds the ask serves it, however small the ask; only
an ask beyond its context, up to what the model was trained on, is a real change.
Engines therefore only ever grow, and alternating asks cannot swap them back and forth.
"""

from __future__ import annotations

from manager.engines.base import MemoryPlan


def start_ctx(default: int, asked: int, trained: int) -> int:
    """The context an engine starts with: the default, or more when asked, never past the trained one (0: unknown)."""
    wanted = max(default, asked)
    return min(wanted, trained) if trained > 0 else wanted


def outgrown(plan: MemoryPlan, asked: int) -> int | None:
    """The context a new engine needs to hold `asked`, or None when the planned one already holds it."""
    needed = min(asked, plan.ctx_max) if plan.ctx_max > 0 else asked
    return needed if needed > plan.ctx_size else None


def reload_reason(old: int, new: int) -> str:
    return f"context {old} → {new} asked by a request"
