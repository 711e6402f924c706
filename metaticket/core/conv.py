"""A ``Conv2d`` that keeps off a oneDNN kernel which corrupts the heap (issue 35).

On CPU, torch 2.14's oneDNN runs the weight gradient of a 1x1, unpadded, strided convolution over channels-last input
with its ``jit_1x1`` backward-weights kernel, and with fewer input channels than the CPU's vector width (2-7 on
AVX2; a ResNet-18 at ``model.width`` 0.0625 and 0.125 on an AVX-512 + AMX Xeon) that kernel writes outside its
buffers: glibc aborts ("free(): invalid pointer", "corrupted double-linked list") or, worse, nothing is noticed.
A 1x1 kernel without padding reads only every ``stride``-th pixel, so the same convolution is the stride-1 one over
those pixels, ``conv(x[..., ::s, ::s], stride=1)``: same numbers, another kernel. Every conv layer of the library
(plain, supermask, slot, random mask) runs its 1x1 strided convolutions over channels-last input with fewer than
:data:`FEW_CHANNELS` input channels that way on CPU.

The minimal repro (for upstream), AVX2, torch 2.14.1, one thread::

    x = torch.randn(8, 4, 16, 16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 4, 1, 1).contiguous(memory_format=torch.channels_last)
    go = torch.randn(8, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    torch.ops.aten.convolution_backward(go, x, w, None, [2, 2], [0, 0], [1, 1], False, [0, 0], 1,
                                        [False, True, False])  # SIGABRT, or silent corruption

(``ONEDNN_VERBOSE=1`` names ``jit_1x1:avx2,backward_weights ... mb8_ic4oc8_ih16oh8kh1sh2``; with 8 or more input
channels, stride 1 or 3, a 3x3 kernel or contiguous input it runs clean.)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

# the rewrite is for channels-last input with fewer input channels than this: the kernel broke below the vector width
# (8 floats on AVX2: 2-7 channels here; 4 and 8 channels reported on AVX-512, width 16), doubled for margin. Above it
# the strided kernel stays: on a 64 -> 128 channel 32 x 32 shortcut it was 1.6x faster than the rewrite (87 vs 147 ms,
# forward + backward, batch 128, one AVX2 thread)
FEW_CHANNELS = 32


def strided_pointwise(kernel_size: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...] | str) -> bool:
    """Whether a convolution is 1x1, unpadded and strided: the geometry whose CPU kernel we avoid."""
    return tuple(kernel_size) == (1, 1) and tuple(stride) != (1, 1) and padding in ((0, 0), "valid")


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int] | str,
           dilation: tuple[int, int] = (1, 1), groups: int = 1) -> Tensor:
    """``F.conv2d`` (x: [N, C_in, H, W], weight: [C_out, C_in / groups, kh, kw]), except that a 1x1 unpadded
    strided convolution on CPU over channels-last input with few input channels runs as the stride-1 one over every
    ``stride``-th pixel (see the module docstring)."""
    if (x.device.type == "cpu" and weight.shape[1] < FEW_CHANNELS and not x.is_contiguous()
            and strided_pointwise(weight.shape[-2:], stride, padding)):
        return F.conv2d(x[..., ::stride[0], ::stride[1]], weight, bias, 1, 0, dilation, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, state dict and results) that runs through :func:`conv2d`."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros":
            return super()._conv_forward(x, weight, bias)
        return conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
