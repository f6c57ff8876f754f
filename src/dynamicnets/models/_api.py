"""The classifier API every registered model has (timm's conventions).

- `forward_features(x)`: the features the final classifier reads, before any pooling:
  for a CNN the last feature map, unpooled, `(B, num_features, *S)`; for an MLP or a
  recurrent network the vector `(B, num_features)` its linear classifier reads; for a
  transformer its normalised tokens `(B, N, num_features)` (timm's layout). The
  model's own keyword arguments (`execution=`, `width=`, `temperature=`, ...) may be
  passed and mean what they mean for `forward`.
- `forward_head(features)`: the rest of the way to the logits `(B, num_classes)`:
  global pooling where the model pools, then the classifier.
- `forward(x).logits == forward_head(forward_features(x))` whenever both make the same
  decisions: always for a static model; for a dynamic model in eval mode (its decisions
  are then deterministic) in any execution, and in training only where its decisions are
  not sampled.
- `get_classifier()`: the final linear layer (the one that produces the logits).
- `reset_classifier(num_classes)`: fresh final linear layer(s) with `num_classes`
  outputs, on the device and dtype of the old ones; every other weight is kept.
- `num_features`: the channels (or features) of `forward_features`' output.

Multi-exit models (`dynamicnets.models.depth`): `forward_features`, `forward_head`,
`get_classifier` and `num_features` refer to the final exit; `reset_classifier`
replaces the final linear layer of every exit (the convolutions of an exit head are
features, and stay). Where a model departs further (a tree, a width-gated network) its
class docstring says how.

`ClassifierApi` implements all of it from two declarations, `head_path` (the module
that maps features to logits) and `classifier_paths` (its final linear layer(s)), plus
a model's own `forward_features` where its trunk can run on its own.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError


def check_num_classes(model: str, num_classes: int) -> int:
    """Return `num_classes` if it is an int >= 1, else raise `ConfigError` naming `model`."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"{model}: num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def fresh_linear(old: nn.Linear, num_classes: int) -> nn.Linear:
    """A newly initialised `nn.Linear(old.in_features, num_classes)` like `old` (bias,
    device, dtype).

    Raises:
        ConfigError: `old` is not a plain `nn.Linear` (a subclass needs its own reset).
    """
    if type(old) is not nn.Linear:
        raise ConfigError(f"cannot reset a classifier of type {type(old).__name__}: expected nn.Linear")
    return nn.Linear(
        old.in_features, num_classes, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype
    )


def run_capturing(model: nn.Module, head: nn.Module, x: Tensor, **kwargs) -> Tensor:
    """Run `model(x, **kwargs)` and return the input `head` received: the features of
    that forward, with the decisions the model made in it.

    Raises:
        RuntimeError: `head` did not run exactly once in that forward.
    """
    seen: list[Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        model(x, **kwargs)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise RuntimeError(
            f"{type(model).__name__}: its head ran {len(seen)} times in one forward; "
            "forward_features needs its own implementation"
        )
    return seen[0]


class ClassifierApi:
    """Mixin giving an `nn.Module` model the classifier API (see the module docstring).

    A model declares:

    Attributes:
        head_path: dotted path of the module mapping `forward_features`' output to the
            logits (`"head"`: a pool + linear `ClassifierHead`, or a plain `nn.Linear`).
        classifier_paths: dotted paths of the final linear layer(s) that
            `reset_classifier` replaces, the final exit's last (`("head.fc",)`).

    and overrides `forward_features` where its trunk can run without its head (the
    default runs the whole forward and returns what the head read, so the features come
    with the model's own decisions; it costs one extra head evaluation).
    """

    head_path: str = "head"
    classifier_paths: tuple[str, ...] = ("head.fc",)

    def forward_features(self, x: Tensor, **kwargs) -> Tensor:
        """Features before the classifier: `(B, C, H, W) -> (B, num_features, *S)`.

        Args:
            x: the model's input.
            **kwargs: the model's own forward keyword arguments (e.g. `execution`).

        Returns:
            what the head reads in `forward(x, **kwargs)`.
        """
        return run_capturing(self, self.get_submodule(self.head_path), x, **kwargs)

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits from `forward_features`' output: `(B, num_features, *S) -> (B, num_classes)`."""
        return self.get_submodule(self.head_path)(features)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (of the final exit, for a multi-exit model)."""
        return self.get_submodule(self.classifier_paths[-1])

    @property
    def num_features(self) -> int:
        """Channels of `forward_features`' output (the final classifier's input features)."""
        return int(self.get_classifier().in_features)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer(s) by fresh ones with `num_classes` outputs.

        Args:
            num_classes: `>= 1`.

        Raises:
            ConfigError: `num_classes` is not a positive int.
        """
        check_num_classes(type(self).__name__, num_classes)
        for path in self.classifier_paths:
            self.set_submodule(path, fresh_linear(self.get_submodule(path), num_classes))
        self.classifier_changed()

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """The `CostReporting` protocol for whole models: per-sample FLOPs of the static
        (masked) forward on a `(C, *spatial)` input, and the per-sample logits shape.

        Counted by `FlopCounterMode` on one sample of meta tensors (no data, no compute,
        nothing of the model touched); what a given input executes is `model(x).flops`.
        """
        from ..flops import traced_flops_and_shape  # the counter reaches models through this protocol

        return traced_flops_and_shape(self, tuple(int(s) for s in in_shape))

    def classifier_changed(self) -> None:
        """Called after `reset_classifier`: drop whatever the model cached from the old
        classifier (e.g. costs). Nothing by default."""
