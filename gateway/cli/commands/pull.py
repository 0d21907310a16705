"""`lmforge pull|catalog|rm`: fetch a model with its progress, list what the catalog offers, delete a model.

A pull is the gateway's (POST /lf/model/pull, followed as SSE): on a terminal a bar
per file, in a pipe a line now and then, nothing with -q. Ctrl-C hangs up: the
gateway cancels the pull when no other client follows it; its verified bytes stay,
so the same pull resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Protocol
from urllib.parse import quote

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from gateway.cli.client import ApiError
from gateway.cli.commands.models import _gateway_or_here, installed_here, no_manager_runs
from gateway.cli.context import CommandError, Context
from gateway.cli.terminal import Terminal

KINDS = ("chat", "embedding", "vision", "rerank")
# The gateway pings a silent pull stream every 15 s: a read that waits longer than this has lost it.
STREAM_TIMEOUT_S = 60.0
PLAIN_EVERY_S = 2.0  # at most one progress line per file this often when not on a terminal
FINISHED = ("done", "present")
GB = 1000**3
GiB = 1024**3
STATES = {"queued": "queued: waiting for a free download slot", "resolving": "resolving {model}",
          "indexing": "indexing {model}"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help="download a model (a catalog name, or owner/repo[:quant] on Hugging Face)")
    p.add_argument("model", help="e.g. qwen3:8b:4bit, or unsloth/Qwen3-8B-GGUF:Q4_K_M")
    p.add_argument("--json", action="store_true", help="one JSON object a line per progress event")
    p.set_defaults(func=pull)
    p = sub.add_parser("catalog", help="models `lmforge pull` knows by name, and which fit this machine")
    p.add_argument("--kind", choices=KINDS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=catalog)
    p = sub.add_parser("rm", help="unload and delete an installed model")
    p.add_argument("model")
    p.set_defaults(func=rm)


# --- pull ---


class View(Protocol):
    def show(self, event: str | None, data: dict) -> None: ...
    def close(self) -> None: ...


def pull(args: argparse.Namespace, ctx: Context) -> int:
    pull_with_progress(ctx, args.model, as_json=args.json)
    return 0


def pull_with_progress(ctx: Context, model: str, *, as_json: bool = False) -> None:
    """Pull `model` through the gateway, showing its progress; CommandError when it fails. Ctrl-C hangs up
    (the gateway cancels the pull when no other client follows it) and is raised again (exit 130)."""
    view = _view(ctx.term, as_json)
    last: dict = {}
    events = ctx.client.events("/lf/model/pull", {"model": model}, timeout=STREAM_TIMEOUT_S)
    try:
        for event, data in events:
            if event == "download":
                last = data  # before it is shown: a Ctrl-C just after the line reports what the line said
            view.show(event, data)
            if event == "done":
                view.close()
                if not as_json:
                    ctx.term.success(done_line(data.get("model") or {}, last))
                return
            elif event == "error":
                error = data.get("error") or {}
                raise CommandError(error.get("message") or f"the pull of {model} failed")
    except KeyboardInterrupt:
        events.close()
        view.close()
        ctx.term.warning(left_line(last))
        raise
    finally:
        events.close()
        view.close()
    raise CommandError(f"the pull of {model} ended without a result; run the same pull to resume")


def left_line(last: dict) -> str:
    """What hanging up did to the pull, by the last state this client saw: the manager cancels a pull when its
    last follower leaves, except one being indexed (its files are in place by then)."""
    others = max(0, (last.get("followers") or 1) - 1)
    if others:
        return f"stopped; the pull goes on for {others} other client{'s' if others != 1 else ''}"
    if last.get("state") == "indexing":
        return "stopped; the pull was being indexed and finishes anyway"
    return "cancelled; run the same pull to resume"


def done_line(entry: dict, last: dict) -> str:
    files = len(entry.get("files") or ()) or len(last.get("files") or ()) or 1
    size = entry.get("size_bytes") or last.get("total_bytes") or 0
    return f"done: {entry.get('name') or last.get('name') or last.get('model')} " \
           f"({files} file{'s' if files != 1 else ''}, {size / GB:.2f} GB)"


def _view(term: Terminal, as_json: bool) -> View:
    if as_json:
        return JsonView()
    if term.verbosity < 0:
        return QuietView()
    return BarView(term) if term.out.is_terminal else PlainView(term)


class QuietView:
    def show(self, event: str | None, data: dict) -> None:
        pass

    def close(self) -> None:
        pass


class JsonView(QuietView):
    def show(self, event: str | None, data: dict) -> None:
        print(json.dumps({"event": event, **data}), flush=True)


class PlainView(QuietView):
    """Lines for a pipe or a log: each state once, and a file's progress at most every PLAIN_EVERY_S."""

    def __init__(self, term: Terminal, clock: Callable[[], float] = time.monotonic) -> None:
        self.term, self.clock = term, clock
        self._said: set[str] = set()
        self._printed: dict[str, tuple[int, float]] = {}  # file -> (bytes done, when) at its last line

    def show(self, event: str | None, data: dict) -> None:
        if event != "download":
            return
        self._once(data["state"], STATES.get(data["state"], "").format(model=data["model"]))
        now = self.clock()
        for file in data.get("files", ()):
            path, size, done, state = file["path"], file["size"], file["done"], file["state"]
            if state == "present":
                self._once(f"present:{path}", f"present {path} (already in the store)")
            elif state == "done":
                self._once(f"done:{path}", f"verified {path} ({size / GB:.2f} GB)")
            elif state == "downloading":
                seen = self._printed.get(path)
                if seen is not None and (now - seen[1] < PLAIN_EVERY_S or done == seen[0]):
                    continue
                speed = (done - seen[0]) / (now - seen[1]) if seen else data.get("bytes_per_s", 0.0)
                self._printed[path] = (done, now)
                percent = int(100 * done / size) if size else 0
                self.term.info(f"pulling {path} {percent}% {speed / 1e6:.1f} MB/s")

    def _once(self, key: str, line: str) -> None:
        if line and key not in self._said:
            self._said.add(key)
            self.term.info(line)


