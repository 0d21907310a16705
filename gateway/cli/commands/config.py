"""`lmforge config get [KEY] | set KEY VALUE | edit`: the settings in config.toml, and what a change comes to.

While LMForge runs, get and set go through the gateway (GET and PATCH
/lf/config), which applies what it can at once. When it does not, or when the
change decides who gets in and no admin key is at hand, the CLI reads and
writes the file itself: it runs on this machine as the owner of the home.
Running processes take a file written this way within CHECK_S.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import shlex
import signal
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import tomlkit
from tomlkit.exceptions import TOMLKitError

from gateway.cli.client import ApiError, GatewayDown, GatewayError
from gateway.cli.context import CommandError, Context
from manager import config_file
from manager.config import ENV_OVERRIDES, ConfigError, LlamaCppSettings, Settings, decode_settings
from manager.config_keys import flatten_plain
from manager.live_config import CHECK_S

RESTART = "`lmforge stop`, then `lmforge start`"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show or change settings (config.toml)")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="{get,set,edit}")
    get = csub.add_parser("get", help="every setting in force, or one (tables dotted: llama_cpp.ctx_size)")
    get.add_argument("key", nargs="?")
    get.add_argument("--json", action="store_true")
    get.set_defaults(func=get_command)
    put = csub.add_parser("set", help='change one setting; VALUE is TOML (4096, true, "5m", ["10.0.0.0/8"]) '
                                      "or plain text")
    put.add_argument("key")
    put.add_argument("value")
    put.set_defaults(func=set_command)
    edit = csub.add_parser("edit", help="edit config.toml in $VISUAL or $EDITOR, checked before it is saved")
    edit.set_defaults(func=edit_command)


# --- get ---


def get_command(args: argparse.Namespace, ctx: Context) -> int:
    try:
        view = ctx.client.get("/lf/config")
    except GatewayDown:
        view = config_file.describe(ctx.paths)  # not running: the file and this environment
    if args.key is None:
        if args.json:
            ctx.term.json(view)
            return 0
        if "error" in view:
            ctx.term.warning(f"warning: {view['error']}")
        ctx.term.info(as_toml(view).rstrip("\n"))
        return 0
    value = _value_of(view["config"], args.key)
    if args.json:
        ctx.term.json(value)
    else:
        ctx.term.info(value if isinstance(value, str) else _toml(value))
    return 0


def _value_of(config: dict[str, Any], key: str) -> Any:
    flat = flatten_plain(config)
    if key in flat:
        return flat[key]
    if isinstance(config.get(key), dict):
        return config[key]
    raise CommandError(_unknown(key, flat))


def _unknown(key: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f'unknown key "{key}"' + (f' (did you mean "{close[0]}"?)' if close else "") + \
        "; `lmforge config get` lists them"


def as_toml(view: dict[str, Any]) -> str:
    """The settings as a TOML document, each key the environment overrides or that waits for a restart noted."""
    notes = {key: f"from {var}, which overrides config.toml" for key, var in view["env_overrides"].items()}
    notes.update({key: f"changed in config.toml: applies after a restart ({RESTART})"
                  for key in view.get("restart_required", [])})
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"{view['path']} with the environment's overrides; secrets are shown as ***"))
    for name, value in view["config"].items():
        if isinstance(value, dict):
            table = tomlkit.table()
            for field, inner in value.items():
                _add(table, field, inner, notes.get(f"{name}.{field}"))
            doc.add(name, table)
        else:
            _add(doc, name, value, notes.get(name))
    return tomlkit.dumps(doc)


def _add(container: Any, key: str, value: Any, note: str | None) -> None:
    if value is None:  # TOML has no null: the key is left out of the file
        container.add(tomlkit.comment(f"{key}: not set"))
        return
    item = tomlkit.item(value)
    if note:
        item.comment(note)
    container.add(key, item)


def _toml(value: Any) -> str:
    if isinstance(value, dict):  # a table: its keys, one a line
        table = tomlkit.document()
        for key, inner in value.items():
            _add(table, key, inner, None)
        return tomlkit.dumps(table).rstrip("\n")
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):  # inline, on one line
        return "[" + ", ".join(_inline(item) if isinstance(item, dict) else _toml(item) for item in value) + "]"
    return tomlkit.item(value).as_string()


def _inline(table: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{key} = {_toml(value)}" for key, value in table.items() if value is not None) + "}"


def shown(key: str, value: Any) -> str:
    """A value as `set` reports it: TOML, each secret as config_file.redacted shows it (the one place that knows
    which keys are secrets: api_key, each [[api_keys]] key, each [[remote]] api_key). The value is read as the
    file would hold it; a value that cannot be read so (the change is refused then) is not shown."""
    try:
        view = config_file.redacted(decode_settings(tomlkit.dumps(config_file.nested({key: value}))))
        redacted = _value_of(view, key)
    except (ConfigError, CommandError, TOMLKitError, TypeError, ValueError):
        return "(the value given)"
    return _toml(_as_given(value, redacted))


def _as_given(given: Any, redacted: Any) -> Any:
    """The redacted value in the shape given: a table's keys (a [[remote]] entry's too) without the defaults that
    decoding filled in."""
    if isinstance(given, dict) and isinstance(redacted, dict):
        return {field: _as_given(given[field], redacted[field]) for field in given if field in redacted}
    if isinstance(given, list) and isinstance(redacted, list) and len(given) == len(redacted):
        return [_as_given(g, r) for g, r in zip(given, redacted)]
    return redacted


# --- set ---


def parse_value(key: str, raw: str) -> Any:
    """VALUE as TOML (`4096`, `true`, `"5m"`, `["10.0.0.0/8"]`), else as the text it is; a key whose setting is
    text takes the text as typed (`lmforge config set api_key 12345678` is a key, not a number)."""
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw
    if not isinstance(value, (str, bool, int, float, list, dict)):  # a TOML date or time
        return raw
    if _text_only(key) and not isinstance(value, str):
        return raw
    return value


def _text_only(key: str) -> bool:
    """Whether the setting is text and nothing else (keep_alive, text or a number, is not)."""
    table, _, field = key.rpartition(".")
    struct = {"": Settings, "llama_cpp": LlamaCppSettings}.get(table)
    return struct is not None and any(f.name == field and f.type is str for f in msgspec.structs.fields(struct))


def set_command(args: argparse.Namespace, ctx: Context) -> int:
    value = parse_value(args.key, args.value)
    change, done = {args.key: value}, f"set {args.key} = {shown(args.key, value)}"
    try:
        reply = ctx.client.patch("/lf/config", change)
    except GatewayDown:
        written = config_file.update(ctx.paths, change)
        _report(ctx, written.report(), running=False, done=f"{done} in {ctx.paths.config}")
        return 0
    except ApiError as exc:
        if exc.code != "admin_key_required":
            raise
        # The gateway takes this change with an admin key only; the owner of the home may write the file.
        written = config_file.update(ctx.paths, change)
        _report(ctx, written.report(), running=True, by_file=True, done=f"{done} in {ctx.paths.config}")
        return 0
    _report(ctx, reply, running=True, done=done)
    return 0


def _report(ctx: Context, report: dict[str, list[str]], *, running: bool, done: str, by_file: bool = False) -> None:
    if not report["changed"]:
        ctx.term.info("nothing changed: config.toml already says so")
        return
    ctx.term.success(done)
    if not running:
        ctx.term.info("LMForge is not running: the change applies when it starts")
    else:
        if report["applied"]:
            when = f" (the running processes take it within {CHECK_S:g}s)" if by_file else ""
            ctx.term.info(f"applied live: {', '.join(report['applied'])}{when}")
        if report["restart_required"]:
            ctx.term.warning(f"needs a restart to apply: {', '.join(report['restart_required'])} ({RESTART})")
    for key in report["overridden_by_env"]:
        ctx.term.warning(f"{key}: {ENV_OVERRIDES[key]} is set and overrides config.toml; the file's value applies "
                         "once it is unset")


# --- edit ---


def edit_command(args: argparse.Namespace, ctx: Context) -> int:
    path = ctx.paths.config
    original = config_file.read_text(path)
    fd, name = tempfile.mkstemp(prefix="lmforge-config-", suffix=".toml")  # mode 0600: it may hold keys
    draft = Path(name)
    keep_draft = False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(original)
        text = _edited(ctx, draft, original)
        if text is None:
            ctx.term.info("no changes")
            return 0
        if config_file.read_text(path) != original:
            keep_draft = True
            raise CommandError(f"{path} changed while you edited it; nothing was saved, and your version is "
                               f"kept in {draft}")
        written = config_file.save(ctx.paths, original, text)
    finally:
        if not keep_draft:
            with contextlib.suppress(OSError):
                draft.unlink()
    _report(ctx, written.report(), running=_running(ctx), by_file=True, done=f"saved {path}")
    return 0


def _edited(ctx: Context, draft: Path, original: str) -> str | None:
    """The draft once the editor leaves it valid; None when it is unchanged. A mistake is shown, and the editor
    opened again on a terminal; elsewhere it ends the command (CommandError)."""
    editor = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
    while True:
        try:
            status = _run_editor([*editor, str(draft)])
        except OSError as exc:
            raise CommandError(f"cannot run the editor {editor[0]!r} ({exc.strerror or exc}): set VISUAL or "
                               "EDITOR; config.toml was not changed") from None
        if status != 0:
            raise CommandError(f"the editor exited with status {status}; config.toml was not changed")
        text = draft.read_text(encoding="utf-8")
        if text == original:
            return None
        try:
            config_file.check(text, ctx.paths.home)
            return text
        except ConfigError as exc:
            if not ctx.term.interactive:
                raise CommandError(f"{exc}; config.toml was not changed") from None
            ctx.term.error(f"error: {exc}")
            if not _again(ctx):
                raise CommandError("config.toml was not changed") from None


def _run_editor(argv: list[str]) -> int:
    """The editor owns the terminal: Ctrl-C is its key (vi's), not a reason to kill it and lose the draft."""
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGQUIT)}
    try:
        return subprocess.Popen(argv, preexec_fn=_default_signals).wait()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the editor decides what its keys do
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _again(ctx: Context) -> bool:
    try:
        answer = ctx.term.out.input("Edit again? [Y/n] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("", "y", "yes")


def _running(ctx: Context) -> bool:
    try:
        ctx.client.get("/health", timeout=2.0)
    except GatewayDown:
        return False
    except GatewayError:
        return True  # something answers: a gateway whose manager is away still takes the file
    return True
