"""meta.score_grad: the reference code's score gradient (the mask applied in every inner forward), on every path
Meta-ticket runs on, checked against a plain float64 per-task loop written here; and the ``start`` formulation
differs from it, so the check can fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import Spy, double, learner, meta_step_grads, reference_score_grads, tasks

from metaticket.meta.learner import MetaLearner


def metaticket(vectorize: str, score_grad: str, first_order: bool, steps: int, **kw) -> MetaLearner:
    # init_sparsity 0.5: half the weights start pruned, where the two formulations' score gradients differ most
    return learner("metaticket", vectorize=vectorize, score_grad=score_grad, first_order=first_order,
                   inner_steps=steps, init_sparsity=0.5, **kw)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("vectorize", ["factored", "vmap", "loop"])
def test_reference_score_gradient_matches_a_plain_loop(vectorize, first_order, steps, monkeypatch):
    batch = double(tasks(batch=3, queries=3))
    spy = Spy(monkeypatch)
    lrn = metaticket(vectorize, "reference", first_order, steps).double()
    want = reference_score_grads(lrn, batch, steps, first_order)
    got = meta_step_grads(lrn, batch)
    assert spy.calls == (1 if vectorize == "factored" else 0)
    assert got.keys() == want.keys() and len(got) == 4  # the 4 hidden layers' scores
    scale = max(float(g.abs().max()) for g in want.values())
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-9, atol=1e-12 * scale)


@pytest.mark.parametrize("first_order", [False, True])
def test_the_start_formulation_is_another_gradient(first_order):
    """The control: score_grad start (mask gradient only at the inner loop's start) differs from the reference
    loop by far more than rounding, on the same networks (the adapted query losses agree)."""
    batch = double(tasks(batch=3, queries=3))
    lrn = metaticket("vmap", "start", first_order, 1).double()
    want = reference_score_grads(lrn, batch, 1, first_order)
    before = [p.detach().clone() for p in lrn.parameters()]
    ref_losses = MetaLearner.evaluate(lrn, batch)
    got = meta_step_grads(lrn, batch)
    flat = torch.cat([got[n].flatten() for n in want]), torch.cat([want[n].flatten() for n in want])
    rel = float((flat[0] - flat[1]).norm() / flat[1].norm())
    assert 1e-4 < rel < 1.0, rel
    with torch.no_grad():
        for p, b in zip(lrn.parameters(), before):
            p.copy_(b)
    lrn2 = metaticket("vmap", "reference", first_order, 1).double()
    lrn2.model.load_state_dict(lrn.model.state_dict())
    torch.testing.assert_close(MetaLearner.evaluate(lrn2, batch)[0], ref_losses[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("vectorize", ["factored", "vmap", "loop"])
def test_bfloat16_reference_gradient_is_close_to_float64(vectorize):
    """precision bfloat16 (query pass in bfloat16) keeps the reference score gradient within cosine 0.99 of the
    float64 loop's."""
    torch.manual_seed(0)
    batch = tasks(batch=4, queries=3)
    lrn = metaticket(vectorize, "reference", False, 1, precision="bfloat16")
    state = {k: v.clone() for k, v in lrn.model.state_dict().items()}
    got = meta_step_grads(lrn, batch)
    ref = metaticket(vectorize, "reference", False, 1).double()
    ref.model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    want = reference_score_grads(ref, double(batch), 1, False)
    a = torch.cat([got[n].double().flatten() for n in want])
    b = torch.cat([want[n].flatten() for n in want])
    cosine = float(F.cosine_similarity(a, b, dim=0))
    assert 0.99 < cosine < 1.0 - 1e-7, cosine


def test_unknown_score_grad_is_refused():
    with pytest.raises(ValueError, match="unknown score_grad 'every'"):
        learner("metaticket", score_grad="every")
