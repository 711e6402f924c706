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
          steps: int, first_order: bool = False, grad_masks: dict[str, Tensor] | None = None,
          engine: str = "func", loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> Params:
    """``steps`` SGD steps with learning rate ``lr`` on ``params[inner_names]``; the rest stay fixed.

    x: [N, ...] support inputs, y: [N] labels (or the targets ``loss`` takes: the task's mean loss of
    (predictions, y), cross-entropy by default). ``grad_masks`` (0/1, shaped like the named parameters)
    multiply those gradients, so pruned weights stay exactly zero. ``engine="func"`` differentiates with
    ``torch.func.grad`` and works under ``torch.func.vmap``; ``engine="autograd"`` uses ``torch.autograd.grad``
    (one task at a time, less dispatch overhead; the inner tensors must require grad for second order).
    """
    gmask = grad_masks or {}
    inner = {k: params[k] for k in inner_names}
    rest = {k: v for k, v in params.items() if k not in inner}

    def support_loss(inner: Params) -> Tensor:
        return loss(forward({**rest, **inner}, x), y)

    def step(inner: Params, grads: Params) -> Params:
        # one fused op per weight (w - lr * g [* mask]): at MLP width 8 the weight-sized elementwise ops of the
        # update and its backward were a quarter of a second-order meta-step (benchmarks/README.md, speed)
        return {k: torch.addcmul(w, grads[k], gmask[k], value=-lr) if k in gmask else torch.add(w, grads[k], alpha=-lr)
                for k, w in inner.items()}

    if engine == "autograd":
        with torch.enable_grad():
            inner = {k: w if w.requires_grad else w.detach().requires_grad_() for k, w in inner.items()}
            for _ in range(steps):
                grads = torch.autograd.grad(support_loss(inner), list(inner.values()), create_graph=not first_order)
                inner = step(inner, dict(zip(inner, grads)))
        return {**rest, **inner}
    if engine != "func":
        raise ValueError(f"unknown engine {engine!r}; known: func, autograd")
    for _ in range(steps):
        grads = torch.func.grad(support_loss)(inner)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        inner = step(inner, grads)
    return {**rest, **inner}
