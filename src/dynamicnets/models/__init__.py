"""Models by family; importing this package registers every model.

Every registered model has the classifier API of `ClassifierApi` (`forward_features`,
`forward_head`, `get_classifier`, `reset_classifier`, `num_features`); `model_info(name)`
gives a registered model's family, description, default input shape, parameters and FLOPs.
"""
from . import depth, parameters, skipping, spatial, static, temporal, transformers, width  # noqa: F401  (importing a family registers its models)
from ._api import ClassifierApi
from ._registry import (
    FAMILIES,
    ModelInfo,
    RegisteredModel,
    create_model,
    is_model,
    list_families,
    list_models,
    model_info,
    register_model,
    registered_model,
)

__all__ = [
    "FAMILIES",
    "ClassifierApi",
    "ModelInfo",
    "RegisteredModel",
    "create_model",
    "is_model",
    "list_families",
    "list_models",
    "model_info",
    "register_model",
    "registered_model",
]
