"""macOS probe: parsing recorded sysctl output (runs anywhere; no sysctl needed)."""

from __future__ import annotations

from pathlib import Path

from prober.probes.apple import parse_hw_optional, parse_intel_features
from prober.probes.cpu import keep_flags

DATA = Path(__file__).parents[1] / "data"


def test_m2_hw_optional_gives_the_arm_flags_that_are_set():
    text = (DATA / "sysctl_hw_optional_m2.txt").read_text()
    assert parse_hw_optional(text) == ("bf16", "dotprod", "fp16", "i8mm", "neon")


def test_hw_optional_features_set_to_zero_are_left_out():
    assert parse_hw_optional("hw.optional.arm.FEAT_SME: 0\nhw.optional.neon: 1\n") == ("neon",)


def test_intel_mac_features_use_the_linux_names():
    features = "FPU VME SSE3 SSSE3 FMA SSE4.1 SSE4.2 POPCNT AVX1.0 F16C\n"
    features += "SMEP BMI1 AVX2 BMI2 AVX512F"
    assert keep_flags(parse_intel_features(features)) == (
        "avx", "avx2", "avx512f", "bmi2", "f16c", "fma", "sse4_2",
    )  # fmt: skip
