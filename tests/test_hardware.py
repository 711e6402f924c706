"""The CPU facts result lines record: /proc/cpuinfo read right."""

from __future__ import annotations

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
