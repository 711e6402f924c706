"""metaticket: sparse subnetworks (tickets) inside randomly initialized networks, for few-shot meta-learning
(Meta-ticket, MAML) and supervised pruning (edge-popup, IteRand)."""

from metaticket.baselines.train import Plan, evaluate_classifier, train_supervised
from metaticket.config import Config, ConfigError, load_config
from metaticket.data.episodes import EpisodeSampler, Tasks
from metaticket.errors import MetaticketError
from metaticket.meta.learner import MetaLearner
from metaticket.models import Layers, build_model, list_models, register_model
from metaticket.supermask import (
    IteRandSchedule,
    SupermaskConv2d,
    SupermaskLinear,
    convert,
    rerandomize,
    sparsity_report,
)

__version__ = "0.1.0"

__all__ = [
    "Config", "ConfigError", "EpisodeSampler", "IteRandSchedule", "Layers", "MetaLearner", "MetaticketError",
    "SupermaskConv2d", "SupermaskLinear", "Tasks", "build_model", "convert", "list_models", "load_config",
    "register_model", "rerandomize", "sparsity_report", "Plan", "evaluate_classifier", "train_supervised",
]
