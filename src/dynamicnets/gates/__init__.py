"""Gates: modules and functions that PRODUCE decisions (layers take them as arguments).

- `gumbel`: Gumbel-softmax / Gumbel-sigmoid samples and gates.
- `schedules`: temperature annealing (`tau`, DY-Conv temperature).
- `straight_through`: hard thresholds with straight-through gradients, improved semhash.
- `policy`: REINFORCE policies, moving-average baseline, loss, cost-aware reward.
- `confidence`: early-exit criteria (max-prob, entropy, margin, patience).
- `learned_exit`: a learned exit criterion (a tiny head predicting whether an exit is right).
"""
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
from .schedules import CosineDecay, ExponentialDecay, LinearDecay
from .straight_through import ImprovedSemHash, improved_semhash, saturating_sigmoid, ste_threshold

__all__ = [
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
