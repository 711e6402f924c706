"""1x1 strided convolutions keep off oneDNN's heap-corrupting kernel (issue 35, metaticket/core/conv.py) and give the
numbers of ``F.conv2d``: each conv layer kind checked against float64, and a channels-last forward and backward of
the geometry that crashed run in a subprocess under glibc's checking allocator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from metaticket.core.conv import Conv2d, strided_pointwise
from metaticket.core.randommask import MaskedConv2d
from metaticket.core.slots import SlotConv2d
from metaticket.core.supermask import SupermaskConv2d
from metaticket.models.registry import build_model, make_layers

MALLOC_DEBUG = [p for p in ("/lib/x86_64-linux-gnu/libc_malloc_debug.so.0", "/usr/lib64/libc_malloc_debug.so.0",
                            "/lib64/libc_malloc_debug.so.0") if Path(p).exists()]


def layer(kind: str, stride: int, kernel: int = 1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    if kind == "plain":
        return Conv2d(4, 8, kernel, stride=stride, padding=0)
    if kind == "supermask":
        return SupermaskConv2d(4, 8, kernel, stride=stride, mask="threshold", generator=g)
    if kind == "slot":
        return SlotConv2d(4, 8, kernel, stride=stride, generator=g)
    m = MaskedConv2d(4, 8, kernel, stride=stride)
    m.fixed_mask.copy_(torch.rand(m.fixed_mask.shape, generator=g) < 0.5)
    return m


def test_the_avoided_geometry_is_exactly_1x1_unpadded_strided():
    assert strided_pointwise((1, 1), (2, 2), (0, 0)) and strided_pointwise((1, 1), (1, 2), "valid")
    assert not strided_pointwise((1, 1), (1, 1), (0, 0)) and not strided_pointwise((3, 3), (2, 2), (0, 0))
    assert not strided_pointwise((1, 1), (2, 2), (1, 1))


@pytest.mark.parametrize("kind", ["plain", "supermask", "slot", "masked"])
@pytest.mark.parametrize("stride, kernel", [(2, 1), (3, 1), (1, 1), (2, 3)])
def test_every_conv_layer_gives_f_conv2d_numbers_and_gradients(kind, stride, kernel):
    torch.manual_seed(0)
    conv = layer(kind, stride, kernel).double()
    x = torch.randn(3, 4, 11, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)  # rewritten
    x.requires_grad_()
    weight = {"plain": lambda: conv.weight, "supermask": conv.masked_weight if kind == "supermask" else None,
              "slot": getattr(conv, "selected_weight", None), "masked": lambda: conv.weight * conv.fixed_mask}[kind]()
    ref = F.conv2d(x, weight, conv.bias, conv.stride, conv.padding)
    out = conv(x)
    assert out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    ours = torch.autograd.grad(out, [x, *[p for p in conv.parameters() if p.requires_grad]], g)
    theirs = torch.autograd.grad(ref, [x, *[p for p in conv.parameters() if p.requires_grad]], g)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(ours, theirs))


def test_models_build_their_convolutions_from_the_safe_class():
    for supermask in (False, True):
        model = build_model("resnet18", num_classes=5, image_size=16, width=0.0625,
                            layers=make_layers(supermask=supermask, mask="topk", sparsity=0.5, norm="batch"))
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(isinstance(m, Conv2d) for m in convs)
        assert any(strided_pointwise(m.kernel_size, m.stride, m.padding) for m in convs)


CRASHED = """
import torch
from metaticket.models.registry import build_model, make_layers
torch.set_num_threads(1)
for supermask in (False, True):
    for width in (0.03125, 0.0625, 0.09375):  # 2, 4 and 6 channels in the first stage
        model = build_model("resnet18", num_classes=5, image_size=16, width=width,
                            layers=make_layers(supermask=supermask, mask="topk", sparsity=0.5, norm="batch"))
        model.to(memory_format=torch.channels_last)
        x = torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)
        for _ in range(3):
            model(x).logsumexp(1).sum().backward()
print("clean")
"""


def test_the_resnet_that_corrupted_the_heap_runs_clean_channels_last():
    """Under glibc's checking allocator (``libc_malloc_debug``, ``MALLOC_CHECK_=3``) the unguarded kernel aborted
    this (ResNet-18 at 2-6 first-stage channels, channels-last, forward and backward) within its first step."""
    env = {**os.environ, "MALLOC_CHECK_": "3", "OMP_NUM_THREADS": "1"}
    if MALLOC_DEBUG:
        env["LD_PRELOAD"] = MALLOC_DEBUG[0]
    done = subprocess.run([sys.executable, "-c", CRASHED], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "clean" in done.stdout, (done.returncode, done.stderr[-2000:])
