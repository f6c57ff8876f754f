"""dynamicnets: dynamic neural networks for PyTorch, with real, measured savings."""
from . import data, flops, gates, inference, layers, models, profiling, training
from . import adapt, protocols
from .errors import (CheckpointError, ConfigError, DataError, DynamicNetsError, ExportCheckError, OutputError,
                     SplitError, TrainingError)
from .flops import count_flops
from .models import create_model, list_models, register_model
from .outputs import DynamicOutput

__version__ = "0.1.0"

__all__ = [
    "DynamicOutput",
    "count_flops",
    "create_model",
    "list_models",
    "register_model",
    "adapt",
    "data",
    "flops",
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
    "OutputError",
    "ExportCheckError",
    "SplitError",
]
