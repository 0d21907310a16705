"""`lmforge launch AGENT`: a coding agent started on a model LMForge loaded for it, pointed at LMForge's API.

Owns each agent's wiring (environment, arguments, config file), as `ollama launch` does; loading
goes through /lf/model/switch like `lmforge load`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from catalog.store import write_atomic
from gateway.cli.client import ApiError, GatewayError
from gateway.cli.context import CommandError, Context

# Agents read whole files and keep long tool transcripts: 64k tokens is what
# `ollama launch` recommends too. The model's own trained context caps it.
AGENT_CTX = 65536
MIN_CTX = 256
# Agents compact their history before it fills the window; at 80% there is room left for the answer.
COMPACT_AT = 0.8
KEY_ENV = "LMFORGE_API_KEY"
# LMForge on loopback asks for no key, but every agent insists on sending one.
PLACEHOLDER_KEY = "lmforge"
PROVIDER = "lmforge"


@dataclass(frozen=True)
class Target:
    """What an agent is pointed at: the gateway, the loaded model and the context it holds."""

    base_url: str  # http://127.0.0.1:PORT, without /v1
    model: str
    ctx: int
    key: str
    config_dir: Path  # where generated agent config files go


@dataclass(frozen=True)
class Wiring:
    env: dict[str, str]
    args: list[str]  # before the user's own, so that theirs win where the agent takes the last one
    files: dict[Path, str] = field(default_factory=dict)  # written before the agent starts


def claude_wiring(t: Target) -> Wiring:
    """Claude Code speaks /v1/messages; every model tier it picks from goes to the one loaded model.

    The key travels as a Bearer token with ANTHROPIC_API_KEY emptied, as `ollama launch` does:
    a set ANTHROPIC_API_KEY would override the user's login and make Claude Code ask to approve it.
    """
    env = {"ANTHROPIC_BASE_URL": t.base_url, "ANTHROPIC_AUTH_TOKEN": t.key, "ANTHROPIC_API_KEY": ""}
    for name in ("ANTHROPIC_MODEL", "ANTHROPIC_SMALL_FAST_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL",
                 "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL"):
        env[name] = t.model
    # Claude Code assumes a 200k window for a model it does not know; it would compact far too late.
    env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] = str(t.ctx)
    return Wiring(env=env, args=[])


def codex_wiring(t: Target) -> Wiring:
    """Codex speaks the Responses API; an `lmforge` provider is added with `-c` (TOML values).

    Root-level `-c` overrides reach every Codex subcommand (`codex exec` too), and the user's
    config.toml is left alone. The key is read from the variable that `env_key` names.
    """
    provider = {"name": "LMForge", "base_url": f"{t.base_url}/v1", "env_key": KEY_ENV, "wire_api": "responses"}
    overrides = {
        "model_provider": _toml(PROVIDER),
        f"model_providers.{PROVIDER}": "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in provider.items()) + "}",
        "model": _toml(t.model),
        # Codex assumes a 272k window for models it does not know.
        "model_context_window": str(t.ctx),
        "model_auto_compact_token_limit": str(int(t.ctx * COMPACT_AT)),
    }
    args = [part for key, value in overrides.items() for part in ("-c", f"{key}={value}")]
    return Wiring(env={KEY_ENV: t.key}, args=args)


def opencode_wiring(t: Target) -> Wiring:
    """opencode takes an extra config file from OPENCODE_CONFIG, merged over the user's own.

    The key stays out of the file: opencode substitutes `{env:VAR}` when it reads it.
    A model without a `limit` gets context 0 in opencode, which turns its compaction off.
    """
    model = {"name": t.model, "limit": {"context": t.ctx, "output": int(t.ctx * (1 - COMPACT_AT))}}
    config = {
        "$schema": "https://opencode.ai/config.json",
        "model": f"{PROVIDER}/{t.model}",
        "small_model": f"{PROVIDER}/{t.model}",  # titles and summaries; else another provider's is tried
        "provider": {PROVIDER: {
            "npm": "@ai-sdk/openai-compatible",
            "name": "LMForge (local)",
            "options": {"baseURL": f"{t.base_url}/v1", "apiKey": f"{{env:{KEY_ENV}}}"},
            "models": {t.model: model},
        }},
    }
    path = t.config_dir / "opencode.json"
    return Wiring(env={"OPENCODE_CONFIG": str(path), KEY_ENV: t.key}, args=["--model", f"{PROVIDER}/{t.model}"],
                  files={path: json.dumps(config, indent=2) + "\n"})


def _toml(value: str) -> str:
    # A JSON string is a valid TOML basic string: same quotes, same escapes.
    return json.dumps(value)


@dataclass(frozen=True)
class Agent:
    command: str
    title: str
    install: str
    wire: Callable[[Target], Wiring]
    elsewhere: tuple[str, ...] = ()  # install places off PATH, under the home directory


AGENTS = {
    "claude": Agent("claude", "Claude Code", "npm install -g @anthropic-ai/claude-code "
                    "(or see https://docs.claude.com/en/docs/claude-code)", claude_wiring,
                    elsewhere=(".claude/local/claude",)),
    "codex": Agent("codex", "Codex", "npm install -g @openai/codex", codex_wiring),
    "opencode": Agent("opencode", "opencode", "npm install -g opencode-ai (or see https://opencode.ai)",
                      opencode_wiring),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch", help="start a coding agent (claude, codex, opencode) on a local model",
        description="Load a model with a context large enough for agents, then start the agent pointed at "
                    "LMForge. Arguments after `--` go to the agent.",
        epilog=f"claude gets ANTHROPIC_BASE_URL, ANTHROPIC_AUTH_TOKEN and ANTHROPIC_MODEL (/v1/messages); codex "
               f"gets `-c` options adding a provider {PROVIDER!r} (/v1/responses); opencode gets OPENCODE_CONFIG, "
               f"a file under LMFORGE_HOME/launch. The key is ${KEY_ENV}, else the placeholder {PLACEHOLDER_KEY!r}.",
    )
    p.add_argument("agent", choices=sorted(AGENTS))
    p.add_argument("--model", help="the model to load (default: the first installed chat model)")
    p.add_argument("--ctx", type=_ctx, default=None, metavar="N",
                   help=f"tokens of context to load it with (default {AGENT_CTX}, capped by the model)")
    p.add_argument("--agent-bin", type=Path, metavar="PATH",
                   help="run this program instead of the agent found on PATH (a stand-in, or an install elsewhere)")
    p.add_argument("agent_args", nargs="*", metavar="-- ARGS", help="passed to the agent as they are")
    _split_at_double_dash(p)
    p.set_defaults(func=launch)


def _split_at_double_dash(p: argparse.ArgumentParser) -> None:
    """Everything after the first `--` goes to the agent untouched.

    argparse (3.11) drops or misplaces `--` when options sit between the agent's name and it
    (`launch claude --model m -- -p hi` fails), so the tail is cut off before argparse sees it.
    """
    parse = p.parse_known_args

    def parse_known_args(args=None, namespace=None):  # type: ignore[no-untyped-def]
        args, tail = list(args or []), []
        if "--" in args:
            cut = args.index("--")
            args, tail = args[:cut], args[cut + 1:]
        ns, extras = parse(args, namespace)
        ns.agent_args = [*ns.agent_args, *tail]
        return ns, extras

    p.parse_known_args = parse_known_args  # type: ignore[method-assign]


def _ctx(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ctx takes a number of tokens, not {text!r}") from None
    if value < MIN_CTX:
        raise argparse.ArgumentTypeError(f"--ctx must be at least {MIN_CTX}")
    return value


def launch(args: argparse.Namespace, ctx: Context) -> int:
    agent = AGENTS[args.agent]
    binary = _binary(agent, args.agent_bin)  # before any loading: a missing agent needs no model
    model, trained = _pick_model(ctx, args.model)
    want = _context_for(ctx, model, args.ctx, trained)
    got = _load(ctx, model, want)
    key = ctx.settings.api_key or PLACEHOLDER_KEY  # LMFORGE_API_KEY, when set, is in the settings
    target = Target(ctx.client.url, model, got, key, ctx.paths.home / "launch")
    wiring = agent.wire(target)
    for path, text in wiring.files.items():
        write_atomic(path, text.encode())
    ctx.term.info(f"launching {agent.title} on {model} ({got}-token context) at {target.base_url}")
    try:
        return run_agent([binary, *wiring.args, *args.agent_args], {**os.environ, **wiring.env})
    finally:
        _release(ctx, model)


def run_agent(argv: list[str], env: dict[str, str]) -> int:
    """The agent as a child on this terminal; its exit status, as a shell reports it.

    A child, not an exec, so that the model's keep_alive can be handed back when the agent ends.
    Ctrl-C reaches the agent from the terminal itself and is the agent's to handle (Claude Code
    interrupts a turn with it); a SIGTERM or SIGHUP sent to launch alone is passed on.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.Popen(argv, env=env)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    try:
        code = proc.wait()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def _release(ctx: Context, model: str) -> None:
    """The model expires as usual again once the agent is gone (it was kept loaded while it ran)."""
    try:
        slots = ctx.client.get("/lf/status")["slots"]
        if any(s["model"] == model and s["kind"] == "chat" and s["state"] == "ready" for s in slots):
            ctx.client.post("/lf/model/switch", {"model": model, "kind": "chat", "keep_alive": ctx.settings.keep_alive})
    except GatewayError as exc:
        ctx.term.detail(f"{model} stays loaded: its keep_alive could not be handed back ({exc})")


