"""spatial."""
from . import deformable_resnet  # noqa: F401  (registers deformable_resnet20/32)
