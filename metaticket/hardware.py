"""What the CPU is, for the choices that depend on it: its model name and the vector extensions that change float
speed and rounding (``cpu_info``), and where a fast path is known to break on one of them (``channels_last_unsafe``).
"""

from __future__ import annotations

import platform
from pathlib import Path

# the extensions a result line names: they decide which kernels torch and oneDNN run
FLAGS_OF_NOTE = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

# A supervised ResNet-18 with supermask convolutions at model.width 0.0625 and 0.125 (4 and 8 channels in the first
# stage) in channels-last order aborted with glibc heap corruption on an AVX-512 + AMX Xeon, every time, and ran with
# contiguous tensors (issue 35). It did not reproduce on AVX2 machines. Until the op is found on such a machine, CPUs
# with AMX run supermask convolutions in contiguous order.
CHANNELS_LAST_CRASH_FLAGS = frozenset({"amx_tile"})

CPUINFO = Path("/proc/cpuinfo")


def cpu_info(cpuinfo: str | None = None) -> dict:
    """``{"model": name, "flags": [extensions of note]}`` of this CPU, read from :data:`CPUINFO` (or the given
    text in its format); off Linux the model is ``platform``'s and the flags are empty."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return {"model": platform.processor() or platform.machine(), "flags": []}
    first = cpuinfo.split("\n\n")[0]  # the first core's block: every core of one machine has the same
    field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    flags = set(field.get("flags", "").split())
    return {"model": field.get("model name", platform.machine()), "flags": sorted(flags & set(FLAGS_OF_NOTE))}


def channels_last_unsafe(flags: list[str] | None = None) -> bool:
    """Whether supermask convolutions must not run in channels-last order on a CPU with these ``flags`` (default:
    this CPU's): it has one of :data:`CHANNELS_LAST_CRASH_FLAGS`."""
    flags = cpu_info()["flags"] if flags is None else flags
    return bool(CHANNELS_LAST_CRASH_FLAGS & set(flags))
