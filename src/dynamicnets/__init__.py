"""dynamicnets: dynamic neural networks for PyTorch, with real, measured savings."""
from . import data, gates, inference, layers, models, profiling, training
from . import adapt
from .errors import CheckpointError, ConfigError, DataError, DynamicNetsError, TrainingError
from .models import create_model, list_models, register_model
from .outputs import DynamicOutput

__version__ = "0.1.0"

__all__ = [
    "DynamicOutput",
    "create_model",
    "list_models",
    "register_model",
    "adapt",
    "data",
    "gates",
    "inference",
    "layers",
    "models",
    "profiling",
    "training",
    "DynamicNetsError",
    "DataError",
    "ConfigError",
    "CheckpointError",
    "TrainingError",
]
