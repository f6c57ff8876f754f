"""Training: the `Trainer` (checkpoints, resume, data-parallel), losses, schedules.

```python
from dynamicnets.training import TrainConfig, Trainer
result = Trainer(TrainConfig(name="digits", model="small_cnn", data="digits", epochs=5)).fit()
```
"""
from .checkpoint import check_compatible, load_checkpoint, save_checkpoint, unwrap_model
from .config import TrainConfig
from .distributed import all_reduce_sum, cleanup, init_distributed, is_distributed, is_main
from .distillation import exit_distillation_loss
from .evaluate import evaluate
from .losses import multi_exit_loss, normalized_exit_weights
from .objective import dynamic_loss, loss_terms
from .protocols import SupportsBaselineUpdate, SupportsLabelLosses, SupportsTrainingProgress
from .schedules import build_scheduler, lr_factor
from .trainer import Trainer, build_optimizer, resolve_device

__all__ = [
    "SupportsBaselineUpdate",
    "SupportsLabelLosses",
    "SupportsTrainingProgress",
    "TrainConfig",
    "Trainer",
    "all_reduce_sum",
    "build_optimizer",
    "build_scheduler",
    "check_compatible",
    "cleanup",
    "dynamic_loss",
    "evaluate",
    "exit_distillation_loss",
    "init_distributed",
    "is_distributed",
    "is_main",
    "load_checkpoint",
    "loss_terms",
    "lr_factor",
    "multi_exit_loss",
    "normalized_exit_weights",
    "resolve_device",
    "save_checkpoint",
    "unwrap_model",
]
