"""The factored inner loop (MLPs): every task's weight change kept as factors gives the per-task loop's
meta-gradient and scores, and runs only where it is meant to."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import Spy, double, learner, ops_writing, tasks
from torch import nn

from metaticket.meta import factored
from metaticket.meta.learner import MetaLearner
from metaticket.tasks import Tasks


def run(method: str, vectorize: str, batch: Tasks, steps: int, first_order: bool) -> tuple[dict, list]:
    """The float64 meta-gradient of one meta-batch, and (loss, accuracy) of the meta-gradient and of evaluate."""
    lrn = learner("metaticket" if method == "metaticket_boil" else method, vectorize=vectorize, inner_steps_test=steps)
    if method == "metaticket_boil":
        lrn = MetaLearner(lrn.model, method=method, outer_steps=10, vectorize=vectorize, inner_steps_test=steps)
    lrn.double()
    losses, accs = lrn.meta_gradient(batch, steps=steps, first_order=first_order)
    grads = {n: p.grad.clone() for n, p in lrn.model.named_parameters() if p.grad is not None}
    return grads, [losses, accs, *lrn.evaluate(batch)]


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("method", ["maml", "anil", "boil", "metaticket", "metaticket_boil"])
def test_factors_give_the_loop_meta_gradient_and_scores(method, first_order, steps, monkeypatch):
    # float64, so that only a wrong gradient (not rounding) can make the two differ; 3 queries per class keep the
    # masked layers' factors within their size limit at 2 steps (15 x 5 x 2 = 150)
    batch = double(tasks(batch=4, queries=3))
    spy = Spy(monkeypatch)
    loop_grads, loop_scores = run(method, "loop", batch, steps, first_order)
    assert spy.calls == 0
    grads, scores = run(method, "factored", batch, steps, first_order)
    assert spy.calls == 2  # the meta-gradient and evaluate
    assert grads.keys() == loop_grads.keys() and grads
    scale = max(float(g.abs().max()) for g in loop_grads.values())
    for n in grads:  # biases right before a BatchNorm have a zero gradient: compare against the largest entry
        torch.testing.assert_close(grads[n], loop_grads[n], rtol=1e-9, atol=1e-11 * scale)
    for ours, ref in zip(scores, loop_scores):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_the_second_order_term_is_there():
    """The check above can fail: dropping the factors' graph (first order) changes the second-order gradient."""
    batch = double(tasks(batch=2))
    second, _ = run("maml", "factored", batch, 1, first_order=False)
    first, _ = run("maml", "factored", batch, 1, first_order=True)
    assert any(not torch.allclose(second[n], first[n], rtol=1e-6, atol=1e-9) for n in second)


class UserMLP(nn.Module):
    """A user's own MLP class: stock BatchNorm1d, functional activations, a flatten call, Dropout(0)."""

    def __init__(self, hidden: int = 24, ways: int = 5) -> None:
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(784, hidden), nn.BatchNorm1d(hidden, track_running_stats=False)
        self.fc2, self.bn2 = nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden, track_running_stats=False)
        self.drop, self.out = nn.Dropout(0.0), nn.Linear(hidden, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.fc1(x.flatten(1))))
        h = F.leaky_relu(self.bn2(self.fc2(h)), 0.1)
        return self.out(self.drop(h))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(784, 784), nn.Linear(784, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        return self.out(self.fc(h) + h)


def test_auto_picks_factors_for_chains_of_linear_layers():
    assert learner("maml").vectorize == "factored" and learner("metaticket").vectorize == "factored"
    assert learner("maml", model="conv4").vectorize == "loop"
    own = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 5))
    assert MetaLearner(own, method="maml").vectorize == "factored"  # a user's Sequential is a chain too
    with pytest.warns(UserWarning, match="replaced 2 BatchNorm"):
        mine = MetaLearner(UserMLP(), method="maml")
    assert mine.vectorize == "factored"
    assert [n for n, _ in mine.chain.layers] == ["fc1", "bn1", "relu", "fc2", "bn2", "leaky_relu", "drop", "out"]
    # not chains: a residual, a second use of one layer, a flatten that keeps a spatial dim, a convolution
    assert MetaLearner(Residual(), method="maml").vectorize == "loop"  # its 784 x 784 weight: not vmap
    twice = nn.Sequential(nn.Flatten(), nn.Linear(784, 784), nn.ReLU())
    twice.append(twice[1]).append(nn.Linear(784, 5))
    assert factored.chain_of(twice) is None
    assert factored.chain_of(nn.Sequential(nn.Flatten(2), nn.Linear(28, 5))) is None
    with pytest.raises(ValueError, match="vectorize='factored' runs models whose forward is a chain of Linear"):
        MetaLearner(Residual(), method="maml", vectorize="factored")
    with pytest.raises(ValueError, match="unknown vectorize 'bmm'"):
        learner("maml", vectorize="bmm")
    # a chain without its own flatten runs factored only on flat inputs [B, N, features]
    flat_only = factored.chain_of(nn.Sequential(nn.Linear(784, 5)))
    assert flat_only is not None and not flat_only.flattens
    assert flat_only.runs(torch.zeros(2, 5, 784)) and not flat_only.runs(torch.zeros(2, 5, 1, 28, 28))


