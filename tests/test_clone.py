"""learner.clone(): the learn2learn-style API for a meta-training loop of your own. Its meta-gradient equals
meta_step's for every method and order (float64), the Meta-ticket one equals a plain per-task loop of the
reference formulation written in tests/test_score_grad.py, a clone never writes to the model, and bad losses are
refused with a message."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import double, learner, meta_step_grads, reference_score_grads, tasks
from torch import nn

from metaticket import MAML, MetaTicket, Tasks, build_model, make_layers
from metaticket.meta.modules import ModelChanged


def clone_grads(lrn, batch: Tasks, steps: int) -> dict[str, torch.Tensor]:
    """The meta-gradient of the mean query loss, formed the learn2learn way: clone, adapt ``steps`` times,
    backward each task's query loss / B."""
    for p in lrn.parameters():
        p.grad = None
    for i in range(len(batch)):
        task = lrn.clone()
        for _ in range(steps):
            task.adapt(F.cross_entropy(task(batch.support_x[i]), batch.support_y[i]))
        (F.cross_entropy(task(batch.query_x[i]), batch.query_y[i]) / len(batch)).backward()
    out = {n: p.grad.clone() for n, p in lrn.model.named_parameters() if p.grad is not None}
    for p in lrn.parameters():
        p.grad = None
    return out


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize(("method", "score_grad"), [("maml", "reference"), ("anil", "reference"),
                                                    ("boil", "reference"), ("metaticket", "reference"),
                                                    ("metaticket", "start")])
def test_clone_meta_gradient_equals_meta_step(method, score_grad, first_order, steps):
    batch = double(tasks(batch=3, queries=3))
    kw = {"score_grad": score_grad, "init_sparsity": 0.5} if method == "metaticket" else {}
    lrn = learner(method, vectorize="loop", first_order=first_order, inner_steps=steps, **kw).double()
    got = clone_grads(lrn, batch, steps)
    want = meta_step_grads(lrn, batch)  # meta_step's gradient is taken at the same (not yet updated) parameters
    assert got.keys() == want.keys() and got
    scale = max(float(g.abs().max()) for g in want.values())
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-9, atol=1e-12 * scale)


@pytest.mark.parametrize("first_order", [False, True])
def test_clone_meta_ticket_gradient_equals_the_plain_reference_loop(first_order):
    batch = double(tasks(batch=3, queries=3))
    lrn = learner("metaticket", first_order=first_order, inner_steps=2, init_sparsity=0.5).double()
    want = reference_score_grads(lrn, batch, 2, first_order)
    got = clone_grads(lrn, batch, 2)
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-9, atol=1e-12)


def test_second_order_differs_from_first_order():
    """The control: the second-order terms the clone keeps are not negligible here, so the checks above see them."""
    batch = double(tasks(batch=3, queries=3))
    second = clone_grads(learner("maml", first_order=False).double(), batch, 1)
    first = clone_grads(learner("maml", first_order=True).double(), batch, 1)
    a = torch.cat([g.flatten() for g in second.values()])
    b = torch.cat([g.flatten() for g in first.values()])
    assert float((a - b).norm() / a.norm()) > 1e-3


def test_a_clone_never_writes_to_the_model_and_keeps_pruned_weights_zero():
    torch.manual_seed(0)
    lrn = learner("metaticket", init_sparsity=0.5)
    batch = tasks(batch=1, queries=2)
    before = {k: v.clone() for k, v in lrn.model.state_dict().items()}
    task = lrn.clone()
    for _ in range(3):
        task.adapt(F.cross_entropy(task(batch.support_x[0]), batch.support_y[0]))
    after = lrn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    mask = task.grad_masks
    assert mask, "a Meta-ticket clone carries gradient masks"
    for k, m in mask.items():
        assert bool((task.params[k][m == 0] == 0).all()), k
        assert float((m == 0).float().mean()) > 0.1
    other = task.clone()
    other.adapt(F.cross_entropy(other(batch.support_x[0]), batch.support_y[0]))
    changed = [k for k in task.params if task.params[k] is not other.params[k]]
    assert changed and set(changed) <= set(task.inner_names)


def test_adapt_refuses_losses_it_cannot_use():
    lrn = learner("maml")
    task = lrn.clone()
    x = tasks(batch=1).support_x[0]
    with pytest.raises(ValueError, match="scalar loss"):
        task.adapt(task(x))
    with pytest.raises(ValueError, match="does not depend on this clone"):
        task.adapt(torch.tensor(1.0))


def test_a_learn2learn_style_loop_on_a_users_model_learns():
    """A custom loop in the learn2learn shape over a user's own nn.Sequential (stock BatchNorm) and over a
    supermask MLP: meta-training on 8 tasks lowers their adapted query loss, for MAML and for Meta-ticket."""
    g = torch.Generator().manual_seed(0)

    fixed = []
    for _ in range(8):  # 5-way tasks whose classes are separable clusters in 16 dims
        centers = torch.randn(5, 16, generator=g) * 2
        y = torch.arange(5).repeat(2)
        x = centers[y] + 0.3 * torch.randn(10, 16, generator=g)
        fixed.append((x[:5], y[:5], x[5:], y[5:]))

    def meta_loss(lrn) -> float:
        total = 0.0
        for xs, ys, xq, yq in fixed:
            task = lrn.clone()
            task.adapt(F.cross_entropy(task(xs), ys))
            total += float(F.cross_entropy(task(xq), yq).detach())
        return total / len(fixed)

    torch.manual_seed(0)
    dense = nn.Sequential(  # torch's BatchNorm: the learner swaps in task BatchNorm, and says so
        nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 5))
    layers = make_layers(supermask=True, generator=torch.Generator().manual_seed(1), mask="threshold")
    sparse = build_model("mlp", num_classes=5, width=0.125, layers=layers, image_size=4)
    with pytest.warns(ModelChanged, match="BatchNorm"):
        maml = MAML(dense, inner_lr=0.5)
    for lrn, opt_lr in ((maml, 3e-3), (MetaTicket(sparse, inner_lr=0.5), 10.0)):
        opt = torch.optim.Adam(lrn.parameters(), opt_lr) if isinstance(lrn, MAML) else \
            torch.optim.SGD(lrn.parameters(), opt_lr, momentum=0.9)
        start = meta_loss(lrn)
        for step in range(80):
            opt.zero_grad()
            for xs, ys, xq, yq in fixed[4 * (step % 2):4 * (step % 2) + 4]:
                task = lrn.clone()
                task.adapt(F.cross_entropy(task(xs), ys))
                (F.cross_entropy(task(xq), yq) / 4).backward()
            opt.step()
        end = meta_loss(lrn)
        assert end < 0.8 * start, (type(lrn).__name__, start, end)
