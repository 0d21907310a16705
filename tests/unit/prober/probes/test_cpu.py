"""CPU probe: /proc/cpuinfo parsing from recorded x86 and ARM text, flag filtering, this machine."""

from __future__ import annotations

from pathlib import Path

from prober.probes.cpu import X86_FLAGS, keep_flags, parse_cpuinfo, read_cpu

DATA = Path(__file__).parents[1] / "data"


def _cpuinfo(name: str) -> str:
    return (DATA / name).read_text()


def test_x86_model_name_and_flags_from_sapphire_rapids():
    info = parse_cpuinfo(_cpuinfo("cpuinfo_x86_sapphire_rapids.txt"))
    assert info.model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert info.flags == (
        "amx_bf16", "amx_int8", "amx_tile", "avx", "avx2", "avx512_bf16", "avx512_vnni",
        "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vbmi", "avx512vl",
        "avx_vnni", "bmi2", "f16c", "fma", "sse4_2",
    )  # fmt: skip


def test_x86_flags_drop_everything_engines_do_not_build_with():
    info = parse_cpuinfo(_cpuinfo("cpuinfo_x86_sapphire_rapids.txt"))
    assert set(info.flags) <= X86_FLAGS
    for unrelated in ("fpu", "sse", "hypervisor", "avx512_fp16", "sha_ni", "avx512ifma"):
        assert unrelated not in info.flags


def test_x86_without_avx_keeps_only_sse4_2():
    info = parse_cpuinfo(_cpuinfo("cpuinfo_x86_nehalem.txt"))
    assert info.model.startswith("Intel(R) Core(TM) i7 CPU")
    assert info.flags == ("sse4_2",)


def test_arm_server_core_is_named_from_its_part_number():
    info = parse_cpuinfo(_cpuinfo("cpuinfo_aarch64_graviton3.txt"))
    assert info.model == "ARM Neoverse-V1"


def test_arm_features_are_normalised_to_one_vocabulary():
    info = parse_cpuinfo(_cpuinfo("cpuinfo_aarch64_graviton3.txt"))
    assert info.flags == ("bf16", "dotprod", "fp16", "i8mm", "neon", "sve")


def test_raspberry_pi_is_named_by_its_core_not_its_board():
    info = parse_cpuinfo(_cpuinfo("cpuinfo_aarch64_raspberry_pi4.txt"))
    assert info.model == "ARM Cortex-A72"
    assert info.flags == ("neon",)


def test_unknown_arm_part_falls_back_to_hardware_line():
    text = (
        "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x51\nCPU part\t: 0x801\n\n"
        "Hardware\t: Qualcomm Technologies, Inc SM8150\n"
    )
    assert parse_cpuinfo(text).model == "Qualcomm Technologies, Inc SM8150"


def test_unknown_arm_part_without_hardware_line_names_vendor_and_part():
    text = "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x61\nCPU part\t: 0x022\n"
    assert parse_cpuinfo(text).model == "Apple CPU part 0x022"


def test_flags_are_those_every_cpu_has():
    text = (
        "processor\t: 0\nmodel name\t: Hybrid\nflags\t\t: sse4_2 avx avx2 avx512f\n\n"
        "processor\t: 1\nmodel name\t: Hybrid\nflags\t\t: sse4_2 avx avx2\n"
    )
    assert parse_cpuinfo(text).flags == ("avx", "avx2", "sse4_2")


def test_empty_cpuinfo_gives_no_model_and_no_flags():
    info = parse_cpuinfo("")
    assert info.model == "" and info.flags == ()


def test_keep_flags_accepts_linux_and_darwin_arm_names():
    assert keep_flags({"asimd", "asimddp", "neon", "crc32", "sve2"}) == ("dotprod", "neon", "sve2")


def test_read_cpu_on_this_machine_is_sane():
    facts = read_cpu("linux", arm64_mac=False)
    assert facts.model
    assert facts.threads >= 1
    assert 1 <= facts.cores <= facts.threads
    assert list(facts.flags) == sorted(facts.flags)
