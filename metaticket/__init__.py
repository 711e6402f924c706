"""metaticket: sparse subnetworks (tickets) inside randomly initialized networks, for few-shot meta-learning
(Meta-ticket, MAML, ANIL, BOIL) and supervised pruning (edge-popup, IteRand).

The public API (each name is documented in docs/ with an example; docs/reference.md lists them all):
- supermask core: ``SupermaskLinear``, ``SupermaskConv2d``, ``convert``, ``rerandomize``, ``IteRandSchedule``,
  ``sparsity_report``;
- models: ``build_model``, ``list_models``, ``register_model``, ``make_layers``, ``Layers``;
- meta-learners over a user's own task batches (``Tasks``): ``MAML``, ``ANIL``, ``BOIL``, ``MetaTicket``
  (and their common class ``MetaLearner``) with ``meta_step`` / ``adapt`` / ``evaluate``, and ``clone`` for a
  learn2learn-style loop of your own (``metaticket.meta.clone``); tasks from any
  ``(image, label)`` dataset: ``sampler_from_dataset`` (``class_images``); ``meta_test`` -> accuracy +- CI;
- seed methods: ``SlotLinear``, ``SlotConv2d``, ``freeze_slots`` (Slot Machines); ``layer_sparsities``,
  ``apply_random_masks`` (fixed random masks with layer-wise ratios);
- tickets: ``export_ticket``, ``load_ticket``, ``ticket_info``;
- configs: ``load_config`` and the builders ``build_learner`` / ``build_classifier`` / ``build_network`` that
  ``run.py`` uses; supervised training: ``train_supervised``, ``evaluate_classifier``, ``TrainPlan``;
- whole runs as functions (what ``run.py`` calls): ``metaticket.runs.commands`` (``meta_train``, ``meta_test``,
  ``train``, ``evaluate``, ``export``, ``sweep``, with a ``Context``); datasets: ``metaticket.data``
  (``register_dataset``).
"""

from metaticket.baselines.train import TrainPlan, evaluate_classifier
from metaticket.config import Config, ConfigError, load_config
from metaticket.core.randommask import apply_random_masks, layer_sparsities
from metaticket.core.slots import SlotConv2d, SlotLinear, freeze_slots
from metaticket.core.supermask import (
    IteRandSchedule,
    SupermaskConv2d,
    SupermaskLinear,
    convert,
    rerandomize,
    sparsity_report,
)
from metaticket.data.episodes import EpisodeSampler, class_images, sampler_from_dataset
from metaticket.errors import MetaticketError
from metaticket.meta.evaluate import meta_test
from metaticket.meta.learner import ANIL, BOIL, MAML, MetaLearner, MetaTicket
from metaticket.meta.metaloss import MetaLoss, meta_loss
from metaticket.models import Layers, build_model, list_models, register_model
from metaticket.models.registry import make_layers
from metaticket.runs.factory import build_classifier, build_learner, build_network
from metaticket.runs.supervised import train_supervised
from metaticket.runs.ticket import export_ticket, load_ticket, ticket_info
from metaticket.tasks import Tasks

__version__ = "0.1.0"

__all__ = [
    "ANIL", "BOIL", "Config", "ConfigError", "EpisodeSampler", "IteRandSchedule", "Layers", "MAML", "MetaLearner",
    "MetaLoss", "MetaTicket", "MetaticketError", "SlotConv2d", "SlotLinear", "SupermaskConv2d", "SupermaskLinear",
    "Tasks", "TrainPlan", "apply_random_masks", "build_classifier", "build_learner", "build_model", "build_network",
    "class_images", "convert", "evaluate_classifier", "export_ticket", "freeze_slots", "layer_sparsities",
    "list_models", "load_config", "load_ticket", "make_layers", "meta_loss", "meta_test", "register_model",
    "rerandomize", "sampler_from_dataset", "sparsity_report", "ticket_info", "train_supervised",
]
