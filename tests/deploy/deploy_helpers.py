"""Decision rules for the deploy tests whose decisions no float rounding can flip.

A threshold placed on a sample's own score (a median) lets a runtime whose logits differ
in the last bit decide that sample the other way. These put every cut in the middle of
the widest gap between the scores the samples actually meet at that decision, so all
engines (eager, compiled, `torch.export`, onnxruntime) must take the same decisions.
"""
from __future__ import annotations

import torch

from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.inference import ExitPolicy


def images(count: int, seed: int, size: int = 32) -> torch.Tensor:
    """`(count, 3, size, size)` standard-normal images."""
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def gap_cut(scores: torch.Tensor, lo: float, hi: float) -> float:
    """The midpoint of the widest gap between sorted `scores` in their `[lo, hi]` quantile
    range: a threshold that splits the batch and that no sample lies near."""
    s = scores.flatten().double().sort().values
    first, last = int(lo * (len(s) - 1)), int(hi * (len(s) - 1))
    j = first + int((s[first + 1:last + 1] - s[first:last]).argmax())
    return float((s[j] + s[j + 1]) / 2)


def gate_policy_with_margin(plan, x: torch.Tensor) -> GatePolicy:
    """Per gate of a gated plan, a cut in the widest middle gap of the logits that gate
    sees under the cuts before it (about half the samples run each block)."""
    cuts, h = [], x
    with torch.no_grad():
        for step in plan.structure["steps"]:
            if "run" in step:
                h = plan.graphs[step["run"]].module(h)
                continue
            logit = plan.graphs[step["gate"]].module(h)
            cuts.append(gap_cut(logit, 0.25, 0.75))
            on = (logit > cuts[-1]).view(-1, *[1] * (h.dim() - 1))
            h = torch.where(on, plan.graphs[step["block"]].module(h), h)
    return GatePolicy(tuple(cuts))


def exit_policy_with_margin(model, x: torch.Tensor) -> ExitPolicy:
    """Per exit of a multi-exit model, a max-probability cut in the widest gap of the upper
    middle of its scores (about a third of the samples above it), so that some samples
    reach every exit."""
    with torch.no_grad():
        logits = model(x).exit_logits
    return ExitPolicy("maxprob", [gap_cut(l.softmax(-1).amax(-1), 0.55, 0.8) for l in logits[:-1]])
