"""Objects from a config: the meta-learner of a few-shot run, the classifier of a supervised run.

These are what ``run.py`` builds, exposed so that other code (and tickets) rebuild the same networks from the
same config and seed. They take a :class:`~metaticket.config.Config` and plain arguments; nothing here reads
argv or the environment.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from metaticket.baselines.methods import method_of
from metaticket.config import Config, ConfigError, load_run_config
from metaticket.core.randommask import apply_random_masks
from metaticket.core.slots import freeze_slots
from metaticket.core.supermask import scale_fan_in
from metaticket.data import get_dataset
from metaticket.distributed import SINGLE, Collective
from metaticket.errors import MetaticketError
from metaticket.meta.learner import METHODS, MetaLearner, outer_defaults
from metaticket.meta.metaloss import choose_vectorize
from metaticket.models import build_model, list_models
from metaticket.models.registry import Layers, make_layers, model_arguments
from metaticket.runs.checkpoint import load_checkpoint


def image_size(config: Config) -> int:
    """``data.image_size``, or the dataset's own image side when it is null."""
    return config.data.image_size or get_dataset(config.data.dataset).image_size


# the keys whose ``auto``/null a run resolves before it starts; config.yaml records what ran
RESOLVED = ("data.image_size", "data.split", "meta.optimizer", "meta.outer_lr", "meta.schedule", "meta.warmup_steps",
            "meta.vectorize")


def resolve(config: Config, saved: Config | None = None) -> Config:
    """``config`` with each ``auto``/null of :data:`RESOLVED` replaced by the value a run uses: the dataset's image
    side, the method's outer optimizer, lr, schedule and warm-up (:func:`~metaticket.meta.learner.outer_defaults`),
    and ``vectorize`` (:func:`~metaticket.meta.metaloss.choose_vectorize` on the config's network, built on the meta
    device: shapes only). The one place defaults resolve: the learner is built from the result. A resumed run
    takes them from its ``saved`` config first, so a run that grows ``meta.steps`` keeps the warm-up it started
    with."""
    values = {sec: dict(keys) for sec, keys in config.to_dict().items()}
    old = saved.to_dict() if saved is not None else None
    for key in RESOLVED:
        sec, name = key.split(".")
        if values[sec][name] in (None, "auto") and old is not None and old[sec][name] not in (None, "auto"):
            values[sec][name] = old[sec][name]
    d, meta = values["data"], values["meta"]
    spec = get_dataset(config.data.dataset)
    if d["image_size"] is None:
        d["image_size"] = spec.image_size
    if config.run.kind == "meta" and spec.episodes is not None:
        d["split"] = spec.split_name(d["split"])
    if config.run.kind == "meta":
        meta["optimizer"], meta["outer_lr"], meta["schedule"], meta["warmup_steps"] = outer_defaults(
            meta["method"], meta["optimizer"], meta["outer_lr"], meta["schedule"], meta["warmup_steps"], meta["steps"])
    if config.run.kind == "meta" and meta["vectorize"] == "auto":
        with torch.device("meta"):
            meta["vectorize"] = choose_vectorize(build_meta_model(config, "meta"))
    return dataclasses.replace(config, **{sec: dataclasses.replace(getattr(config, sec), **values[sec])
                                          for sec in ("data", "meta")})


def check_model_name(config: Config) -> None:
    """A one-line error naming the known models when ``model.name`` is not one of them."""
    if config.model.name not in list_models():
        raise MetaticketError(f"model.name = {config.model.name!r} is unknown; known models: "
                              f"{', '.join(list_models())}")


def _build(config: Config, layers: Layers, num_classes: int, in_channels: int, device: torch.device | str) -> nn.Module:
    model_cfg = config.model
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size(config),
                  width=model_cfg.width, layers=layers)
    if "channels" in model_arguments(model_cfg.name):  # the models with a configurable channel count (conv4)
        kwargs["channels"] = model_cfg.channels
    try:
        return build_model(model_cfg.name, **kwargs).to(device)
    except ValueError as e:
        raise MetaticketError(f"model.name = {model_cfg.name}: {e}") from None


