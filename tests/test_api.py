"""The public API: ``from metaticket import ...`` with a user's own task tensors, no config or run folder."""

from __future__ import annotations

import pytest
import torch

import metaticket
from metaticket import ANIL, BOIL, MAML, MetaTicket, Tasks, build_model, convert, make_layers


def user_tasks(batch: int = 3, ways: int = 5, shots: int = 1, queries: int = 2) -> Tasks:
    g = torch.Generator().manual_seed(0)
    return Tasks(support_x=torch.randn(batch, ways * shots, 1, 28, 28, generator=g),
                 support_y=torch.arange(ways).repeat_interleave(shots).repeat(batch, 1),
                 query_x=torch.randn(batch, ways * queries, 1, 28, 28, generator=g),
                 query_y=torch.arange(ways).repeat_interleave(queries).repeat(batch, 1))


def mlp(supermask: bool) -> torch.nn.Module:
    layers = make_layers(supermask=supermask, mask="threshold", generator=torch.Generator().manual_seed(0))
    return build_model("mlp", num_classes=5, layers=layers)


@pytest.mark.parametrize(("cls", "method", "supermask"), [(MAML, "maml", False), (ANIL, "anil", False),
                                                          (BOIL, "boil", False), (MetaTicket, "metaticket", True)])
def test_learner_objects_step_adapt_and_evaluate_on_user_tasks(cls, method, supermask):
    learner = cls(mlp(supermask), inner_lr=0.4, outer_steps=10)
    assert learner.method == method
    tasks = user_tasks()
    before = {k: v.detach().clone() for k, v in learner.model.state_dict().items()}
    out = learner.meta_step(tasks)
    assert {"loss", "acc", "outer_lr"} <= set(out)
    moved = {k for k, v in learner.model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and (all(k.endswith("scores") for k in moved) if supermask else True)
    adapted = learner.adapt(tasks)
    assert len(adapted) == 3
    logits = learner.logits(adapted[0], tasks.query_x[0])
    assert logits.shape == (10, 5)
    loss, acc = learner.evaluate(tasks)
    assert loss.shape == acc.shape == (3,)


def test_metaticket_boil_and_first_order_maml():
    assert MetaTicket(mlp(True), boil=True).method == "metaticket_boil"
    assert MAML(mlp(False), first_order=True).first_order


def test_convert_a_users_own_model_then_meta_learn_its_mask():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    convert(net, mask="threshold", keep_dense=["3"], generator=torch.Generator().manual_seed(0))
    learner = MetaTicket(net, outer_steps=5)
    assert learner.outer_names == ["1.scores"]
    assert learner.meta_step(user_tasks())["loss"] > 0


def test_everything_in_all_is_importable():
    for name in metaticket.__all__:
        assert getattr(metaticket, name) is not None, name
