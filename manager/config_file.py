"""config.toml as a document that changes while LMForge runs: a change merged in, checked whole, written safely.

A change (PATCH /lf/config, `lmforge config set`) is merged into the file's own
content, never the environment's overrides, with tomlkit so that the user's
comments and layout survive. The merged document must decode as Settings and
pass validate() with the environment applied, as every process will load it;
only then is it written: a temporary file in the same directory, mode 0600 (it
may hold keys), fsync, rename over the old one. A file that cannot be read is
never overwritten. What a change comes to in running processes: config_keys.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import tomlkit
from tomlkit.exceptions import TOMLKitError

from catalog import store_files
from manager.config import ConfigError, Paths, Settings, decode_settings, effective, env_overrides
from manager.config_keys import GUARDED, LIVE, SECRET, Guard, changed, classify

MODE = 0o600


class FileUnreadable(ConfigError):
    """config.toml exists but cannot be read or parsed: it is left as it is, and nothing is merged into it."""


@dataclass(frozen=True)
class Change:
    """A change written to config.toml: the file's settings before and after, and each with the environment."""

    before: Settings
    after: Settings
    effective: Settings  # `after` with the environment's overrides: what processes will run with
    keys: list[str]  # the keys whose value in the file changed
    overridden: dict[str, str]  # key: environment variable, for the keys the environment overrides now

    def report(self) -> dict[str, list[str]]:
        return classify(self.keys, self.overridden)


# --- reading ---


def read_text(path: Path) -> str:
    """The file's text; "" when there is none. FileUnreadable when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise FileUnreadable(f"{path} cannot be read ({_why(exc)}); nothing was changed") from None


def parse(text: str, path: Path) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise FileUnreadable(f"{path} is not valid TOML ({exc}); fix it with `lmforge config edit`, or by hand, "
                             "first: nothing was changed") from None


def check(text: str, home: Path) -> tuple[Settings, Settings]:
    """The settings a document holds, and what processes would run with; ConfigError names the key at fault."""
    from_file = decode_settings(text)
    return from_file, effective(from_file, home)


# --- changing ---


def nested(change: dict[str, Any]) -> dict[str, Any]:
    """A change with dotted keys (`"llama_cpp.ctx_size": 4096`) spelled as tables; ConfigError when two spellings
    of one key disagree or a key is empty."""
    out: dict[str, Any] = {}
    for key, value in change.items():
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f'unknown key "{key}"')
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parts[:i + 1])} is given both as a value and as a table")
        last = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            value = {**node[last], **value}
        elif last in node:
            raise ConfigError(f"{key} is given twice")
        node[last] = value
    return out


def merge(doc: tomlkit.TOMLDocument, change: dict[str, Any], before: Settings) -> None:
    """Merge a nested change into the document: a table merges key by key, anything else replaces; None removes
    the key (its default applies again); a secret given as SECRET keeps the stored one."""
    change = _keep_secrets(change, before)
    _merge_into(doc, change, "")


def _merge_into(container: Any, change: dict[str, Any], prefix: str) -> None:
    for name, value in change.items():
        key = f"{prefix}{name}"
        current = container.get(name)
        if value is None:
            container.pop(name, None)
        elif isinstance(value, dict) and (current is None or isinstance(current, dict)):
            if current is None:
                current = container[name] = tomlkit.table()
            _merge_into(current, value, f"{key}.")
        else:
            try:
                container[name] = value
            except (TOMLKitError, TypeError, ValueError) as exc:
                raise ConfigError(f"{key}: {value!r} cannot be written as TOML ({exc})") from None


def _keep_secrets(change: dict[str, Any], before: Settings) -> dict[str, Any]:
    """SECRET means "unchanged": api_key is left out of the change, an [[api_keys]] entry takes its stored key
    (the entry of the same name, else the one at the same place)."""
    change = dict(change)
    if change.get("api_key") == SECRET:
        del change["api_key"]
    entries = change.get("api_keys")
    if isinstance(entries, list):
        change["api_keys"] = [_stored_key(entry, i, before) for i, entry in enumerate(entries)]
    remotes = change.get("remote")
    if isinstance(remotes, list):
        change["remote"] = [_stored_remote_key(entry, i, before) for i, entry in enumerate(remotes)]
    return change


def _stored_remote_key(entry: Any, i: int, before: Settings) -> Any:
    """A `[[remote]]` entry sent back with its api_key as SECRET takes the stored key of the entry of its name."""
    if not isinstance(entry, dict) or entry.get("api_key") != SECRET:
        return entry
    stored = next((r for r in before.remote if r.name == entry.get("name")), None)
    if stored is None or not stored.api_key:
        raise ConfigError(f'remote[{i}].api_key is "{SECRET}" (keep the stored key), but no key is stored for it: '
                          "send the key itself")
    return {**entry, "api_key": stored.api_key}


def _stored_key(entry: Any, i: int, before: Settings) -> Any:
    if not isinstance(entry, dict) or entry.get("key") != SECRET:
        return entry
    named = [k for k in before.api_keys if entry.get("name") and k.name == entry.get("name")]
    stored = named[0] if len(named) == 1 else (before.api_keys[i] if i < len(before.api_keys) else None)
    if stored is None:
        raise ConfigError(f'api_keys[{i}].key is "{SECRET}" (keep the stored key), but no key is stored for it: '
                          "send the key itself")
    return {**entry, "key": stored.key}


def update(paths: Paths, change: dict[str, Any]) -> Change:
    """Merge `change` into config.toml, check the result whole and write it; nothing is written when any of it
    fails (ConfigError names the key; FileUnreadable: the file as it stands cannot be changed)."""
    text = read_text(paths.config)
    doc = parse(text, paths.config)
    try:
        before = decode_settings(text)
    except ConfigError:
        before = Settings()  # a change may be what repairs the file: only the merged result must be valid
    merge(doc, nested(change), before)
    return save(paths, text, tomlkit.dumps(doc), before)


def save(paths: Paths, old_text: str, new_text: str, before: Settings | None = None) -> Change:
    """Check `new_text` and, when it differs from `old_text`, write it in place of config.toml."""
    after, running = check(new_text, paths.home)
    if before is None:
        try:
            before = decode_settings(old_text)
        except ConfigError:
            before = Settings()
    if new_text != old_text:
        write_atomic(paths.config, new_text)
    keys = changed(before, after)
    return Change(before, after, running, keys, {k: v for k, v in env_overrides().items() if k in keys})


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (catalog/store_files.py), mode 0600: it may hold keys. A link is
    followed: the file it points to is replaced, and the link kept."""
    store_files.write_atomic(path.resolve() if path.is_symlink() else path, text.encode(), MODE)


