"""Attack a trained checkpoint: accuracy, early-exit efficacy and per-sample FLOPs on
clean and on attacked inputs, with and without a compute cap.

The inputs are the checkpoint's data prepared as in training; attacks perturb the pixels
behind them (`dynamicnets.attacks.InputSpace`), so `eps` is in pixel units (8/255). A
multi-exit model needs an exit rule: given thresholds score the first `samples` samples
of the split; a budget is calibrated on clean samples of one seeded half of the split and
the first `samples` of the other half are scored (as `dynamicnets eval` does). The same
policy then meets clean and attacked inputs; with `max_flops`, every row is repeated
under the capped policy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ..attacks import InputSpace, check_attack, check_kind, craft, score_early_exit, score_forward
from ..data import make_eval_loader
from ..errors import ConfigError
from ..gates.thresholds import GatePolicy
from ..models.skipping.gated_resnet import GatedResNet
from ..inference import ExitPolicy, collect_exit_logits
from ..protocols import CalibratableGates, MultiExit
from ..training.trainer import resolve_device
from .checkpoint_data import check_split, load_checkpoint_data
from .checkpoints import check_shipped_weights_source, load_model_source
from .early_exit import EarlyExitRequest, choose_policy, reference_cost
from .evaluate import _calibration_split


@dataclass
class AttackRequest:
    """What `dynamicnets attack` asks for.

    Attributes:
        checkpoint: a `best.pt` / `last.pt` written by the trainer, or its run folder
            (its `best.pt`, else `last.pt`); or give `model` and `pretrained`.
        kind: `pgd` or `slowdown`.
        eps: L-infinity radius in pixel units (a number or `"8/255"`).
        steps: attack steps.
        step_size: pixel change per step; `None`: `2.5 * eps / steps`.
        data: data spec; `None`: the one the checkpoint was trained on (required for
            shipped weights).
        model, pretrained: shipped weights instead: the registered model and its tag
            (`True`: its only or default tag).
        split: `val`, `test` or `all`.
        samples: how many samples are attacked and scored (the first ones of the scored
            set); `None`: all.
        early_exit: the exit rule of a multi-exit model (its `max_flops` adds capped rows).
        gate_max_flops: a layer-skipping model's per-sample cap (`GatePolicy.max_flops`,
            gates at their trained thresholds): adds capped rows.
        batch_size: samples per attack and per executor call.
        device: `cpu`, `cuda` or `auto`.
        seed: of the attacks' random starts.
    """

    checkpoint: str | None
    kind: str
    eps: Any
    steps: int
    step_size: Any = None
    model: str | None = None
    pretrained: str | bool | None = None
    data: str | None = None
    split: str = "val"
    samples: int | None = 500
    early_exit: EarlyExitRequest | None = None
    gate_max_flops: float | None = None
    batch_size: int = 128
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        check_kind(self.kind, "--kind")
        check_shipped_weights_source(self.checkpoint, self.model, self.pretrained, self.data, "attack")
        self.eps, self.steps, _ = check_attack(self.eps, self.steps, self.step_size, prefix="--")
        check_split(self.split)
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"--samples: expected a count >= 1, got {self.samples}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size: expected a count >= 1, got {self.batch_size}")


def defense_of(ckpt: dict[str, Any]) -> str:
    """How the checkpoint's model was trained against attacks, in a few words:
    `none`, or e.g. `pgd eps=0.0314 steps=5 fraction=1` (its `adversarial` config key)."""
    spec = (ckpt.get("config") or {}).get("adversarial")
    if not spec:
        return "none"
    return " ".join([str(spec.get("kind"))] + [f"{k}={spec[k]}" for k in ("eps", "steps", "fraction") if k in spec])


def _tensors(dataset: Dataset, count: int | None, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` samples of `dataset` (all when `None`) as `(x, y)` on `device`."""
    xs, ys, taken = [], [], 0
    for x, y in make_eval_loader(dataset, batch_size):
        xs.append(x)
        ys.append(y)
        taken += y.shape[0]
        if count is not None and taken >= count:
            break
    x, y = torch.cat(xs)[:count], torch.cat(ys)[:count]
    return x.to(device), y.to(device)