@pytest.mark.parametrize("first_order", [False, True])
def test_a_user_mlp_takes_the_factored_path_with_the_loop_meta_gradient(first_order, monkeypatch):
    batch = double(tasks(batch=3, queries=3))
    grads = {}
    for vectorize in ("loop", "factored"):
        torch.manual_seed(0)
        with pytest.warns(UserWarning, match="BatchNorm"):
            lrn = MetaLearner(UserMLP(), method="maml", vectorize=vectorize, first_order=first_order, outer_steps=10,
                              inner_steps=2).double()
        spy = Spy(monkeypatch)
        lrn.meta_step(batch)
        assert spy.calls == (vectorize == "factored")
        grads[vectorize] = {n: p.grad.clone() for n, p in lrn.model.named_parameters()}
    scale = max(float(g.abs().max()) for g in grads["loop"].values())
    for n, g in grads["loop"].items():
        torch.testing.assert_close(grads["factored"][n], g, rtol=1e-9, atol=1e-11 * scale)


def test_dropout_that_is_on_runs_the_per_task_path(monkeypatch):
    """Dropout with p > 0 draws per task: in training such a batch runs vmap or the loop; in eval mode (off) the
    factors run."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 5))
    lrn = MetaLearner(net, method="maml", outer_steps=10)
    spy = Spy(monkeypatch)
    assert lrn.vectorize == "factored"
    lrn.meta_step(tasks(batch=2))
    assert spy.calls == 0
    lrn.eval()
    lrn.evaluate(tasks(batch=2))
    assert spy.calls == 1


def test_masked_layers_use_factors_only_while_they_are_cheaper(monkeypatch):
    """Masked weights cost (query rows x support rows) products: Meta-ticket with 15 queries per class runs what
    ``auto`` would without factors (vmap for this small MLP); MAML, whose factors stay low-rank, keeps them."""
    spy = Spy(monkeypatch)
    many = tasks(batch=2, queries=15)
    lrn = learner("metaticket")
    assert lrn.path(many, 1) == "vmap" and learner("metaticket", vectorize="loop").path(many, 1) == "loop"
    lrn.meta_step(many)
    assert spy.calls == 0 and not factored.fits(True, 5, 75, 1)
    lrn.meta_step(tasks(batch=2, queries=1))
    assert spy.calls == 1 and factored.fits(True, 5, 5, 1) and factored.fits(True, 5, 5, 3)
    learner("maml").meta_step(many)
    assert spy.calls == 2 and factored.fits(False, 25, 75, 5)
    # every masked layer of the MLP feeds a task BatchNorm: 4 factor rows per 1-shot step, so 8 queries per class
    # (40 x 4 = 160 pairs) still run factored, where 5 rows would make 200
    assert lrn.normed and factored.fits(True, 5, 40, 1, normed=True) and not factored.fits(True, 5, 40, 1)
    assert lrn.path(tasks(batch=2, queries=8), 1) == "factored"
    assert not factored.fits(True, 5, 45, 1, normed=True)  # 180 pairs


def _weight_shaped_products(lrn: MetaLearner, batch: Tasks) -> dict[tuple[int, ...], int]:
    """How many matrix products of one meta-step write a tensor shaped like one of the model's linear weights."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shapes = {tuple(m.weight.shape) for m in lrn.model.modules() if isinstance(m, nn.Linear)}
    seen: dict[tuple[int, ...], int] = {}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm) and \
                    tuple(out.shape) in shapes:
                seen[tuple(out.shape)] = seen.get(tuple(out.shape), 0) + 1
            return out

    with Count():
        lrn.meta_step(batch)
    return seen


