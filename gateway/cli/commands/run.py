"""`lmforge run MODEL [PROMPT]`: a streaming chat in the terminal, or one answer for a prompt."""

from __future__ import annotations

import argparse
import sys

from gateway.cli.client import GatewayError
from gateway.cli.context import CommandError, Context

HELP = "/bye or Ctrl-D ends the chat, /clear forgets the conversation"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="chat with a model (one answer when a prompt is given)")
    p.add_argument("model")
    p.add_argument("prompt", nargs="*", help="answer this and exit")
    p.add_argument("--keep-alive", help='how long the model stays loaded afterwards ("5m", "-1")')
    p.add_argument("--max-tokens", type=int, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    prompt = " ".join(args.prompt)
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    if prompt:
        _answer(ctx, args, [{"role": "user", "content": prompt}])
        return 0
    ctx.term.info(f"chatting with {args.model}; {HELP}")
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
        history.append({"role": "user", "content": line})
        try:
            history.append({"role": "assistant", "content": _answer(ctx, args, history)})
        except KeyboardInterrupt:
            history.pop()
            print()


def _answer(ctx: Context, args: argparse.Namespace, messages: list[dict[str, str]]) -> str:
    """Stream one reply to stdout as it arrives and return it."""
    body: dict[str, object] = {"model": args.model, "messages": messages, "stream": True}
    if args.keep_alive is not None:
        body["keep_alive"] = args.keep_alive
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    parts: list[str] = []
    try:
        for event in ctx.client.stream("/v1/chat/completions", body, timeout=600):
            for choice in event.get("choices", []):
                text = (choice.get("delta") or {}).get("content") or ""
                parts.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
    except GatewayError as exc:
        if any(parts):
            print()  # end the half-written answer's line before the error
        raise CommandError(str(exc)) from None
    print()
    return "".join(parts)
