"""Supermask core: masks, straight-through gradients, inits, IteRand, reports, convert."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ops_writing
from torch import nn

from metaticket.core.supermask import (
    _ROUNDED,
    SupermaskConv2d,
    SupermaskLinear,
    convert,
    dense_like,
    masked_start,
    masks,
    quantile_threshold,
    rerandomize,
    sample_init,
    sparsity_report,
    threshold_mask,
    topk_mask,
)


def test_topk_straight_through_gradient_matches_hand_computation():
    torch.manual_seed(0)
    scores = torch.randn(6, 5, requires_grad=True)
    w = torch.randn(6, 5)
    x = torch.randn(3, 5)
    m = topk_mask(scores, sparsity=0.4)
    loss = (x @ (w * m).T).pow(2).sum()
    loss.backward()
    # by hand: dL/dW_eff = 2 * y^T x with y = x W_eff^T; STE passes dL/dm = dL/dW_eff * w through |s|.
    hard = m.detach()
    y = x @ (w * hard).T
    d_eff = 2 * y.T @ x
    expected = d_eff * w * scores.detach().sign()
    torch.testing.assert_close(scores.grad, expected)


def test_threshold_straight_through_gradient_matches_hand_computation():
    torch.manual_seed(1)
    scores = torch.randn(4, 7, requires_grad=True)
    w = torch.randn(4, 7)
    thr = torch.tensor(0.1)
    m = threshold_mask(scores, thr)
    (w * m).sum().backward()
    torch.testing.assert_close(scores.grad, w)  # d/ds sum(w * m) = w under the identity estimator
    assert torch.equal(m.detach(), (scores.detach() >= thr).float())


def _composed_start(layer, k: int):
    """What masked_start computes, written with the plain ops of the straight-through estimator."""
    s = layer.scores
    m = (s.detach() >= layer.threshold).to(s.dtype) + (s - s.detach()) if layer.mask_rule == "threshold" \
        else layer.mask()
    if layer.source is not None:
        m = m * layer.source
    return layer.weight * m, (m.detach() if k == 0 else m.detach() * m if k == 1 else m * m)


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("learn_weight", [False, True])
@pytest.mark.parametrize("kind", ["threshold", "threshold-source", "topk", "conv"])
def test_masked_start_has_the_composed_values_and_gradients(k, learn_weight, kind):
    """The fused start (threshold layers) and the composed fallback (top-k, a source) give the values and the
    gradients of ``w * m`` and of ``m * m`` / ``stop_grad(m) * m`` / ``stop_grad(m)``, in float64."""
    g = torch.Generator().manual_seed(k)
    rule = "topk" if kind == "topk" else "threshold"
    layer = (SupermaskConv2d(3, 4, 3, mask=rule, init_sparsity=0.4, generator=g) if kind == "conv" else
             SupermaskLinear(9, 6, mask=rule, init_sparsity=0.4, generator=g)).double()
    if kind == "threshold-source":
        layer.set_source((torch.rand(layer.weight.shape, generator=g) < 0.7).double())
    layer.weight.requires_grad_(learn_weight)
    up1 = torch.randn(layer.weight.shape, generator=g, dtype=torch.float64)
    up2 = torch.randn(layer.weight.shape, generator=g, dtype=torch.float64)
    wrt = [layer.scores, layer.weight] if learn_weight else [layer.scores]
    results = []
    for make in (masked_start, _composed_start):
        masked, grad_mask = make(layer, k)
        assert grad_mask.requires_grad == (k > 0)
        grads = torch.autograd.grad((masked * up1 + grad_mask * up2).sum(), wrt)
        results.append((masked.detach(), grad_mask.detach(), grads))
    (m1, g1, d1), (m2, g2, d2) = results
    assert torch.equal(m1, m2) and torch.equal(g1, g2)
    assert 0 < int(g1.sum()) < g1.numel()  # some pruned, some kept: the gradient terms differ between them
    for a, b in zip(d1, d2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="mask_grad"):
        masked_start(layer, 3)


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("learn_weight", [False, True])
@pytest.mark.parametrize("kind", ["threshold", "topk"])
@pytest.mark.parametrize("into", ["low", "both"])
def test_masked_start_rounded_copies_carry_the_same_gradients(k, learn_weight, kind, into):
    """``masked_start(layer, k, low)`` also returns the masked weight and the mask rounded to ``low``. Gradients
    that reach the rounded copies (``into="low"``), or some the copies and some the full ones (``"both"``), give
    the scores and the weight the composed estimator's gradients, formed in ``low`` on the fused path: float64
    layers with float32 copies agree to float32 rounding."""
    g = torch.Generator().manual_seed(3 + k)
    layer = SupermaskLinear(9, 6, mask="topk" if kind == "topk" else "threshold", init_sparsity=0.4,
                            generator=g).double()
    layer.weight.requires_grad_(learn_weight)
    up1, up2 = (torch.randn(layer.weight.shape, generator=g, dtype=torch.float64) for _ in range(2))
    wrt = [layer.scores, layer.weight] if learn_weight else [layer.scores]
    masked, grad_mask, low_masked, low_mask = masked_start(layer, k, torch.float32)
    assert low_masked.dtype == low_mask.dtype == torch.float32
    assert torch.equal(low_masked, masked.float()) and torch.equal(low_mask, grad_mask.float())
    assert low_mask.requires_grad == (k > 0)
    if into == "low":
        loss = (low_masked.double() * up1 + low_mask.double() * up2).sum()
    else:
        loss = (masked * up1 + low_mask.double() * up2).sum()
    grads = torch.autograd.grad(loss, wrt)
    m2, g2 = _composed_start(layer, k)
    for a, b in zip(grads, torch.autograd.grad((m2 * up1 + g2 * up2).sum(), wrt)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    if kind == "threshold":
        kept = _ROUNDED[layer][1]
        assert masked_start(layer, k, torch.float32) and _ROUNDED[layer][1] is kept
        with torch.no_grad():
            layer.weight.mul_(2.0)  # an in-place change (IteRand, a load) makes a new copy
        assert _ROUNDED[layer][1] is kept
        masked_start(layer, k, torch.float32)
        assert torch.equal(_ROUNDED[layer][1], layer.weight.detach().float())


def test_the_kept_rounded_weight_stays_off_the_layer():
    """The bfloat16 copy of a layer's weight is kept beside the layer: a deepcopy, a pickle and the state_dict
    of the layer do not carry it, and it goes when the layer goes."""
    import copy
    import gc
    import io
    import pickle

    def saved(module: nn.Module) -> int:
        buf = io.BytesIO()
        torch.save(module, buf)
        return len(buf.getvalue())

    make = lambda: SupermaskLinear(128, 64, mask="threshold", init_sparsity=0.3,  # noqa: E731
                                   generator=torch.Generator().manual_seed(0))
    layer, never_started = make(), make()
    masked_start(layer, 2, torch.bfloat16)
    assert _ROUNDED[layer][1].dtype == torch.bfloat16
    twin = copy.deepcopy(layer)
    assert twin not in _ROUNDED and not any(isinstance(v, tuple) for v in vars(twin).values())
    # the 16 KB bfloat16 copy is in neither the pickle nor torch.save's file
    assert abs(saved(layer) - saved(never_started)) < 1024
    assert abs(len(pickle.dumps(layer)) - len(pickle.dumps(never_started))) < 1024
    assert set(layer.state_dict()) == set(twin.state_dict())
    n = len(_ROUNDED)
    del layer
    gc.collect()
    assert len(_ROUNDED) == n - 1


def test_masked_start_under_torch_func_transforms():
    """Under torch.func.grad and vmap(grad) the fused start gives the scores the gradient it gives outside them."""
    from torch.func import grad, vmap

    layer = SupermaskLinear(7, 5, mask="threshold", init_sparsity=0.4,
                            generator=torch.Generator().manual_seed(1)).double()
    up = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    masked, mask = masked_start(layer, 2)
    assert type(masked.grad_fn).__name__ == "_MaskedStartBackward"
    (eager,) = torch.autograd.grad((masked * up + mask * up).sum(), [layer.scores])

    def loss(scores):  # the layer's scores swapped for the transform's (as functional_call does for forward)
        original = layer.scores
        layer._parameters["scores"] = scores
        try:
            m, k = masked_start(layer, 2)
        finally:
            layer._parameters["scores"] = original
        return (m * up + k * up).sum()

    torch.testing.assert_close(grad(loss)(layer.scores.detach()), eager, rtol=0, atol=0)
    stacked = torch.stack([layer.scores.detach(), -layer.scores.detach()])
    per = vmap(grad(loss))(stacked)
    torch.testing.assert_close(per[0], eager, rtol=0, atol=0)
    assert not torch.equal(per[1], eager)


def _weight_sized_ops(fn, n: int) -> list[str]:
    """The aten ops ``fn`` runs that write a tensor of ``n`` elements (allocations not counted)."""
    return [name for name, _, _ in ops_writing(fn, {n})]


def test_threshold_masks_and_the_start_make_few_weight_sized_passes():
    """The threshold mask is one pass (a comparison written into a float tensor), the fused start two forward
    (mask, w * m) and two backward (w * g, then the mask's term added): the composed ops took 4, 6 and 5."""
    layer = SupermaskLinear(64, 32, mask="threshold", init_sparsity=0.3)
    n = layer.weight.numel()
    assert _weight_sized_ops(lambda: threshold_mask(layer.scores, layer.threshold), n) == ["aten.ge"]
    masked, grad_mask = masked_start(layer, 2)
    assert len(_weight_sized_ops(lambda: masked_start(layer, 2), n)) == 2
    loss = (masked * 2.0 + grad_mask * 3.0).sum()
    backward = _weight_sized_ops(lambda: torch.autograd.grad(loss, layer.scores), n)
    assert len(backward) == 4, backward  # the two multiplies of the loss above, then w * g and the mask's term


def test_threshold_mask_under_torch_func():
    """vmap over several score tensors and grad through the mask give what the plain calls give."""
    from torch.func import grad, vmap

    scores = torch.randn(3, 5, 4)
    thr = torch.tensor(0.2)
    batched = vmap(lambda s: threshold_mask(s, thr))(scores)
    assert torch.equal(batched, torch.stack([threshold_mask(s, thr) for s in scores]))
    w = torch.randn(5, 4)
    torch.testing.assert_close(grad(lambda s: (w * threshold_mask(s, thr)).sum())(scores[0]), w)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("shape", [(10, 3), (64, 32, 3, 3), (7,)])
def test_topk_keeps_exact_count(sparsity, shape):
    scores = torch.randn(*shape)
    n = scores.numel()
    m = topk_mask(scores, sparsity)
    assert int(m.sum()) == round((1 - sparsity) * n)
    kept = scores.abs()[m.bool()]
    dropped = scores.abs()[~m.bool()]
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()


def test_topk_exact_count_with_ties():
    scores = torch.ones(10, 10)
    assert int(topk_mask(scores, 0.37).sum()) == 63


def test_topk_layers_keep_exact_count_per_layer():
    linear = SupermaskLinear(30, 20, mask="topk", sparsity=0.7)
    conv = SupermaskConv2d(3, 8, 3, mask="topk", sparsity=0.25)
    assert int(linear.mask().sum()) == round(0.3 * 30 * 20)
    assert int(conv.mask().sum()) == round(0.75 * 8 * 3 * 9)


def test_threshold_starts_dense_at_init_sparsity_zero():
    layer = SupermaskLinear(100, 50, mask="threshold", init_sparsity=0.0)
    assert layer.mask().min() == 1.0
    assert sparsity_report(layer)["overall"] == 0.0


def test_threshold_init_sparsity_prunes_that_fraction():
    layer = SupermaskLinear(100, 50, mask="threshold", init_sparsity=0.3)
    assert abs(sparsity_report(layer)["overall"] - 0.3) < 1e-3
    assert quantile_threshold(torch.arange(11.0), 0.5) == 5.0


@pytest.mark.parametrize("init", ["kaiming_normal", "kaiming_uniform", "signed_constant"])
def test_inits_have_kaiming_scale(init):
    g = torch.Generator().manual_seed(0)
    w = sample_init(torch.Size([400, 100]), init, g)
    std = math.sqrt(2 / 100)
    assert abs(float(w.std()) - std) / std < 0.05
    if init == "signed_constant":
        assert torch.allclose(w.abs(), torch.full_like(w, std))
    if init == "kaiming_uniform":
        assert float(w.abs().max()) <= math.sqrt(3) * std + 1e-6


def test_weights_are_frozen_parameters_and_scores_learn():
    layer = SupermaskLinear(8, 4)
    names = dict(layer.named_parameters())
    assert not names["weight"].requires_grad and names["scores"].requires_grad


@pytest.mark.parametrize("mask", ["topk", "threshold"])
def test_iterand_changes_only_pruned_weights_about_rate(mask):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(SupermaskLinear(200, 300, mask=mask, sparsity=0.5, init_sparsity=0.5, generator=g),
                          SupermaskConv2d(16, 32, 3, mask=mask, sparsity=0.5, init_sparsity=0.5, generator=g))
    before = [layer.weight.clone() for layer in (model[0], model[1])]
    pruned = [layer.mask().detach() == 0 for layer in (model[0], model[1])]
    rate = 0.3
    frac = rerandomize(model, rate, torch.Generator().manual_seed(1))
    changed_total = 0
    pruned_total = 0
    for layer, b, p in zip((model[0], model[1]), before, pruned):
        changed = layer.weight != b
        assert not changed[~p].any(), "a kept weight changed"
        assert torch.equal(layer.weight[~p], b[~p])
        changed_total += int(changed.sum())
        pruned_total += int(p.sum())
    assert abs(changed_total / pruned_total - rate) < 0.02
    n_all = sum(layer.weight.numel() for layer in (model[0], model[1]))
    assert abs(frac - changed_total / n_all) < 1e-3  # (a redraw equal to the old value is vanishingly rare)


def test_sparsity_report_per_layer_and_overall():
    model = nn.Sequential(SupermaskLinear(10, 10, mask="topk", sparsity=0.2), nn.ReLU(),
                          SupermaskLinear(10, 30, mask="topk", sparsity=0.6))
    rep = sparsity_report(model)
    assert rep["layers"] == {"0": pytest.approx(0.2), "2": pytest.approx(0.6)}
    assert rep["overall"] == pytest.approx((20 + 180) / 400)


def test_convert_keeps_shapes_and_dense_layers():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    x = torch.randn(2, 3, 4, 4)
    convert(net, mask="topk", sparsity=0.5, keep_dense=["3"])
    assert isinstance(net[0], SupermaskConv2d) and type(net[3]) is nn.Linear
    assert net(x).shape == (2, 10)
    with pytest.raises(ValueError, match="not modules"):
        convert(net, keep_dense=["nope"])


def test_dense_twin_with_masked_weights_matches_supermask_forward():
    from torch.func import functional_call

    net = nn.Sequential(SupermaskConv2d(1, 4, 3, mask="topk", sparsity=0.5), nn.Flatten(),
                        SupermaskLinear(4 * 4 * 4, 3, mask="threshold", init_sparsity=0.2))
    twin = dense_like(net)
    m = masks(net)
    params = {n: p * m[n] if n in m else p for n, p in net.named_parameters() if not n.endswith("scores")}
    x = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(functional_call(twin, params, (x,)), net(x))


def test_bad_mask_options_raise():
    with pytest.raises(ValueError, match="unknown mask rule"):
        SupermaskLinear(3, 3, mask="nope")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        SupermaskLinear(3, 3, sparsity=1.0)


def test_a_layers_sparsity_is_the_fraction_of_its_weights_pruned_also_inside_a_source():
    """``sparsity`` has one meaning: the fraction of the layer's weights pruned. The top-k rule's own parameter is
    ``topk_sparsity``, which inside a fixed random source is the fraction of the source's weights it prunes."""
    g = torch.Generator().manual_seed(0)
    layer = SupermaskLinear(20, 10, mask="topk", sparsity=0.5, generator=g)
    assert layer.sparsity == layer.topk_sparsity == 0.5
    source = (torch.rand(10, 20, generator=g) < 0.4).float()
    layer.set_source(source)
    kept = int(layer.hard_mask().sum())
    assert kept == round(0.5 * int(source.sum())) and layer.topk_sparsity == 0.5
    assert layer.sparsity == 1 - kept / 200
    thr = SupermaskLinear(20, 10, mask="threshold", init_sparsity=0.3, generator=g)
    assert abs(thr.sparsity - float(1 - thr.hard_mask().mean())) < 1e-6 and 0.25 < thr.sparsity < 0.35