@pytest.mark.parametrize("first_order", [False, True])
def test_a_learned_weight_gets_its_gradient_as_one_product(first_order):
    """Every use of a shared weight in the factored graph (support and query passes, the inner gradient's product)
    leaves its gradient as row factors, multiplied out once per layer: one weight-sized product per learned weight
    (MAML: all five), none for a weight nobody learns (Meta-ticket's random head; ``start`` gradient, so no
    product for the mask's own gradient either). Before, each use wrote its own and autograd summed them."""
    batch = tasks(batch=3, queries=3)
    maml = learner("maml", vectorize="factored", first_order=first_order)
    shapes = [tuple(m.weight.shape) for m in maml.model.modules() if isinstance(m, nn.Linear)]
    assert _weight_shaped_products(maml, batch) == {s: 1 for s in shapes}
    ticket = learner("metaticket", vectorize="factored", first_order=first_order, score_grad="start")
    assert _weight_shaped_products(ticket, batch) == {s: 1 for s in shapes[:-1]}


def _masked_correction_rows(lrn: MetaLearner, batch: Tasks) -> set[int]:
    """The row counts of one meta-step's products [rows, in] @ [in, out] whose right side is shaped like a masked
    layer's transposed weight (the masked correction's products, and the shared-weight passes of 15 rows)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shapes = {tuple(m.weight.shape[::-1]) for m in lrn.model.modules() if isinstance(m, nn.Linear)}
    rows: set[int] = set()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
                a, b = args[-2:]
                if tuple(b.shape) in shapes:
                    rows.add(a.shape[0])
            return func(*args, **(kwargs or {}))

    with Count():
        lrn.meta_step(batch)
    return rows


def test_a_normalized_layer_keeps_one_support_factor_fewer():
    """Under a task BatchNorm a layer's support gradients sum to zero, so its n support rows give n - 1 factors:
    the masked correction multiplies 3 tasks x 5 query rows x 4 (not 5) support rows through the mask."""
    batch = tasks(batch=3, queries=1)
    rows = _masked_correction_rows(learner("metaticket", vectorize="factored"), batch)
    assert 3 * 5 * 4 in rows and 3 * 5 * 5 not in rows


def test_a_layer_without_a_norm_after_it_keeps_all_its_support_factors(monkeypatch):
    """Without a BatchNorm the support gradients need not sum to zero: all n rows stay factors, and the factored
    meta-gradient of a masked MLP without norms is still the loop's (float64). Dropping a row there changes it."""
    from metaticket import make_layers
    from metaticket.models.mlp import MLP

    batch = double(tasks(batch=3, queries=1))
    grads = {}
    for vectorize in ("loop", "factored"):
        layers = make_layers(supermask=True, mask="threshold", generator=torch.Generator().manual_seed(0))
        lrn = MetaLearner(MLP(784, 5, (24, 16), layers, norm=False), method="metaticket", vectorize=vectorize,
                          outer_steps=10).double()
        assert not lrn.normed  # so its masked factors are counted at all 5 rows (factored.fits)
        spy = Spy(monkeypatch)
        lrn.meta_gradient(batch, steps=1, first_order=False)
        assert spy.calls == (vectorize == "factored")
        grads[vectorize] = {n: p.grad.clone() for n, p in lrn.model.named_parameters() if p.grad is not None}
    scale = max(float(g.abs().max()) for g in grads["loop"].values())
    for n, g in grads["loop"].items():
        torch.testing.assert_close(grads["factored"][n], g, rtol=1e-9, atol=1e-11 * scale)
    assert 3 * 5 * 5 in _masked_correction_rows(lrn, batch)  # (a meta-step: the scores change)
    real = factored._Linear.add_step

    def centred(op, x, g):  # noqa: ANN001, ANN202 (differencing where nothing normalizes: a different gradient)
        op.normed = True
        return real(op, x, g)

    monkeypatch.setattr(factored._Linear, "add_step", centred)
    lrn = MetaLearner(MLP(784, 5, (24, 16), make_layers(supermask=True, mask="threshold",
                                                        generator=torch.Generator().manual_seed(0)), norm=False),
                      method="metaticket", vectorize="factored", outer_steps=10).double()
    lrn.meta_gradient(batch, steps=1, first_order=False)
    assert any(not torch.allclose(p.grad, grads["loop"][n], rtol=1e-6) for n, p in lrn.model.named_parameters()
               if p.grad is not None)


