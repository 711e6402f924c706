"""The CPU facts runs depend on: /proc/cpuinfo read right, and the channels-last guard for supermask convolutions
on AMX CPUs (issue 35) on where it should be and off elsewhere."""

from __future__ import annotations

import pytest
import torch
from conftest import MEAN, STD, model_for, plan, toy_data

from metaticket import hardware
from metaticket.runs.monitor import Monitor
from metaticket.runs.supervised import train_supervised

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_cpu_info_reads_the_model_and_the_flags_of_note():
    info = hardware.cpu_info(CPUINFO)
    assert info == {"model": "Intel(R) Xeon(R) Platinum 8480+",
                    "flags": ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f"]}
    assert hardware.cpu_info("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: sse2 avx2 fma\n")["flags"] == ["avx2"]
    assert hardware.channels_last_unsafe(info["flags"]) and not hardware.channels_last_unsafe(["avx2", "avx512f"])


def conv_order(model: torch.nn.Module) -> set[bool]:
    return {m.weight.is_contiguous(memory_format=torch.channels_last) for m in model.modules()
            if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1}


@pytest.mark.parametrize("cpu, method, channels_last", [
    ("amx", "edgepopup", False),  # the guard: supermask convs on AMX run contiguous
    ("amx", "dense", True),  # plain convolutions keep channels-last there
    ("avx2", "edgepopup", True),  # other CPUs keep it
])
def test_channels_last_is_off_for_supermask_convs_on_amx_only(cpu, method, channels_last, tmp_path, monkeypatch,
                                                              capsys):
    text = CPUINFO if cpu == "amx" else CPUINFO.replace(" avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8", "")
    (tmp_path / "cpuinfo").write_text(text)
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "cpuinfo")
    model = model_for(method)
    train_supervised(model, toy_data(), toy_data(32, 1), MEAN, STD, plan(method, max_iterations=1), tmp_path,
                     Monitor(tmp_path, tensorboard=False), torch.device("cpu"))
    assert conv_order(model) == {channels_last}
    noted = "train.channels_last is off" in capsys.readouterr().err
    assert noted == (not channels_last)
