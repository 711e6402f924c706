"""Slot Machines (Aladago & Torresani 2021): each connection picks one of K fixed random values.

A slot layer holds ``values`` [K, out, fan_in] drawn once from the layer's init distribution (a buffer: they
never change) and one learned score per value, ``scores`` [K, out, fan_in] (3-D for convolutions too, so
``channels_last`` conversions leave them alone). The forward pass uses, per connection, the value of

- ``greedy``: the highest score;
- ``sampled``: a draw with probability proportional to the (positive part of the) scores, redrawn at every
  training forward pass; in eval mode the highest score, so evaluation and exported tickets are deterministic.

The gradient reaches every score through a straight-through estimator: the forward value is the selected weight,
the backward pass is that of ``sum_k scores[k] * values[k]``, so ``dL/dscores[k] = dL/dw * values[k]`` (the
paper's estimator), written as ``hard + (soft - soft.detach())`` so it stays a plain-tensor expression.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from metaticket.core.conv import conv2d
from metaticket.core.supermask import fan_in, replace_module, same_geometry, sample_init

SlotSelect = Literal["greedy", "sampled"]
SLOT_SELECTS: tuple[str, ...] = ("greedy", "sampled")


def slot_index(scores: Tensor, select: str, training: bool) -> Tensor:
    """scores [K, *shape] -> chosen slot per connection, int64 [*shape]."""
    s = scores.detach()
    if select == "sampled" and training:
        # Gumbel-max: argmax(log p + Gumbel) is a draw from p; p proportional to the positive part of the scores
        gumbel = -torch.log(-torch.log(torch.rand_like(s).clamp_min(1e-20)))
        return (s.clamp_min(1e-12).log() + gumbel).argmax(0)
    return s.argmax(0)


def slot_weight(values: Tensor, scores: Tensor, index: Tensor) -> Tensor:
    """values, scores [K, *shape], index [*shape] -> weight [*shape] = values[index] (straight-through to scores)."""
    hard = values.gather(0, index.unsqueeze(0)).squeeze(0)
    soft = (scores * values).sum(0)
    return hard + (soft - soft.detach())


class SlotMixin(nn.Module):
    """Shared state of slot layers: ``values`` (buffer) and ``scores`` (parameter), both [K, out, fan_in]."""

    values: Tensor
    scores: nn.Parameter

    def _init_slots(self, shape: tuple[int, ...], k: int, select: str, init: str,
                    generator: torch.Generator | None) -> None:
        if k < 2:
            raise ValueError(f"a slot layer needs at least 2 values per connection, got slots = {k}")
        if select not in SLOT_SELECTS:
            raise ValueError(f"unknown slot selection {select!r}; known: {', '.join(SLOT_SELECTS)}")
        self.k, self.select, self.init = int(k), select, init
        self.weight_shape = torch.Size(shape)
        flat = (shape[0], fan_in(self.weight_shape))
        self.register_buffer("values", torch.stack([sample_init(self.weight_shape, init, generator).view(flat)
                                                    for _ in range(k)]))
        # positive scores (sampling needs them), on the scale of a Kaiming-uniform bound for this fan-in
        bound = math.sqrt(6.0 / flat[1])
        self.scores = nn.Parameter(torch.rand((k, *flat), generator=generator) * bound)

    def index(self) -> Tensor:
        """The slot each connection uses now, int64 [out, fan_in]."""
        return slot_index(self.scores, self.select, self.training)

    def selected_weight(self) -> Tensor:
        """The weight of this forward pass, [*weight_shape], with the straight-through gradient to ``scores``."""
        return slot_weight(self.values, self.scores, self.index()).view(self.weight_shape)

    @property
    def weight(self) -> Tensor:
        """The weight the layer computes with in eval mode (greedy choice), detached, [*weight_shape]."""
        index = self.scores.detach().argmax(0)
        return self.values.gather(0, index.unsqueeze(0)).squeeze(0).view(self.weight_shape)

    def extra_repr(self) -> str:
        return f"{self._shape_repr()}, slots={self.k}, select={self.select}, init={self.init}"

    def _shape_repr(self) -> str:
        raise NotImplementedError


class SlotLinear(SlotMixin):
    """``y = x @ W.T + bias`` with ``W`` picked from K random values per connection; x: [N, in], y: [N, out]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, slots: int = 8,
                 select: str = "greedy", init: str = "kaiming_uniform",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_slots((out_features, in_features), slots, select, init, generator)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.selected_weight(), self.bias)

    def _shape_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class SlotConv2d(SlotMixin):
    """2-D convolution whose kernel is picked from K random values per connection; x: [N, C_in, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = False, *, slots: int = 8, select: str = "greedy", init: str = "kaiming_uniform",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self._init_slots((out_channels, in_channels, kernel_size, kernel_size), slots, select, init, generator)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return conv2d(x, self.selected_weight(), self.bias, _pair(self.stride), _pair(self.padding))

    def _shape_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")


SLOT_LAYERS = (SlotLinear, SlotConv2d)


def slot_layers(model: nn.Module) -> Iterator[tuple[str, SlotMixin]]:
    """(qualified name, layer) for every slot layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, SLOT_LAYERS):
            yield name, module


def index_bits(k: int) -> int:
    """Bits a ticket needs per connection to name one of ``k`` slots: ceil(log2 k)."""
    return max(1, math.ceil(math.log2(k)))


@torch.no_grad()
def freeze_slots(model: nn.Module) -> nn.Module:
    """Replace (in place) every slot layer by a plain ``nn.Linear``/``nn.Conv2d`` holding its greedy choice.

    The result computes what the slot network computes in eval mode; its weights are ordinary trainable
    parameters, for fine-tuning the selected values (the paper's "finetuned" variant). Returns ``model``.
    """
    for name, layer in list(slot_layers(model)):
        plain = same_geometry(layer)
        plain.to(device=layer.values.device)
        plain.weight.copy_(layer.weight)
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
        replace_module(model, name, plain)
    return model
