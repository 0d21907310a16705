"""`[[remote]]`: models served by engines that already run elsewhere (an SGLang multi-node deployment, vLLM on a
Ray cluster, another llama-server), which LMForge routes to with its own auth, metrics, dialects and status.

Each is an OpenAI-compatible server at `url`; LMForge health-checks it, charges it no local memory, and sends
`api_key` (if any) as a Bearer token and `model` as the model name it serves.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import msgspec

from manager.protocol_base import ModelEntry, SlotKind

REMOTE_FORMAT = "remote"  # ModelEntry.format of a remote model: only the remote engine serves it
KINDS = ("chat", "embed", "rerank")
# A remote model's name follows the store's naming rule (catalog/store.py NAME_RULE), checked here too.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+@-]{0,127}$")


class RemoteModel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str  # what apps call it here
    url: str  # the server's base URL, without /v1: "http://10.0.0.5:30000"
    model: str = ""  # the name the server knows it by; empty: `name`
    api_key: str = ""  # sent as "Authorization: Bearer ..."; empty: none
    kinds: list[str] = msgspec.field(default_factory=lambda: ["chat"])
    context_length: int = 0  # what /api/show and clients are told; 0: unknown
    parallel: int = 16  # requests sent to it at once before more queue here
    health_path: str = "/health"  # answers 200 while it serves (SGLang, vLLM and llama-server all have /health)
    # What the gateway's gates let through to it (capabilities a local model reads from its GGUF header).
    tools: bool = True
    vision: bool = False
    thinking: bool = False

    @property
    def served_as(self) -> str:
        return self.model or self.name


def check_remote(models: list[RemoteModel]) -> str | None:
    """The first thing wrong with the `[[remote]]` list, said as the config error; None when all is well."""
    seen: set[str] = set()
    for i, r in enumerate(models):
        where = f"remote[{i}]"
        if not _NAME.fullmatch(r.name) or ".." in r.name or "//" in r.name:
            return f"{where}.name: {r.name!r} is not a model name (letters, digits and . _ : / + @ -)"
        if r.name in seen:
            return f"{where}.name: {r.name!r} is listed twice"
        seen.add(r.name)
        url = urlsplit(r.url)
        if url.username is not None or url.password is not None:
            return f"{where}.url: put no credentials in the URL (it is shown in /lf/status): set api_key instead"
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            return f"{where}.url: {r.url!r} must be an http(s) base URL such as http://10.0.0.5:30000"
        bad = [k for k in r.kinds if k not in KINDS]
        if bad or not r.kinds:
            return f"{where}.kinds: {bad or 'nothing'} — use some of {', '.join(KINDS)}"
        if not 1 <= r.parallel <= 1024:
            return f"{where}.parallel must be 1-1024"
        if r.context_length < 0:
            return f"{where}.context_length must be >= 0"
        if not r.health_path.startswith("/"):
            return f"{where}.health_path must start with /"
    return None


def remote_entries(models: list[RemoteModel]) -> tuple[ModelEntry, ...]:
    """The `[[remote]]` models as the model store lists them: `path` is the server's URL, and nothing is on disk."""
    return tuple(
        ModelEntry(name=r.name, path=r.url.rstrip("/"), format=REMOTE_FORMAT, source="remote",
                   kinds=tuple(SlotKind(k) for k in r.kinds), context_length=r.context_length, tools=r.tools,
                   vision=r.vision, thinking=r.thinking, chat_template=True, repo=r.served_as)
        for r in models
    )
