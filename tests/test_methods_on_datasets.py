"""Every method takes a meta-step and evaluates on every episodic dataset (tiny sizes).

Omniglot and Tiny-ImageNet are the real data ($METATICKET_DATA); miniImageNet is a small generated pickle set.
"""

from __future__ import annotations

import pytest
import torch

from metaticket.data import episode_samplers, get_dataset
from metaticket.meta.learner import METHODS, MetaLearner
from metaticket.models import build_model
from metaticket.models.registry import make_layers


@pytest.fixture(scope="module")
def samplers(data_root, cache_dir, tmp_path_factory):
    from test_datasets import _mini_pickles

    mini = tmp_path_factory.mktemp("mini")
    _mini_pickles(mini)
    out = {}
    for name, root in (("omniglot", data_root), ("tinyimagenet", data_root), ("miniimagenet", mini)):
        out[name] = episode_samplers(name, root, cache_dir if name != "miniimagenet" else mini / "cache", ways=5,
                                     shots=1, queries=2, image_size=16, rotations=True, seed=0, val_seed=1,
                                     progress=False)
    return out


@pytest.mark.parametrize("dataset", ["omniglot", "tinyimagenet", "miniimagenet"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_runs_on_dataset(samplers, dataset, method):
    layers = make_layers(supermask=METHODS[method].needs_supermask, generator=torch.Generator().manual_seed(0))
    net = build_model("conv4", num_classes=5, in_channels=get_dataset(dataset).channels, image_size=16, channels=4,
                      layers=layers)
    lrn = MetaLearner(net, method=method, inner_lr=0.3, outer_steps=3)
    out = lrn.meta_step(samplers[dataset]["train"].sample(2))
    assert torch.isfinite(torch.tensor(out["loss"]))
    loss, acc = lrn.evaluate(samplers[dataset]["test"].sample(3))
    assert loss.shape == acc.shape == (3,) and bool(((acc >= 0) & (acc <= 1)).all())
