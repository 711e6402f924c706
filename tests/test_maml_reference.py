"""Our MAML against a MAML written from scratch here: hand-written forward (``x W^T + b``, ReLU), plain SGD inner
steps with ``torch.autograd.grad``, the mean query loss differentiated to the start parameters. No metaticket code
on the reference side; every execution path of ours (factored, vmap, loop), second and first order, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaticket import MAML, Tasks


def from_scratch(weights: list[torch.Tensor], batch: Tasks, lr: float, steps: int, first_order: bool
                 ) -> list[torch.Tensor]:
    """MAML's meta-gradient for the 2-layer ReLU net ``weights = [W1, b1, W2, b2]``."""
    start = [w.detach().clone().requires_grad_() for w in weights]

    def net(ws: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = ws
        return torch.relu(x.flatten(1) @ w1.T + b1) @ w2.T + b2

    total = 0.0
    for i in range(len(batch)):
        ws = list(start)
        for _ in range(steps):
            loss = F.cross_entropy(net(ws, batch.support_x[i]), batch.support_y[i])
            grads = torch.autograd.grad(loss, ws, create_graph=not first_order)
            ws = [w - lr * (g.detach() if first_order else g) for w, g in zip(ws, grads)]
        total = total + F.cross_entropy(net(ws, batch.query_x[i]), batch.query_y[i]) / len(batch)
    return list(torch.autograd.grad(total, start))


def problem() -> tuple[Tasks, nn.Module, list[torch.Tensor]]:
    """3 tasks of 5 classes (1 support, 2 query rows each) of 16 features, a 2-layer ReLU net and its weights."""
    g = torch.Generator().manual_seed(0)
    batch = Tasks(torch.randn(3, 5, 1, 4, 4, generator=g, dtype=torch.float64), torch.arange(5).repeat(3, 1),
                  torch.randn(3, 10, 1, 4, 4, generator=g, dtype=torch.float64), torch.arange(5).repeat(3, 2))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)).double()
    weights = [model[1].weight, model[1].bias, model[3].weight, model[3].bias]
    return batch, model, weights


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("vectorize", ["factored", "vmap", "loop"])
def test_maml_equals_a_from_scratch_maml(vectorize, first_order, steps):
    batch, model, weights = problem()
    want = from_scratch(weights, batch, lr=0.3, steps=steps, first_order=first_order)
    maml = MAML(model, inner_lr=0.3, inner_steps=steps, first_order=first_order, vectorize=vectorize)
    assert maml.vectorize == vectorize
    maml.meta_step(batch)
    for w, ref in zip(weights, want):
        torch.testing.assert_close(w.grad, ref, rtol=1e-10, atol=1e-13)


def test_the_reference_sees_second_order_terms():
    """The control: on these tasks first and second order differ by far more than the tolerance above."""
    batch, model, weights = problem()
    second = torch.cat([t.flatten() for t in from_scratch(weights, batch, 0.3, 2, False)])
    first = torch.cat([t.flatten() for t in from_scratch(weights, batch, 0.3, 2, True)])
    assert float((second - first).norm() / second.norm()) > 1e-2
