"""`lmforge list|ps|import|load|unload`: installed and loaded models."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, TypeVar

import msgspec

from catalog.gguf_info import GGUFError
from catalog.store import ModelStore, StoreError
from gateway.cli.client import ApiError, GatewayDown
from gateway.cli.commands.load_progress import load_with_progress
from gateway.cli.context import CommandError, Context
from manager.keepalive import describe
from manager.protocol import IMPORT_TIMEOUT_S

GiB = 1024**3
T = TypeVar("T")


def add_parser(sub: argparse._SubParsersAction) -> None:
    for name in ("list", "models"):
        p = sub.add_parser(name, help="installed models")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=list_models)
    p = sub.add_parser("ps", help="loaded models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=ps)
    p = sub.add_parser("import", help="add a local GGUF file to the model store")
    p.add_argument("file", type=Path)
    p.add_argument("--name", required=True, help="the name to serve it under, e.g. mymodel:7b")
    p.add_argument("--mmproj", type=Path, help="its vision projector (an mmproj GGUF): the model then sees images")
    p.set_defaults(func=import_model)
    p = sub.add_parser("load", help="load a model and keep it warm")
    p.add_argument("model")
    p.add_argument("--pin", action="store_true", help="evict it last and never let it expire")
    p.add_argument("--keep-alive", help='how long it stays after its last request ("5m", "-1" = forever)')
    p.add_argument("--kind", choices=["chat", "embed", "rerank"], default="chat")
    p.set_defaults(func=load)
    p = sub.add_parser("unload", help="unload one model, or all with --all")
    p.add_argument("model", nargs="?")
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=unload)


def _gateway_or_here(ask: Callable[[], T], here: Callable[[], T]) -> T:
    """`ask` the gateway; with LMForge (or its manager) not answering, do it `here`, on the store itself (a
    `here` that writes checks first that no manager runs: see no_manager_runs)."""
    try:
        return ask()
    except GatewayDown:
        return here()
    except ApiError as exc:
        if exc.code != "manager_unavailable":
            raise
        return here()


def list_models(args: argparse.Namespace, ctx: Context) -> int:
    models = _gateway_or_here(lambda: ctx.client.get("/lf/model/list")["models"], lambda: _installed(ctx))
    if args.json:
        ctx.term.json(models)
        return 0
    if not models:
        ctx.term.info("no models installed; `lmforge pull NAME` downloads one (`lmforge catalog` lists them), "
                      "`lmforge run` fetches the default model, `lmforge import FILE.gguf --name NAME` adds a file")
        return 0
    ctx.term.table(
        ["NAME", "SIZE", "ARCH", "QUANT", "CONTEXT", "SERVES", "ADDED"],
        [[m["name"], f"{m['size_bytes'] / GiB:.2f} GiB", m["architecture"], m["quantization"], m["context_length"],
          ",".join(m["kinds"]), time.strftime("%Y-%m-%d %H:%M", time.localtime(m["added_at"]))] for m in models],
    )
    return 0


def no_manager_runs(ctx: Context, doing: str) -> None:
    """CommandError unless nothing of LMForge runs for this home that could hold the store's files or write
    its index: a gateway that does not answer may sit beside a manager that still runs engines."""
    from deploy.orphans import find_programs
    from deploy.supervisord import running_pid

    pid = running_pid(ctx.paths)
    manager = next((f.pid for f in find_programs(ctx.paths) if f.name == "manager"), None)
    if pid is not None or manager is not None:
        who = f"supervisord (pid {pid})" if pid is not None else f"its manager (pid {manager})"
        raise CommandError(f"cannot {doing}: the gateway does not answer, but {who} still runs for "
                           f"{ctx.paths.home}; wait for `lmforge status` to answer, or `lmforge stop` first")


def installed_here(ctx: Context, name: str) -> str:
    """The name the store knows the model `name` by, as the gateway would find it (a short name becomes the
    installed one); `name` itself when nothing answers to it."""
    from gateway.dataplane.gates import find_in

    try:
        entry, _ = find_in(ModelStore(ctx.paths), ctx.paths.home, name)
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    return entry.name if entry is not None else name


def _installed(ctx: Context) -> list[dict]:
    try:
        return [msgspec.to_builtins(m) for m in ModelStore(ctx.paths).list()]
    except StoreError as exc:
        raise CommandError(str(exc)) from None


def ps(args: argparse.Namespace, ctx: Context) -> int:
    state = ctx.client.get("/lf/status")
    if args.json:
        ctx.term.json(state["slots"])
        return 0
    print_slots(ctx, state)
    return 0


def print_slots(ctx: Context, state: dict) -> None:
    slots = state["slots"]
    if not slots:
        ctx.term.info("no models loaded")
    else:
        ctx.term.table(
            ["MODEL", "KIND", "ENGINE", "STATE", "PID", "PORT", "THREADS", "IN FLIGHT", "IDLE", "UNLOADS IN",
             "ESTIMATE", "MEASURED", "CHARGED"],
            [[s["model"], s["kind"], s["engine"], _state(s), s["pid"], s["port"], s.get("threads") or "-",
              s["inflight"],
              f"{s['idle_s']:.0f}s", _until(s), _gib(s["estimate_bytes"]), _gib(s.get("measured_bytes")),
              _gib(s.get("charged_bytes"))]
             for s in slots],
        )
    for model, err in state.get("last_errors", {}).items():
        ctx.term.warning(f"last error, {model}: {err['message']} ({err['severity']}, x{err['count']})")


def _state(slot: dict) -> str:
    marks = [mark for mark in ("pinned", "adopted") if slot.get(mark)]
    return slot["state"] + (f" ({', '.join(marks)})" if marks else "")


def _until(slot: dict) -> str:
    if slot["state"] != "ready":
        return "-"
    if slot["expires_in_s"] is None:
        return "in use" if slot["inflight"] else "never"
    return describe(max(0.0, slot["expires_in_s"]))


def _gib(n: int | None) -> str:
    return "-" if not n else f"{n / GiB:.2f} GiB"


def import_model(args: argparse.Namespace, ctx: Context) -> int:
    """Through the gateway, so that the manager, the index's one writer, makes the change."""
    path, mmproj = args.file.expanduser().absolute(), args.mmproj and args.mmproj.expanduser().absolute()
    body = {"path": str(path), "name": args.name, "mmproj": str(mmproj or "")}
    entry = _gateway_or_here(lambda: ctx.client.post("/lf/model/import", body, timeout=IMPORT_TIMEOUT_S)["model"],
                             lambda: _import_here(ctx, path, args.name, mmproj))
    serves = [*entry["kinds"], *(["vision"] if entry.get("vision") else [])]
    ctx.term.success(f"imported {entry['name']} ({entry['size_bytes'] / GiB:.2f} GiB, {entry['architecture']} "
                     f"{entry['quantization']}, serves {', '.join(serves)})")
    return 0


