"""Model registry: named builders that take layer factories (one definition, dense or supermask)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from metaticket.core.conv import Conv2d
from metaticket.core.norm import TaskBatchNorm1d, TaskBatchNorm2d
from metaticket.core.slots import SlotConv2d, SlotLinear
from metaticket.core.supermask import SupermaskConv2d, SupermaskLinear, sample_init

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}


def _plain_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Module:
    return nn.Linear(in_features, out_features, bias=bias)


def _plain_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                bias: bool = False) -> nn.Module:
    return Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)


class FeaturesHead(nn.Module):
    """A network that is ``features`` (x -> [N, D]) followed by a linear ``head`` ([N, D] -> logits [N, classes])."""

    features: nn.Module
    head: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _meta_bn1d(n: int) -> nn.Module:
    return TaskBatchNorm1d(n)


def _meta_bn2d(n: int) -> nn.Module:
    return TaskBatchNorm2d(n)


def _norm_factories(norm: str, affine: bool, eps: float) -> dict[str, Callable[[int], nn.Module]]:
    """``norm1d``/``norm2d`` of :class:`Layers` for ``norm`` ("task" or "batch") with ``eps``."""
    if norm == "task":
        return dict(norm1d=lambda n: TaskBatchNorm1d(n, eps=eps), norm2d=lambda n: TaskBatchNorm2d(n, eps=eps))
    return dict(norm1d=lambda n: nn.BatchNorm1d(n, eps=eps, affine=affine),
                norm2d=lambda n: nn.BatchNorm2d(n, eps=eps, affine=affine))


@dataclass(frozen=True)
class Layers:
    """Factories a builder uses for its layers; swap them to get supermask or other variants.

    ``conv(in, out, k, stride, padding, bias)``, ``linear(in, out, bias)``, ``head(in, out, bias)``,
    ``norm1d(n)``, ``norm2d(n)``.
    """

    conv: Callable[..., nn.Module] = _plain_conv
    linear: Callable[..., nn.Module] = _plain_linear
    head: Callable[..., nn.Module] = _plain_linear
    norm1d: Callable[[int], nn.Module] = field(default=_meta_bn1d)
    norm2d: Callable[[int], nn.Module] = field(default=_meta_bn2d)


DENSE = Layers()  # plain layers with meta-model BatchNorm


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` under ``name``. Registering the same function again (a re-run notebook cell:
    same module and name) replaces it; another function under a taken name is refused."""

    def wrap(builder: Builder) -> Builder:
        old = _REGISTRY.get(name)
        same = old is not None and (old.__module__, old.__qualname__) == (builder.__module__, builder.__qualname__)
        if old is not None and not same:
            raise ValueError(f"model {name!r} is already registered by {old.__module__}.{old.__qualname__}; "
                             f"choose another name")
        _REGISTRY[name] = builder
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_arguments(name: str) -> list[str]:
    """The keyword arguments the builder of model ``name`` takes."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return list(inspect.signature(_REGISTRY[name]).parameters)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; an unknown name or argument raises with the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    builder = _REGISTRY[name]
    accepted = inspect.signature(builder).parameters
    extra = sorted(set(kwargs) - set(accepted))
    if extra:
        raise ValueError(f"model {name!r} takes no argument(s) {extra}; it takes: {', '.join(accepted)}")
    return builder(**kwargs)


def make_layers(*, supermask: bool, mask: str = "threshold", sparsity: float = 0.0, init: str = "kaiming_normal",
                init_sparsity: float = 0.0, dense_head: bool = True, dense_first: bool = False,
                generator: torch.Generator | None = None,
                norm: str = "task", norm_affine: bool = True, norm_eps: float = 1e-5, slots: int = 0,
                slot_select: str = "greedy") -> Layers:
    """Layer factories: every conv/linear drawn from ``init`` with ``generator``.

    With ``supermask=True`` the body (and the head unless ``dense_head``; the first layer unless ``dense_first``)
    are supermask layers; with
    ``slots=K`` (K >= 2) they are Slot Machine layers with K values per connection instead.
    ``norm="task"``: meta-model BatchNorm (each batch's own statistics); ``norm="batch"``: standard BatchNorm
    with running statistics for supervised training (``norm_affine=False`` for pruning, as edge-popup does).
    ``norm_eps``: the BatchNorm epsilon (torch's 1e-5 by default; the Meta-ticket reference code uses 1e-3).
    """
    opts = dict(mask=mask, sparsity=sparsity, init=init, init_sparsity=init_sparsity, generator=generator)
    if norm not in ("task", "batch"):
        raise ValueError(f"unknown norm {norm!r}; known: task, batch")
    norms = _norm_factories(norm, norm_affine, norm_eps)

    def dense_linear(i: int, o: int, bias: bool = True) -> nn.Module:
        return _drawn(nn.Linear(i, o, bias=bias), init, generator)

    def dense_conv(i: int, o: int, k: int, stride: int = 1, padding: int = 0, bias: bool = False) -> nn.Module:
        return _drawn(Conv2d(i, o, k, stride=stride, padding=padding, bias=bias), init, generator)

    if slots:
        slot_opts = dict(slots=slots, select=slot_select, init=init, generator=generator)

        def slot_linear(i: int, o: int, bias: bool = True) -> nn.Module:
            return SlotLinear(i, o, bias=bias, **slot_opts)

        def slot_conv(i: int, o: int, k: int, stride: int = 1, padding: int = 0, bias: bool = False) -> nn.Module:
            return SlotConv2d(i, o, k, stride=stride, padding=padding, bias=bias, **slot_opts)

        return Layers(conv=slot_conv, linear=slot_linear, head=dense_linear if dense_head else slot_linear, **norms)
    if not supermask:
        return Layers(conv=dense_conv, linear=dense_linear, head=dense_linear, **norms)

    first = [dense_first]  # the next conv or linear layer built is the network's first: dense

    def sm_linear(i: int, o: int, bias: bool = True) -> nn.Module:
        if first[0]:
            first[0] = False
            return dense_linear(i, o, bias)
        return SupermaskLinear(i, o, bias=bias, **opts)

    def sm_conv(i: int, o: int, k: int, stride: int = 1, padding: int = 0, bias: bool = False) -> nn.Module:
        if first[0]:
            first[0] = False
            return dense_conv(i, o, k, stride, padding, bias)
        return SupermaskConv2d(i, o, k, stride=stride, padding=padding, bias=bias, **opts)

    return Layers(conv=sm_conv, linear=sm_linear, head=dense_linear if dense_head else sm_linear, **norms)


@torch.no_grad()
def _drawn(layer: nn.Module, init: str, generator: torch.Generator | None) -> nn.Module:
    layer.weight.copy_(sample_init(layer.weight.shape, init, generator))
    if layer.bias is not None:
        layer.bias.zero_()
    return layer
