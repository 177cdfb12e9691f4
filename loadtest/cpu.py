"""What CPU a benchmark ran on, from /proc/cpuinfo: its model and the flags that decide which
kernels run. Machines of one kind differ (AVX2 on one, AVX-512 with BF16 or AMX on another),
so every report prints both, and figures compare only within one run."""

from __future__ import annotations

from pathlib import Path

CPU_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip


def _cpuinfo(cpuinfo: str | None) -> str:
    if cpuinfo is not None:
        return cpuinfo
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of CPU_FLAGS this machine has (from /proc/cpuinfo; empty when unreadable)."""
    for line in _cpuinfo(cpuinfo).splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in CPU_FLAGS if f in have]
    return []


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name ("unknown" when /proc/cpuinfo does not say)."""
    for line in _cpuinfo(cpuinfo).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"
