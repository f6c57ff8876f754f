"""Gates: modules and functions that PRODUCE decisions (layers take them as arguments).

- `gumbel`: Gumbel-softmax / Gumbel-sigmoid samples and gates.
- `schedules`: temperature annealing (`tau`, DY-Conv temperature).
- `straight_through`: hard thresholds with straight-through gradients, improved semhash.
- `policy`: REINFORCE policies, moving-average baseline, loss, cost-aware reward.
- `confidence`: early-exit criteria (max-prob, entropy, margin, patience).
- `learned_exit`: a learned exit criterion (a tiny head predicting whether an exit is right).
- `block_gates`: gate networks of layer skipping (pooled linear/MLP gates, SkipNet's
  recurrent gate, BlockDrop's policy network).
- `channel`: per-sample channel gates (feature boosting and suppression, Gumbel channels).
- `routers`: mixture-of-experts routers (top-k, noisy top-k, expert choice).
- `routing`: CondConv / DY-Conv routing functions (attention over expert kernels).
- `thresholds`: `GatePolicy`, the inference decision rule of threshold gates.
- `jump_policy`: `JumpPolicy`, the inference decision rule of a jump softmax (LSTM-Jump).
- `block_budget`: `BlockBudget`, a per-sample compute cap on gated blocks.
"""
from .block_gates import PolicyNetwork, PooledLinearGate, PooledMLPGate, RecurrentGate
from .channel import ChannelDecision, FBSGate, GumbelChannelGate
from .confidence import (
    EntropyCriterion,
    ExitCriterion,
    MarginCriterion,
    MaxProbCriterion,
    Patience,
    PatienceCriterion,
    agreement_streaks,
    entropy_confidence,
    get_criterion,
    list_criteria,
    max_probability,
    score_margin,
)
from .gumbel import (
    GumbelSigmoidGate,
    GumbelSoftmaxGate,
    gumbel_sigmoid,
    gumbel_softmax,
    sample_gumbel,
    sample_logistic,
)
from .learned_exit import LearnedExitCriterion, fit_learned_exit, learned_exit_features
from .policy import (
    BernoulliPolicy,
    CategoricalPolicy,
    MovingAverageBaseline,
    cost_aware_reward,
    reinforce_loss,
)
from .routers import ExpertChoiceRouter, NoisyTopKRouter, Routing, TopKRouter
from .routing import RoutingFunction
from .schedules import CosineDecay, ExponentialDecay, LinearDecay
from .thresholds import GatePolicy
from .jump_policy import JumpPolicy
from .block_budget import BlockBudget
from .straight_through import ImprovedSemHash, improved_semhash, saturating_sigmoid, ste_threshold

__all__ = [
    # gate networks, routers, the threshold policy
    "PolicyNetwork",
    "PooledLinearGate",
    "PooledMLPGate",
    "RecurrentGate",
    "ChannelDecision",
    "FBSGate",
    "GumbelChannelGate",
    "ExpertChoiceRouter",
    "NoisyTopKRouter",
    "Routing",
    "TopKRouter",
    "RoutingFunction",
    "GatePolicy",
    "JumpPolicy",
    "BlockBudget",
    # gumbel
    "gumbel_softmax",
    "gumbel_sigmoid",
    "sample_gumbel",
    "sample_logistic",
    "GumbelSoftmaxGate",
    "GumbelSigmoidGate",
    # schedules
    "ExponentialDecay",
    "LinearDecay",
    "CosineDecay",
    # straight-through
    "ste_threshold",
    "saturating_sigmoid",
    "improved_semhash",
    "ImprovedSemHash",
    # policy
    "BernoulliPolicy",
    "CategoricalPolicy",
    "MovingAverageBaseline",
    "reinforce_loss",
    "cost_aware_reward",
    # confidence
    "max_probability",
    "entropy_confidence",
    "score_margin",
    "agreement_streaks",
    "Patience",
    "ExitCriterion",
    "MaxProbCriterion",
    "EntropyCriterion",
    "MarginCriterion",
    "PatienceCriterion",
    "get_criterion",
    "list_criteria",
    # learned exit
    "LearnedExitCriterion",
    "fit_learned_exit",
    "learned_exit_features",
]