def _binary(agent: Agent, override: Path | None) -> str:
    if override is not None:
        if not (override.is_file() and os.access(override, os.X_OK)):
            raise CommandError(f"--agent-bin {override} is not an executable file")
        return str(override.resolve())
    found = shutil.which(agent.command)
    if found:
        return found
    for relative in agent.elsewhere:
        candidate = Path.home() / relative
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise CommandError(f"{agent.title} is not installed ({agent.command} is not on PATH); "
                       f"install it with {agent.install}, or point --agent-bin at it")


def _pick_model(ctx: Context, asked: str | None) -> tuple[str, int]:
    """(name, trained context) of the model asked for, else of the first installed chat model."""
    models = ctx.client.get("/v1/models").get("data", [])
    chat = [m for m in models if (m.get("capabilities") or {}).get("chat")]
    if asked is None:
        if not chat:
            raise CommandError("no chat model is installed; `lmforge import FILE.gguf --name NAME` adds one")
        return chat[0]["id"], int(chat[0].get("context_length") or 0)
    entry = next((m for m in models if m["id"] == asked), None)
    if entry is None:
        raise CommandError(f"model {asked!r} is not installed; `lmforge list` shows those that are")
    if entry not in chat:
        raise CommandError(f"{asked} cannot chat, and agents need a chat model; "
                           f"chat models: {', '.join(m['id'] for m in chat) or 'none installed'}")
    return asked, int(entry.get("context_length") or 0)


