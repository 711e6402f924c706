"""Fixed random masks with layer-wise sparsity ratios (Gadhikar, Mukherjee & Burkholz 2023).

A mask is drawn once, at init, for every conv/linear layer of a network (head included), with a per-layer
sparsity from one of these rules for an overall sparsity ``s`` (density ``d = 1 - s``, layer ``l`` of ``L`` in
forward order with ``n_l`` weights, ``N = sum n_l``):

- ``uniform``: every layer ``s``.
- ``er`` (Erdos-Renyi): density proportional to ``(c_in + c_out) / (c_in * c_out)``.
- ``erk`` (Erdos-Renyi-Kernel): proportional to ``(c_in + c_out + k_h + k_w) / (c_in * c_out * k_h * k_w)``.
- ``balanced``: every layer keeps the same number of weights, ``d * N / L``.
- ``pyramidal``: densities fall geometrically with depth, ``d_l = r ** l`` with ``r`` in (0, 1] solving
  ``sum_l n_l r ** l = d * N``.

For ``er``, ``erk`` and ``balanced`` a layer whose density would exceed 1 is kept dense and the others are
rescaled (repeatedly, until none exceeds 1), so the overall sparsity is always the requested one up to rounding
(each layer keeps exactly ``round(d_l * n_l)`` weights, drawn uniformly without replacement).

The kept weights are rescaled to the sparse fan-in (``1 / sqrt(1 - s_l)``). Then either the weights train densely
under the fixed mask (:class:`MaskedLinear` / :class:`MaskedConv2d`), or
edge-popup runs inside it (a supermask layer whose top-k may only pick weights the random mask kept).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaticket.core.conv import Conv2d
from metaticket.core.supermask import SUPERMASK_LAYERS, replace_module, same_geometry

Ratios = Literal["uniform", "er", "erk", "balanced", "pyramidal"]
RATIOS: tuple[str, ...] = ("uniform", "er", "erk", "balanced", "pyramidal")


def _capped_scale(sizes: list[int], raw: list[float], density: float) -> list[float]:
    """Densities ``min(1, eps * raw_l)`` with ``eps`` chosen so that ``sum d_l n_l = density * N``."""
    budget = density * sum(sizes)
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(sizes)) if i not in dense]
        remaining = budget - sum(sizes[i] for i in dense)
        eps = remaining / sum(raw[i] * sizes[i] for i in free)
        over = [i for i in free if eps * raw[i] > 1.0]
        if not over:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(sizes))]
        dense.update(over)


def _pyramid_ratio(sizes: list[int], density: float) -> float:
    """``r`` in (0, 1] with ``sum_l n_l r ** (l + 1) = density * N`` (bisection: the sum grows with ``r``)."""
    target = density * sum(sizes)
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(n * mid ** (i + 1) for i, n in enumerate(sizes)) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def layer_sparsities(shapes: list[torch.Size], sparsity: float, ratios: str) -> list[float]:
    """Per-layer sparsity (fraction pruned) of weights with ``shapes`` (forward order) for an overall ``sparsity``.

    A weight shape is ``[c_out, c_in]`` (linear) or ``[c_out, c_in, k_h, k_w]`` (conv).
    """
    if ratios not in RATIOS:
        raise ValueError(f"unknown ratios {ratios!r}; known: {', '.join(RATIOS)}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity is the fraction pruned, in [0, 1); got {sparsity}")
    if not shapes:
        return []
    density = 1.0 - sparsity
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    if ratios == "uniform":
        dens = [density] * len(sizes)
    elif ratios in ("er", "erk"):
        raw = []
        for s in shapes:
            dims = list(s[:2]) + (list(s[2:]) if ratios == "erk" else [])
            raw.append(sum(dims) / float(torch.Size(s).numel() if ratios == "erk" else s[0] * s[1]))
        dens = _capped_scale(sizes, raw, density)
    elif ratios == "balanced":
        dens = _capped_scale(sizes, [1.0 / n for n in sizes], density)
    else:
        r = _pyramid_ratio(sizes, density)
        dens = [r ** (i + 1) for i in range(len(sizes))]
    return [1.0 - min(1.0, max(0.0, d)) for d in dens]


def draw_mask(shape: torch.Size, sparsity: float, generator: torch.Generator | None = None) -> Tensor:
    """0/1 float mask of ``shape`` keeping exactly ``round((1 - sparsity) * n)`` entries, uniformly at random."""
    n = int(torch.Size(shape).numel())
    keep = int(round((1.0 - sparsity) * n))
    mask = torch.zeros(n)
    mask[torch.randperm(n, generator=generator)[:keep]] = 1.0
    return mask.view(shape)


class MaskedLinear(nn.Linear):
    """``y = x @ (weight * fixed_mask).T + bias``: trainable weights under a fixed 0/1 mask; x: [N, in]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("fixed_mask", torch.ones_like(self.weight))

    def hard_mask(self) -> Tensor:
        return self.fixed_mask

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.fixed_mask, self.bias)


class MaskedConv2d(Conv2d):
    """2-D convolution with weight ``weight * fixed_mask`` (fixed 0/1 mask, trainable weights); x: [N, C, H, W]."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("fixed_mask", torch.ones_like(self.weight))

    def hard_mask(self) -> Tensor:
        return self.fixed_mask

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.fixed_mask, self.bias)


def prunable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) of every conv/linear layer (plain, masked or supermask) in forward-definition order."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            yield name, module


@torch.no_grad()
def apply_random_masks(model: nn.Module, sparsity: float, ratios: str,
                       generator: torch.Generator | None = None) -> dict[str, float]:
    """Draw a fixed random mask for every conv/linear layer of ``model`` (in place); return the layer sparsities.

    Every layer's weights are multiplied by ``1 / sqrt(1 - s_l)``: the kept fan-in is a ``1 - s_l`` fraction of
    the dense one, and this keeps the Kaiming variance of each layer's output (without it a network with no
    normalization, like Conv6, starts with a signal that shrinks by ``sqrt(1 - s_l)`` per layer; at 90% sparsity
    edge-popup inside the mask then stayed at chance level in our runs). Plain layers become
    :class:`MaskedLinear` / :class:`MaskedConv2d` (weights trained under the mask); supermask layers get the mask
    as their ``source`` (edge-popup then prunes inside it, like plain edge-popup without further rescaling).
    """
    layers = list(prunable_layers(model))
    if not layers:
        raise ValueError("the model has no conv or linear layer to mask")
    per_layer = layer_sparsities([layer.weight.shape for _, layer in layers], sparsity, ratios)
    out: dict[str, float] = {}
    for (name, layer), s in zip(layers, per_layer):
        mask = draw_mask(layer.weight.shape, s, generator).to(layer.weight.device)
        scale = 1.0 / max(float(mask.mean()), 1e-12) ** 0.5  # the drawn mask's density (s_l up to rounding)
        if isinstance(layer, SUPERMASK_LAYERS):
            layer.scale_weights(scale)
            layer.set_source(mask)
        else:
            new = same_geometry(layer, MaskedLinear, MaskedConv2d)
            new.to(device=layer.weight.device)
            new.weight.copy_(layer.weight * scale)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
            new.fixed_mask.copy_(mask)
            replace_module(model, name, new)
        out[name] = 1.0 - float(mask.mean())
    return out
