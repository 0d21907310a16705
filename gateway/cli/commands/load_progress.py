"""How `lmforge load` shows a load while POST /lf/model/switch runs: the status stream's `load` and `slot`
events for the model (GET /lf/status/stream), as a bar on a terminal, a line a stage otherwise, nothing
with -q.

The stream is read in a thread of its own and the switch runs in another; both hand what they get to
the main thread through one queue, which draws. The stream is subscribed (its snapshot read) before the
switch is sent, so no stage of the load falls between the two.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Protocol

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from gateway.cli.client import GatewayError
from gateway.cli.context import Context
from gateway.cli.terminal import Terminal

# The status stream pings every 15 s: a read that waits longer than this has lost it.
STREAM_TIMEOUT_S = 60.0
SUBSCRIBE_S = 10.0  # how long the stream's snapshot may take before the load goes on without progress
SETTLE_S = 2.0  # after the switch answers a load, how long the load's last events may take to arrive
PLAIN_STEP = 0.1  # a plain progress line each time the weights' share grew by this much
TEXT = {"waiting": "waiting", "installing_engine": "installing the engine", "resuming": "resuming from parked",
        "spawned": "engine started",
        "loading_weights": "loading weights", "building_context": "building the context", "warming_up": "warming up",
        "ready": "ready", "failed": "failed", "stopped": "stopped"}
ENDS = ("ready", "failed", "stopped")


class View(Protocol):
    def show(self, stage: str, progress: float | None, detail: str) -> None: ...
    def close(self) -> None: ...


def load_with_progress(ctx: Context, body: dict, model: str) -> dict:
    """POST /lf/model/switch with `body` and show the load of `model` (the name it is installed as) as it
    goes; the switch's answer, or its error raised."""
    switch: Callable[[], dict] = lambda: ctx.client.post("/lf/model/switch", body, timeout=ctx.load_timeout_s)
    if ctx.term.verbosity < 0:
        return switch()
    inbox: queue.Queue[tuple[str, object]] = queue.Queue()
    threading.Thread(target=_follow, args=(ctx, inbox), name="status-stream", daemon=True).start()
    view = (BarView if ctx.term.out.is_terminal else PlainView)(ctx.term, model)
    watch = Watch(model, str(body.get("kind") or "chat"), view)
    try:
        _subscribed(inbox, watch)
        threading.Thread(target=_answer, args=(switch, inbox), name="switch", daemon=True).start()
        reply = _until_answered(inbox, watch)
        if isinstance(reply, BaseException):
            raise reply
        if reply.get("load_s"):  # it loaded now: its last stages may still be on their way
            _settle(inbox, watch)
        return reply  # type: ignore[return-value]
    finally:
        view.close()


def _follow(ctx: Context, inbox: queue.Queue) -> None:
    try:
        for name, data in ctx.client.events("/lf/status/stream", None, timeout=STREAM_TIMEOUT_S):
            inbox.put(("event", (name, data)))
    except GatewayError as exc:
        inbox.put(("gone", exc))
    else:
        inbox.put(("gone", None))


def _answer(switch: Callable[[], dict], inbox: queue.Queue) -> None:
    try:
        inbox.put(("answer", switch()))
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
        inbox.put(("answer", exc))


def _subscribed(inbox: queue.Queue, watch: "Watch") -> None:
    """Wait for the stream's snapshot (the stream is subscribed from then on), showing the model's slot in it;
    a stream that fails or stays silent leaves the load to go on without progress."""
    try:
        kind, item = inbox.get(timeout=SUBSCRIBE_S)
    except queue.Empty:
        return
    if kind == "event":
        watch.saw(*item)  # type: ignore[misc]


def _until_answered(inbox: queue.Queue, watch: "Watch") -> object:
    while True:
        kind, item = inbox.get()
        if kind == "answer":
            return item
        if kind == "event":
            watch.saw(*item)  # type: ignore[misc]


def _settle(inbox: queue.Queue, watch: "Watch") -> None:
    """Show the events already on their way until the load's end, for at most SETTLE_S: the manager answers
    the switch before it publishes the load's last stage."""
    while watch.stage not in ENDS:
        try:
            kind, item = inbox.get(timeout=SETTLE_S)
        except queue.Empty:
            return
        if kind != "event":
            return
        watch.saw(*item)  # type: ignore[misc]


class Watch:
    """Picks the events about one model's slot out of the status stream and hands its stages to a view."""

    def __init__(self, model: str, kind: str, view: View) -> None:
        self.model, self.kind, self.view = model, kind, view
        self.stage = ""

    def saw(self, name: str | None, data: dict) -> None:
        if name == "snapshot":
            slot = next((s for s in data.get("slots", ()) if self._ours(s)), None)
            if slot is not None and slot.get("state") in ("pending", "loading"):
                self._slot(slot)
        elif name == "slot" and self._ours(data.get("slot") or {}):
            self._slot(data["slot"])
        elif name == "load" and self._ours(data):
            self._show(data["stage"], data.get("progress"), data.get("detail") or "")

    def _ours(self, data: dict) -> bool:
        return data.get("model") == self.model and data.get("kind") == self.kind

    def _slot(self, slot: dict) -> None:
        """A slot's state says what its stage does not: pending and loading before the engine's first stage,
        and a load's end when no `load` event tells it (an older manager)."""
        state = slot.get("state", "")
        stage = slot.get("load_stage") or state
        if stage in TEXT and (state != "loading" or self.stage in ("", "waiting")):
            self._show(stage, slot.get("load_progress"), slot.get("detail") or "")

    def _show(self, stage: str, progress: float | None, detail: str) -> None:
        self.stage = stage
        self.view.show(stage, progress, detail)


class PlainView:
    """Lines for a pipe or a log: each stage once, and the weights' share each time it grew by PLAIN_STEP.
    Ready is the command's own last line."""

    def __init__(self, term: Terminal, model: str) -> None:
        self.term, self.model = term, model
        self.stage, self.shown = "", 0.0

    def show(self, stage: str, progress: float | None, detail: str) -> None:
        if stage == "ready":
            self.stage = stage
        elif stage != self.stage:
            self.stage, self.shown = stage, progress or 0.0
            share = f" {progress:.0%}" if progress is not None else ""
            self.term.info(f"{self.model}: {TEXT.get(stage, stage)}{share}" + (f" ({detail})" if detail else ""))
        elif progress is not None and progress >= self.shown + PLAIN_STEP:
            self.shown = progress
            self.term.info(f"{self.model}: {TEXT.get(stage, stage)} {progress:.0%}")

    def close(self) -> None:
        pass


class BarView:
    """On a terminal: one bar, its text the stage. It pulses until the weights' share is known, fills with it,
    and stays where the weights left it through the stages after them."""

    def __init__(self, term: Terminal, model: str) -> None:
        self.model = model
        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                                 TimeElapsedColumn(), console=term.out)
        self.task = self.progress.add_task(f"{model}: starting", total=None)
        self.progress.start()
        self._open = True

    def show(self, stage: str, progress: float | None, detail: str) -> None:
        why = f" ({detail})" if detail and stage in ("waiting", "failed") else ""
        self.progress.update(self.task, description=f"{self.model}: {TEXT.get(stage, stage)}{why}")
        if stage == "ready":
            progress = 1.0
        if progress is not None:
            self.progress.update(self.task, total=1.0, completed=progress)

    def close(self) -> None:
        if self._open:
            self.progress.stop()
            self._open = False
