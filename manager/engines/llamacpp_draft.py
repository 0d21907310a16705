"""The draft model a llama.cpp chat slot decodes speculatively with, and what it adds to the memory plan.

A model's draft is the one `[llama_cpp] drafts` names for it, else the one its catalog entry names (the shortcut
it was pulled as: catalog/data, `draft`). A configured draft must be installed and tokenize as the model does, or
the load fails saying how to fix it; the catalog's is used when it is installed and fits, and skipped otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from catalog.entries import CatalogError, load_catalog
from catalog.gguf_info import GGUFError, GGUFInfo, cached_gguf_info as gguf_info
from manager.engines.base import PlanRefused
from manager.engines.llamacpp_memory import RUNTIME, footprint
from manager.protocol import ModelEntry

if TYPE_CHECKING:  # the store's module imports the llama.cpp adapter's (catalog/capabilities.py)
    from catalog.store import ModelStore

log = logging.getLogger("lmforge.manager")

TOKENIZER_KEY = "tokenizer.ggml.model"
# llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE: vocabularies further apart than this are not compatible.
MAX_VOCAB_DIFFERENCE = 128


class DraftError(PlanRefused):
    """A configured draft cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class DraftCost:
    """What the draft adds to llama-server: its own weights, KV cache and graph, the size of the target's."""

    weights: int
    kv: int
    compute: int  # graph buffer, logits, samplers and tokenizer tables
    growth: int  # the part of compute first touched after ready (on a CPU host)
    layers: int  # what --gpu-layers-draft offloads: its blocks and the output layer

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute


def draft_cost(draft: ModelEntry, info: GGUFInfo, *, ctx: int, parallel: int, ubatch: int) -> DraftCost:
    """llama-server gives the draft a context of the target's size, sequences and micro-batch (measured: the same
    n_ctx, n_seq_max, unified KV and graph buffer); it shares the server's runtime and keeps no prompt cache."""
    held = footprint(info, ctx=ctx, parallel=parallel, ubatch=ubatch, unified=True, cache_ram_mb=0, chat=True)
    tokenizer = held.runtime - RUNTIME
    return DraftCost(weights=draft.size_bytes, kv=held.kv,
                     compute=held.compute + held.output + held.sampler + tokenizer,
                     growth=held.compute + held.sampler, layers=info.block_count + 1)


def find_draft(entry: ModelEntry, info: GGUFInfo, drafts: dict[str, str], store: ModelStore) -> ModelEntry | None:
    """The installed draft for `entry` (whose header is `info`), or None; DraftError for a configured one that
    cannot be used."""
    configured = configured_draft(entry, drafts, store)
    if configured:
        found = store.find(configured)
        if found is None:
            raise DraftError(f"the draft model {configured!r} that llama_cpp.drafts names for {entry.name!r} is not "
                             f"installed: `lmforge pull {configured}` installs it, or remove it from llama_cpp.drafts")
        if problem := unusable(found, info):
            raise DraftError(f"the draft model {configured!r} that llama_cpp.drafts names for {entry.name!r} "
                             f"cannot be used: {problem}; name another in llama_cpp.drafts, or remove it")
        return found
    suggested = catalog_draft(entry, store)
    found = store.find(suggested) if suggested else None
    if found is None:
        return None
    if problem := unusable(found, info):
        log.warning("not decoding %s with its catalog draft %s: %s", entry.name, found.name, problem)
        return None
    return found


def configured_draft(entry: ModelEntry, drafts: dict[str, str], store: ModelStore) -> str:
    """The draft `[llama_cpp] drafts` names for `entry`: by its name, or by a name the store resolves to it
    (`qwen3:8b` for the installed `qwen3:8b:4bit`). "" when none does."""
    if entry.name in drafts:
        return drafts[entry.name]
    for model, draft in drafts.items():
        found = store.find(model)
        if found is not None and found.name == entry.name:
            return draft
    return ""


def catalog_draft(entry: ModelEntry, store: ModelStore) -> str:
    """The draft the catalog names for the shortcut `entry` was pulled as; "" for none."""
    if not entry.catalog:
        return ""
    try:
        match = load_catalog(store.paths.home).match(entry.catalog)
    except CatalogError as exc:  # a broken catalog file of the user's costs the draft, not the load
        log.warning("not looking up a draft for %s: %s", entry.name, exc)
        return ""
    return match.entry.draft if match is not None else ""


def unusable(draft: ModelEntry, target: GGUFInfo) -> str:
    """Why llama-server would not decode `target` with `draft`; "" when it would, as far as the headers tell.

    It checks the vocabularies when it loads (common_speculative_are_compatible) and, when they differ, serves
    without speculation, the draft loaded for nothing. Token texts are its one check not repeated here.
    """
    if draft.format != "gguf":
        return f"it is a {draft.format} model, and llama.cpp drafts with GGUF models only"
    try:
        theirs = gguf_info(draft.path)
    except GGUFError as exc:
        return str(exc)
    except OSError as exc:  # the index names a file that is gone
        return f"its file {draft.path} cannot be read: {exc.strerror or exc}"
    ours = target.metadata
    if (kind := theirs.metadata.get(TOKENIZER_KEY)) != ours.get(TOKENIZER_KEY):
        return f"its tokenizer is {kind!r}, the model's {ours.get(TOKENIZER_KEY)!r}"
    if abs(theirs.vocab_size - target.vocab_size) > MAX_VOCAB_DIFFERENCE:
        return f"its vocabulary has {theirs.vocab_size} tokens, the model's {target.vocab_size}"
    for add, token in (("add_bos_token", "bos_token_id"), ("add_eos_token", "eos_token_id")):
        add_theirs, add_ours = theirs.metadata.get(f"tokenizer.ggml.{add}"), ours.get(f"tokenizer.ggml.{add}")
        if add_theirs is None or add_ours is None:
            continue  # the tokenizer type's default, which the same type shares
        same_id = theirs.metadata.get(f"tokenizer.ggml.{token}") == ours.get(f"tokenizer.ggml.{token}")
        if add_theirs != add_ours or (add_ours and not same_id):
            return f"its {token.split('_')[0]} token differs from the model's"
    return ""
