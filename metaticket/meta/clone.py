"""Adapt-in-your-own-loop: a differentiable copy of a learner's network for one task (learn2learn's ``clone``).

``MetaLearner.clone()`` returns a :class:`Clone`: call it on inputs, ``adapt(loss)`` takes one SGD step of the
inner parameters on a loss computed from its outputs, and a query loss computed after adaptation back-propagates
into the learner's outer parameters (second order unless ``first_order``), so a custom meta-training loop is::

    learner = MAML(model, inner_lr=0.5)             # or MetaTicket(supermask_model, ...), ANIL, BOIL
    opt = torch.optim.Adam(learner.parameters(), 1e-3)
    for batch in tasks:
        opt.zero_grad()
        for xs, ys, xq, yq in batch:
            task = learner.clone()
            task.adapt(F.cross_entropy(task(xs), ys))
            (F.cross_entropy(task(xq), yq) / len(batch)).backward()
        opt.step()

A clone holds a parameter dict (the learner's dense-twin names) and never writes to the model: nothing is
copied but the tensors of the adapted parameters, each a function of the start. For Meta-ticket the start is the
masked weights ``w * mask(scores)`` and each step's gradient is multiplied by the learner's gradient masks, so
pruned weights stay exactly zero and the score gradient is the learner's ``score_grad`` formulation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Params = dict[str, Tensor]


class Clone:
    """One task's network: ``forward(params, x)`` over ``params`` (a dict), adapting ``inner_names`` by SGD with
    learning rate ``lr``; ``grad_masks`` multiply those gradients (Meta-ticket's masks). Second-order unless
    ``first_order`` (each step's gradient detached, as in first-order MAML)."""

    def __init__(self, forward: Callable[[Params, Tensor], Tensor], params: Params, inner_names: Sequence[str], *,
                 lr: float, first_order: bool, grad_masks: dict[str, Tensor] | None = None) -> None:
        self._forward = forward
        self.inner_names = list(inner_names)
        self.lr, self.first_order = lr, first_order
        self.grad_masks = dict(grad_masks or {})
        # an inner parameter that is not learned by the outer loop (Meta-ticket's head, a method's frozen part)
        # still needs a graph to be differentiated by: a leaf of its own, its value unchanged
        self.params = {k: v.detach().requires_grad_() if k in self.inner_names and not v.requires_grad else v
                       for k, v in params.items()}

    def __call__(self, x: Tensor) -> Tensor:
        """The network with this clone's parameters on x [N, ...] -> outputs [N, ...] (logits [N, ways])."""
        return self._forward(self.params, x)

    def adapt(self, loss: Tensor, *, lr: float | None = None, first_order: bool | None = None) -> None:
        """One SGD step on ``loss`` (a scalar computed from this clone's outputs): the inner parameters become
        ``p - lr * grad * grad_mask``; gradients of later losses flow through the step unless ``first_order``."""
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError(f"adapt takes the scalar loss of this clone's outputs, got "
                             f"{tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__}")
        if not loss.requires_grad:
            raise ValueError("the loss does not depend on this clone's parameters: compute it from clone(x), "
                             "not from the model or under torch.no_grad()")
        lr = self.lr if lr is None else lr
        first = self.first_order if first_order is None else first_order
        names = [k for k in self.inner_names if self.params[k].requires_grad]
        grads = torch.autograd.grad(loss, [self.params[k] for k in names], create_graph=not first, allow_unused=True)
        for k, g in zip(names, grads):
            if g is None:  # a parameter this loss does not reach (e.g. a head the outputs bypass): unchanged
                continue
            if first:
                g = g.detach()
            if k in self.grad_masks:
                g = g * self.grad_masks[k]
            self.params[k] = self.params[k] - lr * g

    def clone(self) -> Clone:
        """A copy that adapts on from here without changing this one (both share the graph up to now)."""
        out = Clone(self._forward, dict(self.params), self.inner_names, lr=self.lr, first_order=self.first_order,
                    grad_masks=self.grad_masks)
        return out

    def parameters(self) -> list[Tensor]:
        """The clone's current tensors (views of the graph, not leaves: optimize the learner's, not these)."""
        return list(self.params.values())
