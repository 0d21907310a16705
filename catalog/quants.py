"""Which files of a Hub repo make one model: GGUF quant labels, split shards, the mmproj, safetensors sets.

Pure functions over a repo listing, so every choice is tested without a server; catalog/resolver.py does the I/O.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


class ResolveError(Exception):
    """A name that cannot become a pull plan; `status` is the HTTP status the surfaces answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HubFile:
    """One file of a repo listing: sha256 for LFS files, the git blob id for small ones."""

    path: str
    size: int
    sha256: str = ""
    blob_id: str = ""


@dataclass(frozen=True)
class Chosen:
    """The weight files of one quant (every shard of a split file, in order) and why it was taken."""

    label: str
    files: tuple[HubFile, ...]
    reason: str = ""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


# A quant label stands alone between separators: "Qwen3-8B-UD-Q4_K_XL.gguf", "nomic-embed.f16.gguf", "Q8_0/x.gguf".
# The ARM repacks carry their layout: Q4_0_4_4, Q4_0_4_8, Q4_0_8_8, IQ4_NL_4_4 are quants of their own, not Q4_0.
_LABEL = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d(?:_K)?(?:_(?:XXS|XS|XL|NL|S|M|L|0|1))?(?:_[48]_[48])?|TQ[12]_0|MXFP4(?:_MOE)?"
    r"|BF16|FP?16|FP?32))"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# llama.cpp's gguf-split naming: every shard ends "-0000N-of-0000M.gguf".
_SHARD = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
_ALIASES = {"FP16": "F16", "FP32": "F32", "MXFP4_MOE": "MXFP4"}
MMPROJ_PREFERENCE = ("F16", "BF16", "F32")

TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
})  # fmt: skip
CONFIG_FILES = frozenset({
    "config.json", "generation_config.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
    "processor_config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
    "1_Pooling/config.json",
})  # fmt: skip
SAFETENSORS_INDEX = "model.safetensors.index.json"


def normalize_quant(text: str) -> str:
    """The canonical spelling of a quant label: upper case, FP16 -> F16, MXFP4_MOE -> MXFP4."""
    label = text.strip().upper()
    return _ALIASES.get(label, label)


def quant_label(path: str) -> str:
    """The quant a GGUF path names, from its file name (the last label there) or else its nearest folder; "" if none."""
    parts = path.split("/")
    name = parts[-1]
    shard = _SHARD.match(name)
    stem = shard["stem"] if shard else re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    for text in [stem, *reversed(parts[:-1])]:
        found = _LABEL.findall(text)
        if found:
            return normalize_quant(found[-1])
    return ""


def is_mmproj(path: str) -> bool:
    name = posixpath.basename(path).lower()
    return name.endswith(".gguf") and "mmproj" in name


def gguf_weights(files: Iterable[HubFile]) -> list[HubFile]:
    return [f for f in files if f.path.lower().endswith(".gguf") and not is_mmproj(f.path)]


def group_by_quant(files: Iterable[HubFile]) -> dict[str, list[HubFile]]:
    """GGUF weight files by quant label (mmproj files excluded); a file with no label is grouped under its stem."""
    groups: dict[str, list[HubFile]] = {}
    for f in gguf_weights(files):
        label = quant_label(f.path) or _plain_name(f.path)
        groups.setdefault(label, []).append(f)
    return groups


def _plain_name(path: str) -> str:
    return re.sub(r"\.gguf$", "", _logical_key(path)[0].rsplit("/", 1)[-1], flags=re.IGNORECASE)


def _logical_key(path: str) -> tuple[str, int]:
    """(the path that names the whole model, shard count): a split file's shards share one key."""
    shard = _SHARD.match(path)
    return (shard["stem"], int(shard["total"])) if shard else (path, 0)


def one_model(files: Sequence[HubFile]) -> list[HubFile]:
    """From the files of one quant, one model: a single file, or a split file's shards in order (all of them).

    Several candidates (a copy in a sub-folder, a split beside a whole file): the shallowest, unsplit one wins.
    """
    models: dict[tuple[str, int], list[HubFile]] = {}
    for f in files:
        models.setdefault(_logical_key(f.path), []).append(f)
    key = min(models, key=lambda k: (k[0].count("/"), k[1] > 0, k[0]))
    chosen = sorted(models[key], key=lambda f: f.path)
    stem, total = key
    if total:
        have = {int(m["index"]) for m in (_SHARD.match(f.path) for f in chosen) if m}
        missing = [i for i in range(1, total + 1) if i not in have]
        if missing or len(chosen) != total:
            listed = ", ".join(f"{i:05d}" for i in sorted(have))
            raise ResolveError(
                404,
                f"{stem}.gguf is split in {total} files but the Hub lists only shards {listed}"
                f" (missing {', '.join(f'{i:05d}' for i in missing) or 'none'}); the repo is incomplete",
            )
    return chosen


def quant_sizes(groups: dict[str, list[HubFile]]) -> dict[str, int]:
    """Bytes of each quant's model (a group whose shards are incomplete counts what is listed)."""
    sizes = {}
    for label, files in groups.items():
        try:
            sizes[label] = sum(f.size for f in one_model(files))
        except ResolveError:
            sizes[label] = sum(f.size for f in files)
    return sizes


def describe_quants(groups: dict[str, list[HubFile]]) -> str:
    sizes = quant_sizes(groups)
    return ", ".join(f"{q} ({sizes[q] / 1e9:.1f} GB)" for q in sorted(sizes, key=lambda q: (sizes[q], q)))