def _import_here(ctx: Context, path: Path, name: str, mmproj: Path | None) -> dict:
    no_manager_runs(ctx, f"import {name}")
    try:
        return msgspec.to_builtins(ModelStore(ctx.paths).import_gguf(path, name, mmproj=mmproj))
    except (StoreError, GGUFError) as exc:
        raise CommandError(str(exc)) from None


def load(args: argparse.Namespace, ctx: Context) -> int:
    body = {"model": args.model, "pin": args.pin, "kind": args.kind}
    if args.keep_alive is not None:
        body["keep_alive"] = args.keep_alive
    reply = load_with_progress(ctx, body, _installed_as(ctx, args.model))
    ctx.term.success(f"{reply['model']} is ready (pid {reply['slot']['pid']}, loaded in {reply['load_s']:.2f}s)")
    return 0


def _installed_as(ctx: Context, name: str) -> str:
    """The name the gateway loads `name` as (a short name: the model chat with it uses), to follow its load by;
    `name` itself when the store here cannot say."""
    try:
        return installed_here(ctx, name)
    except CommandError:
        return name


def unload(args: argparse.Namespace, ctx: Context) -> int:
    if not args.model and not args.all:
        raise CommandError("name a model to unload, or pass --all")
    body = {} if args.all else {"model": args.model}
    reply = ctx.client.post("/lf/model/unload", body)
    names = reply["unloaded"]
    ctx.term.success(f"unloading {', '.join(names)}" if names else "nothing was loaded")
    return 0
