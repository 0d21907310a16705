"""macOS facts from `sysctl`: the chip's name, arm64 hardware under Rosetta, CPU feature flags.

Parsing (`parse_hw_optional`, `parse_intel_features`) is pure; `sysctl()` runs the tool.
"""

from __future__ import annotations

import logging
import os
import subprocess

log = logging.getLogger("lmforge.prober")

# launchd agents get a minimal PATH; sysctl lives here on every macOS release.
_SYSCTL = "/usr/sbin/sysctl" if os.path.exists("/usr/sbin/sysctl") else "sysctl"

# hw.optional keys that llama.cpp and MLX builds care about, named as the
# Linux probe names them so that cpu_flags reads the same on both systems.
_ARM_FEATURES = {
    "hw.optional.neon": "neon",
    "hw.optional.AdvSIMD": "neon",
    "hw.optional.arm.FEAT_FP16": "fp16",
    "hw.optional.arm.FEAT_DotProd": "dotprod",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.arm.FEAT_SME": "sme",
    "hw.optional.arm.FEAT_SME2": "sme2",
}

# Intel Macs spell a few ISA names differently from Linux's /proc/cpuinfo.
_INTEL_ALIASES = {
    "avx1.0": "avx",
    "sse4.2": "sse4_2",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "avxvnni": "avx_vnni",
}


def sysctl(*names: str) -> str | None:
    """The values of sysctl `names`, one a line; None when the tool or a key is missing."""
    try:
        done = subprocess.run(
            [_SYSCTL, "-n", *names], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("sysctl %s failed: %s", " ".join(names), exc)
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def chip_name() -> str | None:
    """'Apple M2 Pro' on Apple Silicon, the Intel brand string on an Intel Mac."""
    return sysctl("machdep.cpu.brand_string")


def arm64_hardware() -> bool:
    """True on Apple Silicon, even when this Python runs translated under Rosetta."""
    return sysctl("hw.optional.arm64") == "1"


def cpu_flags(arm64: bool) -> tuple[str, ...]:
    if arm64:
        return parse_hw_optional(sysctl_all("hw.optional") or "")
    text = sysctl("machdep.cpu.features", "machdep.cpu.leaf7_features")
    return parse_intel_features(text or "")


def sysctl_all(prefix: str) -> str | None:
    """`sysctl <prefix>` (names and values) for a whole subtree."""
    try:
        done = subprocess.run(
            [_SYSCTL, prefix], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_hw_optional(text: str) -> tuple[str, ...]:
    """Feature flags from `sysctl hw.optional` output ('hw.optional.arm.FEAT_I8MM: 1' lines)."""
    found = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip() == "1" and key.strip() in _ARM_FEATURES:
            found.add(_ARM_FEATURES[key.strip()])
    return tuple(sorted(found))


def parse_intel_features(text: str) -> tuple[str, ...]:
    """Every token of machdep.cpu.features / leaf7_features, in the Linux flag vocabulary."""
    tokens = (token.lower() for token in text.split())
    return tuple(sorted({_INTEL_ALIASES.get(token, token) for token in tokens}))
