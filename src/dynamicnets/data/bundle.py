"""The result of loading a data set: its splits and what a model needs to know about it."""
from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass
class DataBundle:
    """Train/validation(/test) splits of one data set.

    Every dataset yields ``(x, y)`` with ``x`` float32 of shape ``input_shape`` and ``y`` an
    int64 scalar tensor in ``[0, num_classes)``.

    Attributes:
        name: the data set's name (``"cifar10"``, ``"digits"``, ...).
        train: the training split (augmented when requested).
        val: the validation split, carved from the training set with a seed; never augmented.
        test: the official test split when the files hold one, else ``None``.
        num_classes: number of classes.
        input_shape: shape of one sample, e.g. ``(3, 32, 32)``.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    input_shape: tuple[int, ...]

    @property
    def preprocessing(self):
        """The `Preprocessing` of the training split (stored type, scale, mean, std, input
        shape), or `None` when its samples are not held by an `InMemoryDataset`."""
        from .preprocessing import preprocessing_of

        return preprocessing_of(self.train)
