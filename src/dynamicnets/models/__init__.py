"""Models by family; importing this package registers every model."""
from . import depth, parameters, skipping, static, temporal, width  # noqa: F401  (importing a family registers its models)
from ._registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]
