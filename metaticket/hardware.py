"""What the CPU is: its model name and the vector extensions that change float speed and rounding, as result lines
record them."""

from __future__ import annotations

import platform
from pathlib import Path

# the extensions a result line names: they decide which kernels torch and oneDNN run
FLAGS_OF_NOTE = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

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

