"""The meta-gradient against finite differences of the meta-loss: an independent reference, not one of our
paths against another. In float64 along random directions: MAML, ANIL and BOIL (second order: the exact gradient),
and Meta-ticket's reference score gradient as the derivative of the meta-loss in a continuous mask (the
straight-through estimator passes the gradient at the mask to the scores)."""

from __future__ import annotations

import pytest
import torch
from conftest import double, learner, tasks

from metaticket.core.supermask import supermask_layers
from metaticket.meta.learner import MetaLearner

EPS = 1e-6


def meta_loss(lrn: MetaLearner, batch) -> float:
    """The mean query loss after the training inner steps, through the public ``evaluate`` (its adapted networks
    are those of training: first order changes only what is differentiated)."""
    return float(lrn.evaluate(batch)[0].mean())


def directional(lrn: MetaLearner, batch, tensors: list[torch.Tensor], dirs: list[torch.Tensor]) -> float:
    """Central difference of the meta-loss along ``dirs`` applied to ``tensors`` (in place, then restored). The
    directions have unit norm over all tensors together: a step of EPS crosses no ReLU kink on these tasks (a step
    400x longer did, and its differences were off by 100%)."""
    norm = sum(float(d.square().sum()) for d in dirs) ** 0.5
    dirs = [d / norm for d in dirs]
    with torch.no_grad():
        for t, d in zip(tensors, dirs):
            t.add_(d, alpha=EPS)
        up = meta_loss(lrn, batch)
        for t, d in zip(tensors, dirs):
            t.add_(d, alpha=-2 * EPS)
        down = meta_loss(lrn, batch)
        for t, d in zip(tensors, dirs):
            t.add_(d, alpha=EPS)
    return (up - down) / (2 * EPS)


@pytest.mark.parametrize("vectorize", ["factored", "vmap", "loop"])
@pytest.mark.parametrize("method", ["maml", "anil", "boil"])
def test_dense_meta_gradient_equals_finite_differences(method, vectorize):
    batch = double(tasks(batch=3, queries=2))
    lrn = learner(method, vectorize=vectorize, inner_steps=2, inner_steps_test=2).double()
    params = [p for p in lrn.parameters()]
    g = torch.Generator().manual_seed(1)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    fd = directional(lrn, batch, params, dirs)
    lrn.meta_step(batch)  # the gradient at the same point (computed before the optimizer moves it)
    norm = sum(float(d.square().sum()) for d in dirs) ** 0.5
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, dirs)) / norm
    assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-9), (analytic, fd)


@pytest.mark.parametrize("vectorize", ["factored", "vmap", "loop"])
def test_reference_score_gradient_is_the_derivative_in_the_mask(vectorize, monkeypatch):
    """Each supermask layer's mask is replaced by a continuous tensor M (0.3-0.9) carrying the scores'
    straight-through gradient: the learner's score gradient must be the derivative of the meta-loss in M."""
    batch = double(tasks(batch=3, queries=2))
    lrn = learner("metaticket", vectorize=vectorize, inner_steps=2, inner_steps_test=2,
                  score_grad="reference").double()
    g = torch.Generator().manual_seed(2)
    mask_of = {}
    for _, layer in supermask_layers(lrn.model):
        m = 0.3 + 0.6 * torch.rand(layer.weight.shape, generator=g, dtype=torch.float64)
        mask_of[id(layer)] = m
        monkeypatch.setattr(layer, "mask", lambda scores=None, layer=layer: mask_of[id(layer)] + (
            layer.scores - layer.scores.detach()))
    masks = list(mask_of.values())
    dirs = [torch.randn(m.shape, generator=g, dtype=m.dtype) for m in masks]
    fd = directional(lrn, batch, masks, dirs)
    lrn.meta_step(batch)
    scores = [layer.scores for _, layer in supermask_layers(lrn.model)]
    norm = sum(float(d.square().sum()) for d in dirs) ** 0.5
    analytic = sum(float((s.grad * d).sum()) for s, d in zip(scores, dirs)) / norm
    assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-9), (analytic, fd)
    # the control: the start formulation is not this derivative
    start = learner("metaticket", vectorize=vectorize, inner_steps=2, inner_steps_test=2, score_grad="start").double()
    start.model.load_state_dict(lrn.model.state_dict())
    for _, layer in supermask_layers(start.model):
        own = mask_of[id(next(lay for _, lay in supermask_layers(lrn.model) if lay.weight.shape == layer.weight.shape
                                 and torch.equal(lay.weight, layer.weight)))]
        monkeypatch.setattr(layer, "mask", lambda scores=None, layer=layer, own=own: own + (
            layer.scores - layer.scores.detach()))
    start.meta_step(batch)
    other = sum(float((layer.scores.grad * d).sum()) for (_, layer), d in zip(supermask_layers(start.model), dirs))
    other /= norm
    assert other != pytest.approx(fd, rel=1e-3)
