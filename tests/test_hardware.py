"""The CPU facts result lines record (/proc/cpuinfo read right), and the allocator setting of run commands."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from metaticket import hardware

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_cpu_info_reads_the_model_and_the_flags_of_note(tmp_path, monkeypatch):
    assert hardware.cpu_info(CPUINFO) == {"model": "Intel(R) Xeon(R) Platinum 8480+",
                                          "flags": ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f"]}
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: sse2 avx2 fma\n")
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "cpuinfo")
    assert hardware.cpu_info() == {"model": "AMD EPYC", "flags": ["avx2"]}
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "missing")
    assert hardware.cpu_info()["flags"] == []


FAULTS = """
import resource, sys, torch
from metaticket import MetaLearner, Tasks, build_model, make_layers
from metaticket.hardware import keep_freed_memory
if sys.argv[1] == "keep":
    kept = keep_freed_memory()
else:  # every block of 1 MiB or more mmapped and handed back when freed, with no adaptive threshold
    import ctypes
    kept = ctypes.CDLL(None).mallopt(-3, 1 << 20) == 1 and None  # M_MMAP_THRESHOLD
torch.manual_seed(0)
model = build_model("mlp", num_classes=5, width=8.0, layers=make_layers(supermask=True, mask="threshold"))
learner = MetaLearner(model, method="metaticket", inner_lr=0.4, outer_steps=100)
b, n = 4, 5
batch = Tasks(torch.randn(b, n, 1, 28, 28), torch.arange(5).repeat(b, 1), torch.randn(b, n, 1, 28, 28),
              torch.arange(5).repeat(b, 1))
for _ in range(2):
    learner.meta_step(batch, sync=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    learner.meta_step(batch, sync=False)
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_freed_memory_stops_the_page_faults_of_every_meta_step():
    """Handed back to the OS when freed, a width-8 Meta-ticket step's weight-sized temporaries fault fresh pages
    in on every step; kept, they are reused: far fewer faults per step than one 8 MB tensor has pages (2,048).
    glibc's defaults start out handing them back and may or may not stop (their mmap threshold adapts to the
    order of frees: 2 to 13,200 faults per step for the same code), so the "fresh" run fixes the threshold."""
    faults = {}
    for mode in ("fresh", "keep"):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert out.returncode == 0, out.stderr
        kept, faults[mode] = out.stdout.split()
        assert kept == ("True" if mode == "keep" else "None")
    assert float(faults["keep"]) < 1024 and float(faults["keep"]) < float(faults["fresh"]) / 5, faults


def test_run_malloc_picks_the_allocator_setting(monkeypatch):
    from metaticket.config import ConfigError, load_config
    from metaticket.runs import commands

    calls = []
    monkeypatch.setattr(commands, "keep_freed_memory", lambda: calls.append(1) or True)
    commands.setup(load_config("omniglot/quickstart"))
    commands.setup(load_config("omniglot/quickstart", ["run.malloc=system"]))
    assert calls == [1]
    with pytest.raises(ConfigError, match="malloc"):
        load_config("omniglot/quickstart", ["run.malloc=jemalloc"])