def build_meta_model(config: Config, device: torch.device | str = "cpu") -> nn.Module:
    """The few-shot network of ``config`` (supermask when ``meta.method`` needs one), drawn from ``run.seed``."""
    check_model_name(config)
    model_cfg, meta = config.model, config.meta
    if model_cfg.scale_fan:
        raise MetaticketError("model.scale_fan applies to train.method edgepopup, not to meta-learning: "
                              "set it to false")
    if meta.rerand_every and not METHODS[meta.method].needs_supermask:
        raise MetaticketError(f"meta.rerand_every = {meta.rerand_every} turns IteRand on, which re-draws the pruned "
                              f"weights of a supermask; meta.method {meta.method} has none: use metaticket or "
                              f"metaticket_boil, or set meta.rerand_every: 0")
    if meta.learn_dense and not METHODS[meta.method].needs_supermask:
        raise MetaticketError(f"meta.learn_dense adds the dense parameters to what Meta-ticket meta-learns; "
                              f"meta.method {meta.method} meta-learns every parameter already: set it to false")
    generator = torch.Generator().manual_seed(config.run.seed)
    layers = make_layers(supermask=METHODS[meta.method].needs_supermask, mask=model_cfg.mask,
                         sparsity=model_cfg.sparsity, init=model_cfg.init, init_sparsity=model_cfg.init_sparsity,
                         dense_head=model_cfg.dense_head, dense_first=model_cfg.dense_first,
                         norm_eps=model_cfg.norm_eps, generator=generator)
    spec = get_dataset(config.data.dataset)
    return _build(config, layers, spec.outputs or config.data.ways, spec.channels, device)


def build_learner(config: Config, device: torch.device | str = "cpu", collective: Collective = SINGLE) -> MetaLearner:
    """The meta-learner of a few-shot config: its model (:func:`build_meta_model`) and outer/inner settings.

    ``collective``: this process's place in a data-parallel group (:mod:`metaticket.distributed`)."""
    meta = config.meta
    return MetaLearner(build_meta_model(config, device), method=meta.method, inner_lr=meta.inner_lr,
                       inner_steps=meta.inner_steps, inner_steps_test=meta.inner_steps_test,
                       first_order=meta.first_order, optimizer=meta.optimizer, outer_lr=meta.outer_lr,
                       momentum=meta.momentum, weight_decay=meta.weight_decay, schedule=meta.schedule,
                       warmup_steps=meta.warmup_steps,
                       outer_steps=meta.steps, rerand_every=meta.rerand_every, rerand_rate=meta.rerand_rate,
                       vectorize=meta.vectorize, seed=config.run.seed, collective=collective,
                       precision=meta.precision, score_grad=meta.score_grad, learn_dense=meta.learn_dense,
                       loss=get_dataset(config.data.dataset).loss)


def build_classifier(config: Config, num_classes: int, device: torch.device | str = "cpu") -> nn.Module:
    """The supervised network of ``config``, drawn from ``run.seed``.

    ``dense``: plain layers; ``edgepopup``: supermask layers (top-k ``model.sparsity``); ``slot``:
    Slot Machine layers (``model.slots`` values per connection); ``randommask``: a fixed random mask of overall
    ``model.random_sparsity`` with ``model.ratios`` over every conv/linear layer, drawn after the weights from the same
    generator, around plain layers (``train.randommask_learns: weights``) or supermask layers that prune
    ``model.popup_sparsity`` of it (``scores``). Runs whose weights do not learn use BatchNorm without affine
    parameters, as edge-popup and IteRand do.
    """
    check_model_name(config)
    model_cfg = config.model
    kind = method_of(config.train)
    generator = torch.Generator().manual_seed(config.run.seed)
    layers = make_layers(supermask=kind.supermask, mask=model_cfg.mask,
                         sparsity=model_cfg.popup_sparsity if kind.random_mask else model_cfg.sparsity,
                         init=model_cfg.init, init_sparsity=model_cfg.init_sparsity, dense_head=model_cfg.dense_head,
                         dense_first=model_cfg.dense_first, generator=generator, norm="batch",
                         norm_affine=kind.learns_weights, norm_eps=model_cfg.norm_eps,
                         slots=model_cfg.slots if kind.slots else 0, slot_select=model_cfg.slot_select)
    model = _build(config, layers, num_classes, get_dataset(config.data.dataset).channels, "cpu")
    if model_cfg.scale_fan:
        if not kind.supermask or kind.random_mask or model_cfg.mask != "topk":
            raise MetaticketError("model.scale_fan rescales top-k supermask weights to the kept fan-in: use it with "
                                  "train.method edgepopup and model.mask topk (or set it to false)")
        scale_fan_in(model)
    if kind.random_mask:
        if kind.supermask and model_cfg.mask != "topk":
            raise MetaticketError("train.randommask_learns = scores runs edge-popup inside the random mask: "
                                  "set model.mask: topk")
        apply_random_masks(model, model_cfg.random_sparsity, model_cfg.ratios, generator)
    return model.to(device)