def pick_quant(
    groups: dict[str, list[HubFile]], requested: str, tokens: dict[str, tuple[str, ...]], repo: str
) -> Chosen:
    """The quant a user asked for: an exact .gguf file, a label (Q4_K_M, q8_0, UD-Q4_K_XL) or a token (4bit)."""
    if requested.lower().endswith(".gguf"):
        return _pick_file(groups, requested, repo)
    label = normalize_quant(requested)
    if label in groups:
        return Chosen(label, tuple(one_model(groups[label])), f"{label}: as asked")
    for candidate in tokens.get(requested.lower(), ()):
        candidate = normalize_quant(candidate)
        if candidate in groups:
            return Chosen(candidate, tuple(one_model(groups[candidate])), f"{candidate}: the first of {requested}'s")
    have = describe_quants(groups) or "no GGUF files"
    raise ResolveError(404, f"no quant {requested} in {repo}; it has: {have}")


def _pick_file(groups: dict[str, list[HubFile]], requested: str, repo: str) -> Chosen:
    everything = [f for files in groups.values() for f in files]
    for same in (lambda f: f.path == requested, lambda f: f.path.lower() == requested.lower(),
                 lambda f: posixpath.basename(f.path).lower() == requested.lower()):  # fmt: skip
        hits = [f for f in everything if same(f)]
        if hits:
            key = _logical_key(hits[0].path)
            model = [f for f in everything if _logical_key(f.path) == key]
            label = quant_label(hits[0].path) or _plain_name(hits[0].path)
            return Chosen(label, tuple(one_model(model)), f"{hits[0].path}: the file asked for")
    have = describe_quants(groups) or "no GGUF files"
    raise ResolveError(404, f"no file {requested} in {repo}; its quants: {have}")


def default_quant(
    groups: dict[str, list[HubFile]],
    budget_bytes: int,
    fits: Callable[[int, int], bool],
    preference: Sequence[str],
) -> Chosen:
    """No quant asked: the first preferred one (Q4_K_M) if it fits the budget, else the largest smaller one that
    fits, else the smallest of all."""
    sizes = quant_sizes(groups)
    by_size = sorted(sizes, key=lambda q: (sizes[q], q))
    start = next((normalize_quant(q) for q in preference if normalize_quant(q) in sizes), None)
    if start is not None and fits(sizes[start], budget_bytes):
        return Chosen(start, tuple(one_model(groups[start])), f"{start}: the default quant, fits the budget")
    ceiling = sizes[start] if start is not None else sizes[by_size[-1]]
    budget = f"{budget_bytes / 1e9:.1f} GB" if budget_bytes else "no limit"
    for q in reversed(by_size):
        if sizes[q] <= ceiling and q != start and fits(sizes[q], budget_bytes):
            why = f"{start} ({sizes[start] / 1e9:.1f} GB) does not fit" if start else "no usual default quant here"
            return Chosen(q, tuple(one_model(groups[q])), f"{q}: {why}; the largest below it that fits ({budget})")
    smallest = by_size[0]
    return Chosen(smallest, tuple(one_model(groups[smallest])), f"{smallest}: nothing fits {budget}; the smallest")


def pick_mmproj(files: Iterable[HubFile], pattern: str = "") -> HubFile | None:
    """The vision projector: one matching `pattern` when given, else F16, then BF16, then F32, else the first."""
    projectors = sorted((f for f in files if is_mmproj(f.path)), key=lambda f: f.path)
    if pattern:
        projectors = [f for f in projectors if matches(f.path, pattern)]
    for label in MMPROJ_PREFERENCE:
        for f in projectors:
            if quant_label(f.path) == label:
                return f
    return projectors[0] if projectors else None


def matches(path: str, pattern: str) -> bool:
    """A catalog file pattern (an exact name or an fnmatch pattern) against a repo path or its base name."""
    return path == pattern or fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(posixpath.basename(path), pattern)


def catalog_quant(files: Sequence[HubFile], pattern: str, fallback_label: str, repo: str) -> Chosen:
    """The weights a catalog entry names by pattern; a split file's every shard, the label from the file name."""
    hits = [f for f in gguf_weights(files) if matches(f.path, pattern)]
    if not hits:
        have = describe_quants(group_by_quant(files)) or "no GGUF files"
        raise ResolveError(404, f"no file matching {pattern} in {repo}; it has: {have}")
    model = one_model(hits)
    label = quant_label(model[0].path) or normalize_quant(fallback_label)
    return Chosen(label, tuple(model), f"{label}: the catalog's file {pattern}")


def directory_files(files: Iterable[HubFile]) -> list[tuple[HubFile, str]]:
    """What a safetensors or MLX model needs, with roles: the weights and their index, tokenizer, config, template."""
    files = list(files)
    weights = [f for f in files if "/" not in f.path and f.path.endswith(".safetensors")]
    if any(not f.path.startswith("consolidated") for f in weights):
        # Mistral repos carry the same weights twice; the consolidated copy is for their own runtime.
        weights = [f for f in weights if not f.path.startswith("consolidated")]
    chosen = [(f, "weights") for f in weights]
    for f in files:
        if f.path == SAFETENSORS_INDEX:
            chosen.append((f, "weights"))
        elif f.path in TOKENIZER_FILES:
            chosen.append((f, "tokenizer"))
        elif f.path in CONFIG_FILES:
            chosen.append((f, "config"))
    return sorted(chosen, key=lambda pair: (pair[1] != "weights", pair[0].path))
