"""The inner loop: plain SGD on a task's support set, over a parameter dict (``torch.func``).

No module cloning and no monkey-patching: a model is a function ``forward(params, x)`` and adaptation
returns a new dict. Second-order gradients flow through the returned tensors unless ``first_order``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Params = dict[str, Tensor]
ForwardFn = Callable[[Params, Tensor], Tensor]  # (params, x [N, ...]) -> logits [N, ways]


def adapt(forward: ForwardFn, params: Params, inner_names: Sequence[str], x: Tensor, y: Tensor, *, lr: float,
          steps: int, first_order: bool = False, grad_masks: dict[str, Tensor] | None = None) -> Params:
    """``steps`` SGD steps with learning rate ``lr`` on ``params[inner_names]``; the rest stay fixed.

    x: [N, ...] support inputs, y: [N] labels. ``grad_masks`` (0/1, shaped like the named parameters)
    multiply those gradients, so pruned weights stay exactly zero. Works under ``torch.func.vmap``.
    """
    gmask = grad_masks or {}
    inner = {k: params[k] for k in inner_names}
    rest = {k: v for k, v in params.items() if k not in inner}

    def support_loss(inner: Params) -> Tensor:
        return F.cross_entropy(forward({**rest, **inner}, x), y)

    for _ in range(steps):
        grads = torch.func.grad(support_loss)(inner)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        inner = {k: w - lr * (grads[k] * gmask[k] if k in gmask else grads[k]) for k, w in inner.items()}
    return {**rest, **inner}