# --- showing ---


def redacted(settings: Settings) -> dict[str, Any]:
    """Settings as plain data, every secret shown as SECRET when it is set and "" when it is not."""
    data = msgspec.to_builtins(settings)
    data["api_key"] = SECRET if settings.api_key else ""
    for entry in data["api_keys"]:
        entry["key"] = SECRET if entry["key"] else ""
    for entry in data["remote"]:
        entry["api_key"] = SECRET if entry["api_key"] else ""
    return data


def describe(paths: Paths, started: Settings | None = None, running: Settings | None = None) -> dict[str, Any]:
    """What GET /lf/config and `lmforge config get` show: the settings in force from the file and the
    environment, with secrets redacted. `started`: what a running gateway started with, so that the keys
    changed since then that need a restart can be named. When the file cannot be used, `running` (or the
    defaults) is shown with the error."""
    view: dict[str, Any] = {"path": str(paths.config)}
    try:
        now = check(read_text(paths.config), paths.home)[1]
    except ConfigError as exc:
        now = running or Settings()
        view["error"] = f"{paths.config}: {exc}"
    view["config"] = redacted(now)
    view["env_overrides"] = env_overrides()
    view["live"] = list(LIVE)
    if started is not None:
        view["restart_required"] = [key for key in changed(started, now) if key not in LIVE]
    return view


def guard_of(change: dict[str, Any]) -> dict[Guard, list[str]]:
    """The keys of a nested change that need more than admin access, by what they need."""
    flat = {f"{name}.{field}" for name, value in change.items() if isinstance(value, dict) for field in value}
    flat |= {name for name, value in change.items() if not (name == "api_key" and value == SECRET)}
    found: dict[Guard, list[str]] = {}
    for key in sorted(flat):
        if key in GUARDED:
            found.setdefault(GUARDED[key], []).append(key)
    return found


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