def _context_for(ctx: Context, model: str, asked: int | None, trained: int) -> int:
    want = asked or AGENT_CTX
    if trained and want > trained:
        if asked:
            ctx.term.warning(f"warning: {model} was trained on {trained} tokens of context; loading it with "
                             f"{trained}, not {asked}")
        return trained
    return want


def _load(ctx: Context, model: str, want: int) -> int:
    """Load the model with `want` tokens of context, or with its default one when memory is short.

    Starting the agent on a smaller context beats not starting it: the agent compacts sooner
    (it is told the real window). Only a model that cannot load at all stops the launch.
    It stays loaded while the agent runs: the agent's requests carry no context size, so a
    reload after an idle spell would bring the default context back under a long transcript.
    """
    try:
        slot = _switch(ctx, model, want)
    except ApiError as exc:
        if exc.code != "no_capacity":
            raise CommandError(f"could not load {model}: {exc.message}") from None
        ctx.term.warning(f"warning: the memory budget cannot hold {model} with a {want}-token context "
                         f"({exc.message}); trying its default context")
        try:
            slot = _switch(ctx, model, 0)
        except ApiError as again:
            raise CommandError(f"could not load {model}: {again.message}; `lmforge unload --all` frees memory, "
                               "memory_budget_mb in config.toml raises the budget") from None
    got = int(slot.get("ctx_size") or 0)
    if got and got < want:
        ctx.term.warning(f"warning: {model} is loaded with a {got}-token context, less than the {want} asked; "
                         "the agent will compact its history sooner")
    return got or want


def _switch(ctx: Context, model: str, num_ctx: int) -> dict:
    body = {"model": model, "kind": "chat", "num_ctx": num_ctx, "keep_alive": "-1"}
    return ctx.client.post("/lf/model/switch", body, timeout=ctx.load_timeout_s)["slot"]
