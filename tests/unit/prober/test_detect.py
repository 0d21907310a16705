"""take_snapshot on this machine, refresh_live keeping the static facts, arch normalisation."""

from __future__ import annotations

import msgspec
import pytest

from manager.protocol import HardwareNotice, HardwareSnapshot, encoder, to_manager_decoder
from prober.detect import normalise_arch, refresh_live, take_snapshot


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "x86_64"), ("AMD64", "x86_64"), ("amd64", "x86_64"), ("aarch64", "aarch64"),
     ("arm64", "arm64"), ("ARM64", "arm64")],
)  # fmt: skip
def test_arch_is_normalised(machine, arch):
    assert normalise_arch(machine) == arch


def test_snapshot_of_this_machine_is_sane():
    snap = take_snapshot()
    assert snap.os == "linux"
    assert snap.arch == normalise_arch(snap.arch)
    assert snap.cpu_model
    assert snap.cpu_threads >= 1
    assert 1 <= snap.cpu_cores <= snap.cpu_threads
    assert snap.ram_total > 0
    assert 0 < snap.ram_available <= snap.ram_total
    assert snap.apple_chip is None and snap.unified_memory is False
    assert list(snap.cpu_flags) == sorted(snap.cpu_flags)
    assert snap.taken_at > 0


def test_snapshot_travels_in_a_hardware_notice():
    snap = take_snapshot()
    decoded = to_manager_decoder.decode(encoder.encode(HardwareNotice(snapshot=snap)))
    assert decoded == HardwareNotice(snapshot=snap)


def test_refresh_live_keeps_static_facts_and_reads_the_live_ones_again():
    snap = take_snapshot()
    fresh = refresh_live(snap)
    assert fresh.taken_at >= snap.taken_at
    assert 0 < fresh.ram_available <= fresh.ram_total
    live = {"ram_available", "gpus", "taken_at"}
    for field in msgspec.structs.fields(HardwareSnapshot):
        if field.name not in live:
            assert getattr(fresh, field.name) == getattr(snap, field.name), field.name
    assert [(g.index, g.name, g.vram_total) for g in fresh.gpus] == [
        (g.index, g.name, g.vram_total) for g in snap.gpus
    ]


def test_refresh_live_never_reports_more_available_than_the_snapshot_total():
    snap = msgspec.structs.replace(take_snapshot(), ram_total=1024)
    assert refresh_live(snap).ram_available <= 1024