def slot_run_config(config: Config, run_dir: str | Path) -> Config:
    """The config of the slot run ``train.init_from`` names, checked against ``config`` (one-line errors)."""
    run_dir = Path(run_dir)
    if config.train.method != "dense":
        raise MetaticketError(f"train.init_from fine-tunes the values of a slot run: set train.method: dense "
                              f"(not {config.train.method}) or remove train.init_from")
    if not (run_dir / "config.yaml").is_file():
        raise MetaticketError(f"train.init_from = {run_dir}: not a run folder (no config.yaml); pass the folder a "
                              f"train.method: slot run wrote")
    try:
        source = load_run_config(run_dir / "config.yaml")
    except ConfigError as e:
        raise MetaticketError(f"train.init_from = {run_dir}: its config.yaml does not load: {e}") from None
    if source.train.method != "slot":
        raise MetaticketError(f"train.init_from = {run_dir} is a train.method: {source.train.method} run; "
                              f"fine-tuning starts from a slot run")
    mine = (config.model.name, config.model.width, config.model.channels, config.data.dataset)
    theirs = (source.model.name, source.model.width, source.model.channels, source.data.dataset)
    if mine != theirs:
        raise MetaticketError(f"train.init_from = {run_dir} trained (model, width, channels, dataset) {theirs}, "
                              f"this config has {mine}; use the same model and data")
    return source


def from_slot_run(config: Config, num_classes: int, run_dir: str | Path,
                  device: torch.device | str = "cpu") -> nn.Module:
    """The dense classifier of ``config`` holding the values a trained Slot Machine run chose (its fine-tuning start).

    ``run_dir`` is a ``train.method: slot`` run folder (``config.yaml`` + ``checkpoints/last.pt``) of the same
    model; its slot layers become plain layers with the greedy choice (:func:`~metaticket.core.slots.freeze_slots`), and
    its non-affine BatchNorm statistics carry over (affine scale 1 and shift 0 compute the same function).
    """
    source = slot_run_config(config, run_dir)
    run_dir = Path(run_dir)
    slot_net = build_classifier(source, num_classes)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    try:
        slot_net.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise MetaticketError(f"train.init_from = {run_dir}: its checkpoint does not fit its config "
                              f"({str(e).splitlines()[0]})") from None
    chosen = freeze_slots(slot_net.eval()).state_dict()
    model = build_classifier(config, num_classes)
    own = model.state_dict()
    missing = [k for k in own if k not in chosen and not _affine_norm_key(model, k)]
    if missing or any(k not in own for k in chosen):
        raise MetaticketError(f"train.init_from = {run_dir}: the slot network's layers do not match this model "
                              f"(missing {missing[:3]}); use the same model settings")
    with torch.no_grad():
        for k, v in chosen.items():
            own[k].copy_(v)
    return model.to(device)


def _affine_norm_key(model: nn.Module, key: str) -> bool:
    """Whether ``key`` is the scale or shift of a normalization layer (absent from a non-affine one)."""
    owner, _, leaf = key.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    return leaf in ("weight", "bias") and isinstance(module, nn.modules.batchnorm._NormBase)


def build_network(config: Config, num_classes: int | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """The network of any run: the meta-model (``run.kind: meta``, ``num_classes`` = ways) or the classifier."""
    if config.run.kind == "meta":
        return build_meta_model(config, device)
    if num_classes is None:
        raise ValueError("a supervised (run.kind: train) network needs num_classes")
    return build_classifier(config, num_classes, device)
