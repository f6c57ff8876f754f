"""Models by family; importing this package registers every model."""
from . import static  # noqa: F401  (registers the static baselines)
from ._registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]
