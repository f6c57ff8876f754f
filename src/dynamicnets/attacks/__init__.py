"""Attacks on dynamic networks and the measures of what they cost.

- `slowdown_attack`: DeepSloth (Hong et al., ICLR 2021), L-infinity PGD that pushes every
  internal exit toward the uniform distribution (or every skipping gate on), so inputs
  run to the end of the network.
- `pgd_attack`: untargeted L-infinity PGD on the final logits (Madry et al., ICLR 2018).
- `efficacy`: the area under DeepSloth's early-exit capability curve.
- `score_early_exit` / `score_forward`: accuracy, efficacy, mean and max per-sample FLOPs
  of clean or attacked inputs under an `ExitPolicy` (with or without a compute cap).
- `InputSpace`: the pixel space behind normalised inputs, where budgets such as 8/255
  and the valid range apply.

```python
from dynamicnets.attacks import InputSpace, slowdown_attack, score_early_exit
space = InputSpace.from_preprocessing(bundle.preprocessing, "cifar10")
x_adv = slowdown_attack(model, x, eps=8 / 255, steps=20, space=space)
score_early_exit(model, x_adv, y, policy)   # efficacy falls, mean FLOPs rise
```
"""
from .arguments import NORMS, check_attack, parse_fraction
from .crafting import KINDS, check_kind, craft
from .efficacy import early_exit_curve, efficacy, exit_indices_from_flops
from .input_space import InputSpace
from .pgd import pgd_attack, projected_gradient_ascent
from .scoring import score_early_exit, score_forward
from .slowdown import execute_all_loss, slowdown_attack, uniform_exit_loss

__all__ = [
    "InputSpace",
    "KINDS",
    "NORMS",
    "check_attack",
    "check_kind",
    "craft",
    "early_exit_curve",
    "efficacy",
    "execute_all_loss",
    "exit_indices_from_flops",
    "parse_fraction",
    "pgd_attack",
    "projected_gradient_ascent",
    "score_early_exit",
    "score_forward",
    "slowdown_attack",
    "uniform_exit_loss",
]
