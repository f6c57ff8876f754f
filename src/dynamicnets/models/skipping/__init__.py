"""Dynamic depth II: layer skipping (per-sample residual-block execution on CIFAR ResNets).

- `skipnet_resnet`: SkipNet, a feed-forward or recurrent (shared LSTM) gate per block;
  soft-gate pre-training or hybrid REINFORCE with a cost penalty.
- `convnet_aig_resnet`: ConvNet-AIG, Gumbel-sigmoid gates and a target execution rate.
- `blockdrop_resnet`: BlockDrop, a policy network decides every block from the input;
  REINFORCE with the cost-aware reward, optional curriculum.
- `act_resnet` / `sact_resnet`: adaptive computation time over each stage's blocks, per
  sample / per spatial position, with a ponder cost.

Every model trains with static shapes (masked execution: every parameter gets a
gradient) and runs compact in eval (a skipped block costs nothing, `flops` per sample).
Execution helpers live in `dynamicnets.layers.gated_block`. Importing this package
registers the five models.
"""
from . import act, blockdrop, convnet_aig, skipnet
from .act import ACTResNet, HaltingState, HaltingUnit
from .blockdrop import BlockDrop, curriculum_blocks
from .convnet_aig import ConvNetAIG, target_rate_loss
from ...gates.block_gates import PolicyNetwork, PooledLinearGate, PooledMLPGate, RecurrentGate
from .gated_resnet import GatedResNet
from .reinforce import accuracy_reward_surrogate, loss_reward_surrogate
from .skipnet import SkipNet

__all__ = [
    "ACTResNet",
    "BlockDrop",
    "ConvNetAIG",
    "GatedResNet",
    "HaltingState",
    "HaltingUnit",
    "PolicyNetwork",
    "PooledLinearGate",
    "PooledMLPGate",
    "RecurrentGate",
    "SkipNet",
    "accuracy_reward_surrogate",
    "curriculum_blocks",
    "loss_reward_surrogate",
    "target_rate_loss",
    "act",
    "blockdrop",
    "convnet_aig",
    "skipnet",
]
