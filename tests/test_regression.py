"""Regression tasks: the MSE objective on every path (factored, vmap, loop) for MAML and Meta-ticket, checked in
float64 against a per-task loop written here, and a short sinusoid run that learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import Spy
from torch.func import functional_call

from metaticket.data.sinusoid import SinusoidSampler
from metaticket.meta.evaluate import meta_test
from metaticket.meta.learner import MetaLearner
from metaticket.meta.objective import objective
from metaticket.models import build_model
from metaticket.runs.factory import make_layers
from metaticket.tasks import Tasks


def regression_learner(method: str, seed: int = 0, dense_first: bool = False, **kw) -> MetaLearner:
    g = torch.Generator().manual_seed(seed)
    layers = make_layers(supermask=method == "metaticket", generator=g, mask="threshold",
                         init_sparsity=0.5 if method == "metaticket" else 0.0, dense_first=dense_first)
    net = build_model("sinusoid-mlp", num_classes=1, layers=layers)
    return MetaLearner(net, method=method, loss="mse", outer_steps=10, **kw)


def loop_meta_gradient(lrn: MetaLearner, batch: Tasks, steps: int, first_order: bool) -> dict[str, torch.Tensor]:
    """The mean query MSE's gradient, one task at a time: the model's own forward (a supermask model applies its
    mask in every forward), SGD on every parameter the method adapts, F.mse_loss throughout."""
    model, lr = lrn.model, lrn.inner_lr
    own = dict(model.named_parameters())
    outer = {n: own[n] for n in lrn.outer_names}
    adapted = [n for n in own if not n.endswith("scores")]
    total = 0.0
    for i in range(len(batch)):
        inner = {n: (own[n] if n in outer else own[n].detach().clone().requires_grad_()) for n in adapted}
        fixed = {n: p for n, p in own.items() if n not in inner}
        for _ in range(steps):
            loss = F.mse_loss(functional_call(model, {**fixed, **inner}, (batch.support_x[i],)), batch.support_y[i])
            grads = torch.autograd.grad(loss, list(inner.values()), create_graph=not first_order)
            inner = {n: v - lr * g for (n, v), g in zip(inner.items(), grads)}
        pred = functional_call(model, {**fixed, **inner}, (batch.query_x[i],))
        total = total + F.mse_loss(pred, batch.query_y[i]) / len(batch)
    return dict(zip(outer, torch.autograd.grad(total, list(outer.values()))))


def double(t: Tasks) -> Tasks:
    return Tasks(*(x.double() for x in (t.support_x, t.support_y, t.query_x, t.query_y)))


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("vectorize", ["factored", "vmap", "loop"])
@pytest.mark.parametrize("method", ["maml", "metaticket"])
def test_mse_meta_gradient_matches_a_per_task_loop(method, vectorize, steps, first_order, monkeypatch):
    batch = double(SinusoidSampler(shots=5, queries=5, seed=3).sample(3))
    lrn = regression_learner(method, vectorize=vectorize, inner_steps=steps, first_order=first_order,
                             inner_lr=0.01).double()
    want = loop_meta_gradient(lrn, batch, steps, first_order)
    spy = Spy(monkeypatch)
    out = lrn.meta_step(batch)
    assert spy.calls == (vectorize == "factored")
    got = {n: p.grad for n, p in lrn.model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and got
    scale = max(float(g.abs().max()) for g in want.values())
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-9, atol=1e-12 * scale)
    assert out["mse"] > 0 and "acc" not in out  # the metric of a regression batch is its MSE


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("vectorize", ["factored", "vmap", "loop"])
def test_reference_sinusoid_metaticket_learns_scores_and_every_dense_parameter(vectorize, first_order, monkeypatch):
    """The reference code's sinusoid Meta-ticket: only the middle layer masked (dense_first + dense head), the outer
    loop meta-learning the scores and every parameter no mask covers (learn_dense); its meta-gradient is the
    per-task loop's on every path, and a step moves all of them but the frozen masked weight."""
    batch = double(SinusoidSampler(shots=5, queries=5, seed=3).sample(3))
    lrn = regression_learner("metaticket", dense_first=True, learn_dense=True, vectorize=vectorize, inner_steps=2,
                             first_order=first_order, inner_lr=0.01, optimizer="adamw", outer_lr=1e-3).double()
    kinds = {n: type(m).__name__ for n, m in lrn.model.named_modules() if hasattr(m, "weight")}
    assert kinds == {"features.0": "Linear", "features.2": "SupermaskLinear", "head": "Linear"}
    assert set(lrn.outer_names) == {n for n, _ in lrn.model.named_parameters()} - {"features.2.weight"}
    want = loop_meta_gradient(lrn, batch, 2, first_order)
    before = {n: p.detach().clone() for n, p in lrn.model.named_parameters()}
    spy = Spy(monkeypatch)
    lrn.meta_step(batch)
    assert spy.calls == (vectorize == "factored")
    got = {n: p.grad for n, p in lrn.model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() == set(lrn.outer_names)
    scale = max(float(g.abs().max()) for g in want.values())
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-9, atol=1e-12 * scale)
    moved = {n for n, p in lrn.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == set(lrn.outer_names)
    with pytest.raises(ValueError, match="learn_dense"):
        regression_learner("maml", learn_dense=True)


def test_sinusoid_tasks_are_seeded_and_in_range():
    a, b = SinusoidSampler(5, 10, seed=1).sample(4), SinusoidSampler(5, 10, seed=1).sample(4)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert a.support_x.shape == (4, 5, 1) and a.query_y.shape == (4, 10, 1)
    assert float(a.support_x.abs().max()) <= 5 and float(a.query_y.abs().max()) <= 5
    assert not torch.equal(SinusoidSampler(5, 10, seed=2).sample(4).support_x, a.support_x)
    with pytest.raises(ValueError, match="at least 1"):
        SinusoidSampler(0, 10)


def test_a_short_sinusoid_run_learns():
    """MAML, 10 shots, 400 meta-steps of 8 tasks: the test MSE falls well below the zero predictor's (about 4.9 on
    these tasks; measured 3.1 here, and a run that does not learn stays at or above 4.9). Our Kaiming-normal
    init (std 1.4 on the 1-input layer, 2.4x torch's default) needs an inner lr below MAML's 0.01 to be stable."""
    torch.manual_seed(0)
    lrn = regression_learner("maml", inner_lr=0.002, outer_lr=3e-3)
    train, test = SinusoidSampler(10, 10, seed=0), SinusoidSampler(10, 10, seed=99)
    for _ in range(400):
        lrn.meta_step(train.sample(8))
    score = meta_test(lrn, test, n_tasks=200, batch=50)
    zero = float(SinusoidSampler(10, 10, seed=99).sample(200).query_y.square().mean())
    assert "mse" in score and "accuracy" not in score
    assert score["mse"] < 0.75 * zero, (score, zero)


def test_losses_by_name_or_function():
    assert objective("mse").metric == "mse" and objective("cross_entropy").higher_is_better
    own = objective(lambda pred, y: (pred - y).abs().mean(-1))
    assert own.metric == "loss" and float(own.loss(torch.ones(3, 1), torch.zeros(3, 1))) == 1.0
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        objective("l1")


def test_sinusoid_runs_from_the_command_line_and_resumes(tmp_path, capsys):
    """run.py meta-train / meta-test of a sinusoid config: the logs, the summary and the meta-test line name the
    MSE (no accuracy), the best checkpoint is the lowest validation MSE, and a resumed run continues."""
    import json

    from conftest import REPO

    from metaticket.cli import main

    args = ["meta-train", str(REPO / "configs/sinusoid/mlp_5shot_maml.yaml"), "--set", f"run.out_dir={tmp_path}",
            "--set", "run.name=s", "--set", "meta.steps=6", "--set", "eval.val_every=2", "--set", "eval.val_tasks=8",
            "--set", "run.log_every=2", "--quiet"]
    assert main(args) == 0
    rows = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert val and all("mse" in r and "acc" not in r for r in val)
    assert all("mse" in r for r in rows if r["split"] == "train")
    best = json.loads((tmp_path / "s" / "train_summary.json").read_text())
    assert best["best_val_mse"] == min(r["mse"] for r in val)
    assert main([*args[:-1], "--set", "meta.steps=8", "--resume", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["meta-test", str(tmp_path / "s"), "--tasks", "16"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["dataset"] == "sinusoid" and line["mse"] > 0 and "accuracy" not in line and line["tasks"] == 16


def test_a_sinusoid_run_is_not_scored_on_classification_tasks(tmp_path, capsys):
    from conftest import REPO

    from metaticket.cli import main

    assert main(["meta-train", str(REPO / "configs/sinusoid/mlp_5shot_maml.yaml"), "--set", f"run.out_dir={tmp_path}",
                 "--set", "run.name=s", "--set", "meta.steps=2", "--set", "eval.val_every=2", "--set",
                 "eval.val_tasks=4", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["meta-test", str(tmp_path / "s"), "--dataset", "omniglot", "--tasks", "4"]) == 2
    assert "--dataset omniglot is scored by cross_entropy but" in capsys.readouterr().err


def test_the_shipped_metaticket_sinusoid_config_runs_and_learn_dense_needs_metaticket(tmp_path, capsys):
    """The shipped Meta-ticket sinusoid configs are the reference's AdamW variant: they meta-train, export a ticket
    that carries the meta-learned dense layers; meta.learn_dense on MAML is one line naming the key."""
    from conftest import REPO

    from metaticket.cli import main

    base = ["--set", f"run.out_dir={tmp_path}", "--set", "meta.steps=4", "--set", "eval.val_every=2", "--set",
            "eval.val_tasks=4", "--quiet"]
    assert main(["meta-train", str(REPO / "configs/sinusoid/mlp_10shot_metaticket.yaml"), "--set", "run.name=t",
                 *base]) == 0
    assert main(["export", str(tmp_path / "t"), "-o", str(tmp_path / "t.ticket")]) == 0
    capsys.readouterr()
    assert main(["meta-train", str(REPO / "configs/sinusoid/mlp_5shot_maml.yaml"), "--set", "run.name=m",
                 "--set", "meta.learn_dense=true", *base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta.learn_dense" in err[0] and "set it to false" in err[0]


def test_meta_test_counts_tasks_with_n_tasks_and_the_old_keyword_warns():
    """A batch of tasks is a ``Tasks``; a number of tasks is ``n_tasks`` (``tasks=`` still works, with a warning)."""
    lrn = regression_learner("maml", inner_lr=0.002)
    new = meta_test(lrn, SinusoidSampler(5, 5, seed=4), n_tasks=6, batch=3)
    with pytest.warns(DeprecationWarning, match="n_tasks"):
        old = meta_test(lrn, SinusoidSampler(5, 5, seed=4), tasks=6, batch=3)
    assert new == old and new["tasks"] == 6
