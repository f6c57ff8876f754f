"""Data sets and loaders: digits, MNIST-1D, MNIST (IDX), cluttered MNIST, CIFAR-10/100 (python
image folders, loaded from a spec string into a :class:`DataBundle`.

```python
from dynamicnets.data import load_data, make_loaders, set_epoch
bundle = load_data("cifar10:path/to/cifar-10-batches-py", val_size=5000, seed=0)
train_loader, val_loader = make_loaders(bundle, batch_size=128, seed=0)
for epoch in range(epochs):
    set_epoch(train_loader, epoch)   # needed under DDP, harmless otherwise
    for x, y in train_loader: ...    # x (128, 3, 32, 32) float32, y (128,) int64
```
"""
from .bundle import DataBundle
from .loaders import make_eval_loader, make_loaders, set_epoch
from .specs import DATASETS, cluttered_boxes, load_data, parse_spec

__all__ = [
    "DATASETS",
    "DataBundle",
    "cluttered_boxes",
    "load_data",
    "make_eval_loader",
    "make_loaders",
    "parse_spec",
    "set_epoch",
]
