"""What the CPU is (its model name and the vector extensions that change float speed and rounding, as result lines
record them), and how the process's allocator is set for training (:func:`keep_freed_memory`)."""

from __future__ import annotations

import ctypes
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


# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit (4 MiB x sizeof(long))
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MiB (and up to 256 MiB free at the heap's top) for reuse,
    instead of handing them back to the OS and faulting fresh zeroed pages in on the next allocation.

    A meta-step allocates and frees weight-sized tensors (8 MB at MLP width 8) dozens of times; with glibc's
    defaults the freed memory went back to the OS and every step faulted it in again: a width-8 Meta-ticket step
    (meta-batch 4, one thread) took about 10,900 page faults, kept 79 (glibc's adaptive mmap threshold stops this
    for some orders of frees and not others: 2 to 13,200 per step for the same code; tests/test_hardware.py fixes
    the threshold to test it), and 178-202 ms
    against 110-168 ms with two training runs on the machine (MAML: 82-108 against 61-81; benchmarks/README.md).
    The price: the process keeps its peak heap instead of shrinking after it.
    Process-wide, so only the run commands call it (``run.malloc: keep``, the default); returns whether it took
    effect (False off glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to set
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