@pytest.mark.parametrize("method", ["maml", "metaticket"])
def test_bfloat16_rounds_the_query_pass_and_the_outer_backward_never_the_support_steps(method, monkeypatch):
    """precision bfloat16 on the factored path: every product of the support steps stays float32 (rounding their
    forward products took the Omniglot meta-gradient's cosine to 0.05-0.58); the query pass (Meta-ticket's masked
    correction too) and the outer backward run bfloat16 products, among them each learned weight's one gradient
    product (and Meta-ticket's mask gradient from the correction); parameters and gradients stay float32. float32
    runs no bfloat16 at all."""
    from torch.utils._python_dispatch import TorchDispatchMode

    phase = ["other"]
    seen: list[tuple[str, torch.dtype, tuple[int, ...], bool]] = []  # (phase, dtype, output shape, batched)
    for name in ("adapt", "logits"):
        real = getattr(factored.FactoredInner, name)

        def marked(inner, *args, _real=real, _name=name, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            phase[0] = "support" if _name == "adapt" else "query"
            try:
                return _real(inner, *args, **kwargs)
            finally:
                phase[0] = "backward" if _name == "logits" else "other"

        monkeypatch.setattr(factored.FactoredInner, name, marked)

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
                seen.append((phase[0], args[-1].dtype, tuple(out.shape), func.overloadpacket is torch.ops.aten.bmm))
            return out

    for precision in ("float32", "bfloat16"):
        seen.clear()
        lrn = learner(method, vectorize="factored", precision=precision)
        with Record():
            lrn.meta_step(tasks(batch=3, queries=1))
        assert {p for p, _, _, _ in seen} == {"support", "query", "backward"}
        low = {(p, shape) for p, dtype, shape, _ in seen if dtype == torch.bfloat16}
        if precision == "float32":
            assert not low
            continue
        assert not {p for p, _ in low} & {"support", "other"}
        assert ("query", (15, 32)) in low  # the second layer's query product (width 0.25: 64-32-16-16)
        if method == "metaticket":  # the masked correction's product: 3 tasks x 5 queries x 4 differenced rows
            assert {("query", (60, 64)), ("query", (60, 32))} <= low
        learned = [tuple(m.weight.shape) for m in lrn.model.modules() if isinstance(m, nn.Linear)]
        if method == "metaticket":
            learned = learned[:-1]  # the head is not learned; the masks' gradients come from the correction
        assert all(("backward", shape) in low for shape in learned), (learned, low)
        # every matrix product of the outer backward (the support pass's second-order ones too), all but the
        # factors' small per-task products
        assert all(dtype == torch.bfloat16 for p, dtype, _, batched in seen if p == "backward" and not batched)
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in lrn.parameters())


@pytest.mark.parametrize("steps", [1, 2])
def test_bfloat16_forms_the_scores_gradient_in_bfloat16_and_casts_it_once(steps):
    """precision bfloat16, Meta-ticket, factored: each masked layer's weight and mask gradients arrive from their
    bfloat16 products as bfloat16, the scores' gradient is formed there (``w * g + 2 * m * g``) and cast once: per
    masked layer one weight-sized bfloat16 -> float32 cast in the outer backward and no float32 weight-sized
    multiply (before: two casts and two float32 passes). With two inner steps the second support step's masked
    correction runs in float32 and its mask gradient arrives as float32: both kinds are summed. The scores'
    gradient stays the float32 learner's up to bfloat16 rounding."""
    batch = tasks(batch=3, queries=1)
    grads = {}
    for precision in ("float32", "bfloat16"):
        lrn = learner("metaticket", vectorize="factored", precision=precision)
        lrn.inner_steps = steps
        sizes = {m.weight.numel() for m in lrn.model.modules() if hasattr(m, "scores")}
        losses, _ = lrn.losses(batch)
        seen = ops_writing(losses.mean().backward, sizes)
        grads[precision] = torch.cat([m.scores.grad.flatten() for m in lrn.model.modules() if hasattr(m, "scores")])
        casts = [s for s in seen if s == ("aten._to_copy", torch.bfloat16, torch.float32)]
        fp32_products = [s for s in seen if s[0] in ("aten.mul", "aten.addcmul") and s[2] == torch.float32]
        if precision == "float32":
            assert not casts and fp32_products
            continue
        if steps == 1:
            assert len(casts) == len(sizes) and not fp32_products, seen
        else:  # the second support step's correction ran in float32: its mask gradient arrives as float32
            assert fp32_products and ("aten.addcmul", torch.bfloat16, torch.bfloat16) in seen, seen
    cos = F.cosine_similarity(grads["float32"], grads["bfloat16"], dim=0)
    assert cos > 0.99, float(cos)
