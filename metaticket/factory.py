"""Objects from a config: the meta-learner of a few-shot run, the classifier of a supervised run.

These are what ``run.py`` builds, exposed so that other code (and tickets) rebuild the same networks from the
same config and seed. They take a :class:`~metaticket.config.Config` and plain arguments; nothing here reads
argv or the environment.
"""

from __future__ import annotations

import torch
from torch import nn

from metaticket.config import Config
from metaticket.data import DATASETS, dataset_channels
from metaticket.data.classification import CLASSIFICATION
from metaticket.distributed import SINGLE, Collective
from metaticket.errors import MetaticketError
from metaticket.meta.learner import METHODS, MetaLearner
from metaticket.models import build_model, list_models
from metaticket.models.registry import Layers, make_layers
from metaticket.randommask import apply_random_masks


def image_size(config: Config) -> int:
    """``data.image_size``, or the dataset's own image side when it is null."""
    d = config.data.dataset
    native = DATASETS[d][1] if d in DATASETS else CLASSIFICATION[d][1]
    return config.data.image_size or native


def _check_model_name(config: Config) -> None:
    if config.model.name not in list_models():
        raise MetaticketError(f"model.name = {config.model.name!r} is unknown; known models: "
                              f"{', '.join(list_models())}")


def _build(config: Config, layers: Layers, num_classes: int, in_channels: int, device: torch.device | str) -> nn.Module:
    m = config.model
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size(config), width=m.width,
                  layers=layers)
    if m.name == "conv4":
        kwargs["channels"] = m.channels
    try:
        return build_model(m.name, **kwargs).to(device)
    except ValueError as e:
        raise MetaticketError(f"model.name = {m.name}: {e}") from None


def build_meta_model(config: Config, device: torch.device | str = "cpu") -> nn.Module:
    """The few-shot network of ``config`` (supermask when ``meta.method`` needs one), drawn from ``run.seed``."""
    _check_model_name(config)
    m, meta = config.model, config.meta
    generator = torch.Generator().manual_seed(config.run.seed)
    layers = make_layers(supermask=METHODS[meta.method].needs_supermask, mask=m.mask, sparsity=m.sparsity,
                         init=m.init, init_sparsity=m.init_sparsity, dense_head=m.dense_head, generator=generator)
    return _build(config, layers, config.data.ways, dataset_channels(config.data.dataset), device)


def build_learner(config: Config, device: torch.device | str = "cpu", collective: Collective = SINGLE) -> MetaLearner:
    """The meta-learner of a few-shot config: its model (:func:`build_meta_model`) and outer/inner settings.

    ``collective``: this process's place in a data-parallel group (:mod:`metaticket.distributed`)."""
    meta = config.meta
    return MetaLearner(build_meta_model(config, device), method=meta.method, inner_lr=meta.inner_lr,
                       inner_steps=meta.inner_steps, inner_steps_test=meta.inner_steps_test,
                       first_order=meta.first_order, optimizer=meta.optimizer, outer_lr=meta.outer_lr,
                       momentum=meta.momentum, schedule=meta.schedule, warmup_steps=meta.warmup_steps,
                       steps=meta.steps, rerand_every=meta.rerand_every, rerand_rate=meta.rerand_rate,
                       vectorize=meta.vectorize, seed=config.run.seed, collective=collective)


def build_classifier(config: Config, num_classes: int, device: torch.device | str = "cpu") -> nn.Module:
    """The supervised network of ``config``, drawn from ``run.seed``.

    ``dense``: plain layers; ``edgepopup``/``iterand``: supermask layers (top-k ``model.sparsity``); ``slot``:
    Slot Machine layers (``model.slots`` values per connection); ``randommask``: a fixed random mask of overall
    ``model.sparsity`` with ``model.ratios`` over every conv/linear layer, drawn after the weights from the same
    generator, around plain layers (``train.randommask_learns: weights``) or supermask layers that prune
    ``model.popup_sparsity`` of it (``scores``). Runs whose weights do not learn use BatchNorm without affine
    parameters, as edge-popup and IteRand do.
    """
    _check_model_name(config)
    m, t = config.model, config.train
    generator = torch.Generator().manual_seed(config.run.seed)
    learns_weights = t.method == "dense" or (t.method == "randommask" and t.randommask_learns == "weights")
    if t.method == "randommask":
        supermask, sparsity = t.randommask_learns == "scores", m.popup_sparsity
    else:
        supermask, sparsity = t.method in ("edgepopup", "iterand"), m.sparsity
    layers = make_layers(supermask=supermask, mask=m.mask, sparsity=sparsity, init=m.init,
                         init_sparsity=m.init_sparsity, dense_head=m.dense_head, generator=generator, norm="batch",
                         norm_affine=learns_weights, slots=m.slots if t.method == "slot" else 0,
                         slot_select=m.slot_select)
    model = _build(config, layers, num_classes, 3, "cpu")
    if t.method == "randommask":
        if supermask and m.mask != "topk":
            raise MetaticketError("train.randommask_learns = scores runs edge-popup inside the random mask: "
                                  "set model.mask: topk")
        apply_random_masks(model, m.sparsity, m.ratios, generator)
    return model.to(device)


def build_network(config: Config, num_classes: int | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """The network of any run: the meta-model (``run.task: meta``, ``num_classes`` = ways) or the classifier."""
    if config.run.task == "meta":
        return build_meta_model(config, device)
    if num_classes is None:
        raise ValueError("a supervised (run.task: train) network needs num_classes")
    return build_classifier(config, num_classes, device)
