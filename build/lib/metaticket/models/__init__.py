"""Model definitions; importing this package registers every builder."""

from metaticket.models import conv4, conv6, mlp, resnet, resnet12, wrn28  # noqa: F401  (registration side effect)
from metaticket.models.registry import Layers, build_model, list_models, register_model

__all__ = ["Layers", "build_model", "list_models", "register_model"]