class BarView(QuietView):
    """On a terminal: a bar per file with bytes, speed and time left; files already present show as done."""

    def __init__(self, term: Terminal) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=term.out)
        self._tasks: dict[str, TaskID] = {}
        self._status: TaskID | None = None
        self._open = False

    def show(self, event: str | None, data: dict) -> None:
        if event != "download":
            return
        if not self._open:
            self.progress.start()
            self._open = True
        files = data.get("files") or ()
        status = STATES.get(data["state"], "").format(model=data["model"])
        if not files and status:
            if self._status is None:
                self._status = self.progress.add_task(status, total=None)
            self.progress.update(self._status, description=status)
        elif self._status is not None:
            self.progress.remove_task(self._status)
            self._status = None
        verified = data["state"] in ("indexing", "done")  # every file is in place by then
        for file in files:
            path, size = file["path"], file["size"]
            done = size if verified or file["state"] in FINISHED else file["done"]
            label = f"{path} (present)" if file["state"] == "present" else path
            if path not in self._tasks:  # started at what it has: a resumed file's bytes are no burst of speed
                self._tasks[path] = self.progress.add_task(label, total=size or None, completed=done)
            self.progress.update(self._tasks[path], completed=done, description=label)

    def close(self) -> None:
        if self._open:
            self.progress.stop()
            self._open = False


# --- catalog ---


def catalog(args: argparse.Namespace, ctx: Context) -> int:
    path = "/lf/catalog" + (f"?kind={args.kind}" if args.kind else "")
    listing = _gateway_or_here(lambda: ctx.client.get(path), lambda: _catalog_here(ctx, args.kind))
    if args.json:
        ctx.term.json(listing)
        return 0
    budget = listing.get("budget_bytes") or 0
    title = (f"catalog (memory budget {budget / GiB:.1f} GiB)" if budget
             else "catalog (memory budget unknown: LMForge is not running)")
    ctx.term.table(
        ["NAME", "KIND", "SIZE", "FITS", "INSTALLED", "DESCRIPTION"],
        [[m["name"], m["kind"], _default_size(m), {True: "✓", False: "✗"}.get(m["fits"], "?"),
          "✓" if m["installed"] else "", m["description"]] for m in listing["models"]],
        title=title,
    )
    return 0


def _default_size(model: dict) -> str:
    size = next((q["size_bytes"] for q in model["quants"] if q["quant"] == model["default_quant"]), 0)
    return f"{size / GB:.1f} GB" if size else "-"


def _catalog_here(ctx: Context, kind: str | None) -> dict:
    """The listing read here while LMForge is not running: the same entries, without a memory budget."""
    from catalog.entries import CatalogError, load_catalog
    from catalog.store import ModelStore, StoreError
    from gateway.api.native.pulls import catalog_listing

    try:
        return catalog_listing(load_catalog(ctx.paths.home), ModelStore(ctx.paths).list(), 0, kind)
    except (CatalogError, StoreError) as exc:  # a broken override in <home>/catalog, or a broken index
        raise CommandError(str(exc)) from None


# --- rm ---


def rm(args: argparse.Namespace, ctx: Context) -> int:
    """Through the gateway, which unloads the model first; while LMForge is not running, on the store here."""
    name = args.model
    try:
        reply = _gateway_or_here(lambda: ctx.client.delete(f"/lf/model/delete/{quote(name, safe=':/+')}"),
                                 lambda: _rm_here(ctx, name))
    except ApiError as exc:
        if exc.status == 404:
            raise CommandError(f"model {name} is not installed (`lmforge list` shows what is)") from None
        raise
    ctx.term.success(f"deleted {reply.get('model') or name}")
    return 0


def _rm_here(ctx: Context, name: str) -> dict:
    from catalog.store import ModelNotFound, ModelStore, StoreError

    no_manager_runs(ctx, f"delete {name}")
    try:
        gone = ModelStore(ctx.paths).remove(installed_here(ctx, name))
    except ModelNotFound:
        raise CommandError(f"model {name} is not installed (`lmforge list` shows what is)") from None
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    return {"status": "deleted", "model": gone.name}

