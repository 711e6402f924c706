"""Every registered model, dense and supermask, and the method variants (ANIL, BOIL, Meta-ticket+BOIL)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaticket.core.supermask import SupermaskConv2d, SupermaskLinear, supermask_layers
from metaticket.meta.learner import METHODS, MetaLearner
from metaticket.models import build_model, list_models
from metaticket.models.registry import make_layers
from metaticket.tasks import Tasks

SMALL = {"mlp": {"width": 0.25}, "conv4": {"channels": 8}, "resnet12": {"width": 0.125}, "wrn28-10": {"width": 0.1},
         "wrn28-5": {"width": 0.2},
         "conv6": {"width": 0.125}, "resnet18": {"width": 0.125}, "resnet34": {"width": 0.125},
         "resnet50": {"width": 0.125}, "wide_resnet50_2": {"width": 0.125}, "sinusoid-mlp": {"width": 1.0}}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("supermask", [False, True])
def test_every_model_builds_dense_and_supermask(name, supermask):
    layers = make_layers(supermask=supermask, generator=torch.Generator().manual_seed(0), dense_head=True)
    net = build_model(name, num_classes=5, in_channels=3, image_size=32, layers=layers, **SMALL[name])
    out = net(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 5)
    n_masked = sum(1 for _ in supermask_layers(net))
    if supermask:
        assert n_masked > 0 and type(net.head) is nn.Linear  # dense head kept
        assert all(isinstance(m, (SupermaskConv2d, SupermaskLinear)) for m in net.modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not net.head)
    else:
        assert n_masked == 0


def test_resnet12_and_wrn_widths():
    r = build_model("resnet12", num_classes=5)
    convs = [m.out_channels for m in r.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert sorted(set(convs)) == [64, 128, 256, 512]
    w = build_model("wrn28-10", num_classes=5)
    n_convs = sum(1 for m in w.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert n_convs == 25 and w.head.in_features == 640  # 1 stem + 3 groups x 4 blocks x 2 convs; 64 x 10


def _tasks(batch: int = 2, channels: int = 3, size: int = 16) -> Tasks:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(5).expand(batch, -1).clone()
    return Tasks(torch.rand(batch, 5, channels, size, size, generator=g), y,
                 torch.rand(batch, 5, channels, size, size, generator=g), y)


def _learner(method: str) -> MetaLearner:
    layers = make_layers(supermask=METHODS[method].needs_supermask, generator=torch.Generator().manual_seed(0))
    net = build_model("conv4", num_classes=5, in_channels=3, image_size=16, channels=8, layers=layers)
    return MetaLearner(net, method=method, outer_steps=5)


@pytest.mark.parametrize(("method", "adapted_part"), [("anil", "head"), ("boil", "body"), ("maml", "all"),
                                                      ("metaticket", "all"), ("metaticket_boil", "body")])
def test_inner_loop_adapts_only_its_part(method, adapted_part):
    lrn = _learner(method)
    start, _ = lrn.initial_params()
    adapted = lrn.adapt(_tasks(1), steps=1)[0]
    moved = {k for k in adapted if not torch.equal(adapted[k], start[k].detach())}
    head = {k for k in adapted if k.startswith("head.")}
    expected = {"head": head, "body": set(adapted) - head, "all": set(adapted)}[adapted_part]
    assert moved == expected


@pytest.mark.parametrize("method", ["anil", "boil"])
def test_anil_and_boil_outer_step_learns_every_parameter(method):
    lrn = _learner(method)
    before = {k: v.clone() for k, v in lrn.model.state_dict().items()}
    lrn.meta_step(_tasks())
    after = lrn.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_metaticket_boil_outer_step_changes_only_scores():
    lrn = _learner("metaticket_boil")
    before = {k: v.clone() for k, v in lrn.model.state_dict().items()}
    lrn.meta_step(_tasks())
    after = lrn.model.state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == {k for k in before if k.endswith("scores")}


def test_unknown_method_lists_known_ones():
    net = build_model("mlp", num_classes=5)
    with pytest.raises(ValueError, match="unknown method 'reptile'; known: anil, boil, maml, metaticket, "
                                         "metaticket_boil"):
        MetaLearner(net, method="reptile")


def test_registering_a_builder_again_replaces_it_and_a_clash_is_refused():
    from metaticket.models.registry import _REGISTRY

    cell = ("from metaticket.models import register_model\n"
            "@register_model('cell_mlp')\n"
            "def cell_mlp(*, num_classes, **kw):\n"
            "    import torch\n"
            "    return torch.nn.Linear(4, num_classes)\n")
    try:
        for _ in range(2):  # a notebook cell run twice: the same module and function name
            exec(compile(cell, "<cell>", "exec"), {"__name__": "__main__"})  # noqa: S102
        assert build_model("cell_mlp", num_classes=3).out_features == 3
        with pytest.raises(ValueError, match="'mlp' is already registered by metaticket.models.mlp.mlp"):
            exec(compile(cell.replace("'cell_mlp'", "'mlp'"), "<cell>", "exec"), {"__name__": "__main__"})  # noqa: S102
    finally:
        _REGISTRY.pop("cell_mlp", None)
