"""The keys of config.toml, spelled as `lmforge config` and /lf/config spell them, and the one table of which
apply to running processes (and in which) and which guard trust.

A key is a Settings field, or `table.field` for a field of a table (`llama_cpp.ctx_size`); `api_keys` is one
key, a list. A key not in LIVE takes effect when LMForge restarts (`lmforge stop` then `lmforge start`).
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from manager.config import Settings


class Applies(enum.Flag):
    """Which running process takes a key from a changed config.toml, without a restart."""

    GATEWAY = enum.auto()  # at once on PATCH /lf/config, else on its next look at the file (gateway/live.py)
    MANAGER = enum.auto()  # on its next look at the file, every CHECK_S (manager/live_config.py)


G, M = Applies.GATEWAY, Applies.MANAGER
# Only what really takes effect: the reader named in each comment reads the key per request or per decision.
LIVE: dict[str, Applies] = {
    # the manager's cores (cores.py); the cpu_* keys restart idle engines whose thread count they change
    "cpu_policy": M, "cpu_cores": M, "cpu_shared_engines": M, "cpu_fair_share_s": M,
    # the manager's table: admission, eviction and queues read these on every decision (table.py, queues.py)
    "keep_alive": M,  # the default of requests and loads from now on; a loaded model keeps the one it has
    "max_loaded_models": M, "memory_budget_mb": M, "memory_fraction": M, "ram_reserve_mb": M,
    "fair_share_s": M, "max_queue": M, "max_inflight": M,
    # each engine started from now on (service.runner_config)
    "stop_grace_s": M, "health_interval_s": M, "health_failures": M, "load_stall_s": M, "load_stall_s_per_gb": M,
    # both: the gateway waits for a lease as long as the manager may take to load (Settings.acquire_wait_s)
    "load_timeout_s": G | M, "drain_timeout_s": G | M,
    # who may come in (gateway/middleware/auth.py, origin.py, host.py); allow_unauthenticated is a check only
    "api_key": G, "api_keys": G, "trusted_networks": G, "trusted_proxies": G, "allowed_hosts": G,
    "allowed_origins": G, "allow_unauthenticated": G,
    # deadlines.py: the body's per request, the others for each connection opened from now on
    "header_timeout_s": G, "body_timeout_s": G, "write_timeout_s": G, "idle_timeout_s": G,
    "embed_batch_size": G,  # gateway/dataplane/embed.py, per request
    # gateway/middleware/metrics.py and gateway/dataplane/progress.py, per request
    "request_log_size": G, "request_log_bodies": G, "stream_load_progress": G,
    # gateway/thinking/ and gateway/preflight/, per request
    "thinking_budget_low": G, "thinking_budget_medium": G, "thinking_budget_high": G, "thinking_answer_tokens": G,
    "image_max_bytes": G, "image_fetch_timeout_s": G, "image_max_redirects": G, "image_allow_hosts": G,
}


class Guard(enum.Enum):
    """What a change over HTTP needs beyond the admin access of /lf/config itself."""

    ADMIN_KEY = "admin_key"  # it decides who gets in: an admin key, even from loopback
    LOCAL = "local"  # it names a file or program on this machine: from this machine only


GUARDED: dict[str, Guard] = {
    **dict.fromkeys(("host", "api_key", "api_keys", "trusted_networks", "trusted_proxies", "allowed_hosts",
                     "allowed_origins", "allow_unauthenticated"), Guard.ADMIN_KEY),
    "image_allow_hosts": Guard.ADMIN_KEY,  # it opens this machine's own network to the image fetcher
    "remote": Guard.ADMIN_KEY,  # it sends prompts, and a key, to another machine
    # A remote admin may not make the manager run a program of its choosing, nor the gateway read a file.
    **dict.fromkeys(("llama_cpp.server", "llama_cpp.extra_args", "tls_cert", "tls_key"), Guard.LOCAL),
    # Nor pick the Python an engine runs in, what pip installs into it, or the engine's flags.
    **dict.fromkeys((f"{engine}.{key}" for engine in ("mlx", "sglang") for key in ("python", "requirements",
                                                                                 "extra_args")), Guard.LOCAL),
}
SECRET = "***"  # a secret as /lf/config shows it; sent back in a change, it means "keep the stored one"


def keys() -> list[str]:
    """Every key, in the order of the Settings fields."""
    return list(flatten(Settings()))


def flatten(settings: Settings) -> dict[str, Any]:
    """Each key and its value (plain data: lists, str, numbers), tables spelled out as `table.field`."""
    return flatten_plain(msgspec.to_builtins(settings))


def flatten_plain(data: dict[str, Any]) -> dict[str, Any]:
    """flatten() of settings already turned into plain data (a /lf/config answer's `config`)."""
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{field}": inner for field, inner in value.items()})
        else:
            flat[name] = value
    return flat


def changed(before: Settings, after: Settings) -> list[str]:
    """The keys whose value differs, in field order."""
    old, new = flatten(before), flatten(after)
    return [key for key in new if old.get(key) != new[key]]


def applies(key: str) -> Applies:
    return LIVE.get(key, Applies(0))


def take(current: Settings, read: Settings, where: Applies) -> tuple[Settings, list[str]]:
    """`current` with the keys that `where` applies live taken from `read`, and those keys that changed."""
    taken = [key for key in changed(current, read) if applies(key) & where]
    if not taken:
        return current, []
    return msgspec.structs.replace(current, **{key: getattr(read, key) for key in taken}), taken


def classify(changes: list[str], overridden: dict[str, str]) -> dict[str, list[str]]:
    """What a change of the file comes to in running processes: applied live, needing a restart, or shadowed by
    an environment variable (the file's new value has no effect while it is set)."""
    effective = [key for key in changes if key not in overridden]
    return {"changed": changes, "applied": [key for key in effective if applies(key)],
            "restart_required": [key for key in effective if not applies(key)],
            "overridden_by_env": [key for key in changes if key in overridden]}


def _check_table() -> None:
    """LIVE and GUARDED name real keys, and `take` replaces top-level fields: no table's field is live."""
    known = set(keys())
    assert known >= set(LIVE) | set(GUARDED), (set(LIVE) | set(GUARDED)) - known
    assert all("." not in key for key in LIVE), "a live key must be a top-level field"


_check_table()