def attack_checkpoint(request: AttackRequest) -> dict[str, Any]:
    """Craft `request.kind` attacks on a checkpoint's data and score clean vs attacked.

    Returns:
        `{"meta": ..., "records": [...]}`. Each record: `defense`, `attack` (`none` or
        the kind), `eps`, `steps`, `cap` (the policy's `max_flops` or `None`),
        `samples`, `accuracy`, `efficacy` (multi-exit models; `None` otherwise),
        `mean_flops`, `max_flops` (the most one sample cost) and, for multi-exit models,
        `exit_histogram`. `meta` says what was attacked and how: model, data, split,
        protocol, policy and thresholds, exit costs, the pixel range and the largest
        pixel change the attack made.

    Raises:
        ConfigError: a slowdown attack on a model without exits or gates, no exit rule
            for a multi-exit model (or one for another model), a bad argument.
        CheckpointError, DataError: as for `dynamicnets eval`.
    """
    device = resolve_device(request.device, what="--device")
    model, ckpt, source, origin = load_model_source(request.checkpoint, request.model, request.pretrained,
                                                    device=device)
    multi_exit = isinstance(model, MultiExit)
    if request.kind == "slowdown" and not (multi_exit or isinstance(model, CalibratableGates)):
        raise ConfigError(f"--kind slowdown: {source} holds {ckpt['model_name']!r}, which has neither "
                          "early exits nor skipping gates to defeat; use --kind pgd")
    if multi_exit and request.early_exit is None and request.gate_max_flops is not None:
        raise ConfigError("--max-flops: caps the exit rule of a multi-exit model; give one with --budget, "
                          "--budget-ms or --thresholds")
    if multi_exit and request.early_exit is None:
        raise ConfigError("a multi-exit model needs an exit rule: --budget, --budget-ms or --thresholds")
    if not multi_exit and request.early_exit is not None:
        raise ConfigError(f"--budget/--thresholds/--max-flops: {ckpt['model_name']!r} has no early exits; drop them")
    prepared = load_checkpoint_data(ckpt, source, request.data, request.split)
    space = InputSpace.from_preprocessing(prepared.trained, prepared.spec)
    meta: dict[str, Any] = {
        **origin, "model": ckpt["model_name"], "data": prepared.spec,
        "split": request.split, "preprocessing": prepared.trained.describe(),
        "pixel_range": [space.low, space.high], "kind": request.kind, "eps": request.eps,
        "steps": request.steps, "step_size": check_attack(request.eps, request.steps, request.step_size)[2],
        "seed": request.seed, "defense": defense_of(ckpt),
    }
    if multi_exit:
        scored, policies, extra = _exit_rule(model, prepared, request, device)
        meta.update(extra)
    else:
        scored, policies = prepared.dataset, [None]
        if request.gate_max_flops is not None:
            if not isinstance(model, GatedResNet):
                raise ConfigError(f"--max-flops: {ckpt['model_name']!r} has neither early exits nor a gated "
                                  "ResNet's gates to cap")
            policies.append(GatePolicy.constant(0.0, model.num_gated_blocks, max_flops=request.gate_max_flops))
        meta["protocol"] = f"the first {request.samples or 'all'} samples of the split, the model's own decisions"
    x, y = _tensors(scored, request.samples, request.batch_size, device)
    generator = torch.Generator(device=x.device).manual_seed(request.seed)
    attacked = craft(request.kind, model, x, y, eps=request.eps, steps=request.steps, step_size=request.step_size,
                     space=space, batch_size=request.batch_size, generator=generator)
    meta["samples"] = int(y.shape[0])
    meta["perturbation_linf"] = float((space.to_pixels(attacked) - space.to_pixels(x)).abs().max())
    records = []
    for name, inputs in (("none", x), (request.kind, attacked)):
        for policy in policies:
            if multi_exit:
                scores = score_early_exit(model, inputs, y, policy, batch_size=request.batch_size)
            else:
                scores = score_forward(model, inputs, y, policy=policy, batch_size=request.batch_size)
            records.append({"defense": meta["defense"], "attack": name,
                            "eps": request.eps if name != "none" else 0.0,
                            "steps": request.steps if name != "none" else 0, **scores})
    return {"meta": meta, "records": records}


def _exit_rule(model, prepared, request: AttackRequest, device) -> tuple[Dataset, list[ExitPolicy], dict]:
    """The data to score, the exit policies (uncapped, then capped when asked) and what
    to report about them."""
    early = request.early_exit
    costs = list(model.exit_costs(tuple(prepared.bundle.input_shape)))
    if early.thresholds is not None:
        calibration, scored = None, prepared.dataset
        protocol = f"thresholds given; the first {request.samples or 'all'} samples of the split scored"
        calib_logits = calib_targets = None
    else:
        calibration, scored, protocol = _calibration_split(prepared.bundle, prepared.dataset, request.split,
                                                           prepared.seed, "thresholds")
        protocol += f" (its first {request.samples or 'all'} samples), clean inputs only"
        calib_logits, calib_targets = collect_exit_logits(model, make_eval_loader(calibration, request.batch_size))
    sample = _tensors(scored, min(request.batch_size, request.samples or request.batch_size),
                      request.batch_size, device)[0]
    policy, info = choose_policy(model, early, calib_logits, calib_targets, costs, sample)
    uncapped = ExitPolicy(policy.criterion, list(policy.thresholds), None)
    policies = [uncapped] if early.max_flops is None else [uncapped, policy]
    return scored, policies, {"protocol": protocol, "policy": early.policy, "thresholds": list(policy.thresholds),
                              "exit_costs": costs, "full_flops": reference_cost(model, costs, sample.shape[1:]),
                              **info}
