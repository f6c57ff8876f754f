"""Spatial family: networks that decide *where* in the feature map to compute.

- Pixel level: DynConv ResNets (`dynconv_resnet20/32`, `dynconv_resnet50`, per-position or per-tile gates,
  sparse execution at inference); SACT ResNets (per-position halting).
- Dynamic receptive fields: deformable ResNets (`deformable_resnet20/32`).
- Region level: a spatial transformer picks a glimpse for a small CNN (`stn_cnn`).
- Region level, step by step: glance at a small copy, then focus on patches a policy picks,
  exiting after any step (`glance_focus_cnn`, GFNet).
- Resolution level: a predictor picks each sample's input resolution
  (`dynamic_resolution_resnet`).
"""
from . import deformable_resnet  # noqa: F401  (registers deformable_resnet20/32)
from . import dynconv_resnet  # noqa: F401  (registers dynconv_resnet20/32)
from . import sact  # noqa: F401  (registers sact_resnet20/32)
from . import dynconv_resnet50  # noqa: F401  (registers dynconv_resnet50)
from . import stn  # noqa: F401  (registers stn_cnn)
from . import dynamic_resolution  # noqa: F401  (registers dynamic_resolution_resnet)
from . import glance_focus  # noqa: F401  (registers glance_focus_cnn)
