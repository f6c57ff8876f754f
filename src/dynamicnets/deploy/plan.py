"""A dynamic model as static graphs plus the decisions between them: a `DeploymentPlan`.

`deployment_plan(model, input_shape, policy)` splits a model at its decisions:

- **early exits** (any `MultiExit` model, e.g. `resnet_exits`, `msdnet_cifar`): one graph
  per stage (`segment{k}`) and per exit head (`exit{k}`); the decision after each head is
  the `ExitPolicy` (criterion, thresholds, `max_flops`);
- **layer skipping** (SkipNet with feed-forward gates, ConvNet-AIG): a graph for the stem
  and each stage's first block, one for each gate network (`gate{i}`: block input ->
  logit) and one for each gated block (`block{i}`); a block runs where the logit is above
  the `GatePolicy` threshold (0 without one); an `adapt.gate_residual_blocks` model the
  same, its own forward cut at the gated blocks into segment graphs (`deploy.user_gated`);
- **width** (a slimmable ResNet, DS-Net, `adapt.make_slimmable`'s chain): one graph per width (`width{i}`, the sliced
  network) and, for DS-Net, the gate (`gate`: input -> width scores, argmax decides);
- **resolution** (`dynamic_resolution_resnet`): the predictor (`predictor`: input ->
  resolution logits) and one graph per resolution (`resolution{i}`: the input resized
  inside the graph, the trunk with that resolution's norms, the classifier); the
  `ResolutionPolicy` (bias per resolution, argmax, cap) decides, and the runtime groups the
  batch by resolution;
- **static** (a spatial transformer classifier, `stn_cnn`): its one decision, the affine
  transform, is continuous and sampled inside the graph (`F.affine_grid` +
  `F.grid_sample`), so the whole model is one graph (`model`: input -> logits and
  `theta`). So are the static networks (the anchors a dynamic model is held against:
  ResNets, `small_cnn`, the MNIST-1D models, `vit_cifar`, and any network of the user's
  that returns plain logits) and the dynamic-parameter
  networks (CondConv, DY-ReLU, dynamic convolution: each sample's kernels or activation
  coefficients are computed inside the graph; `decisions["routing"]` comes out with the
  logits), and the token-pruning transformers (DynamicViT, EViT) under a keep-ratio
  `TokenPolicy`: every sample keeps the same number of tokens, so scoring, top-k and
  gather are inside the graph (the kept-token masks come out with the logits); a
  threshold policy, whose counts differ per sample, is refused.

Glance and focus (`glance_focus_cnn`) is a multi-exit model: each step (the greedy patch
policy, the crop, the encoder, the GRU) is one segment graph.

The plan holds the modules, an example input of each (batch 2) and each graph's
per-sample FLOPs; `structure` and `policy` are plain data, the manifest an exported
folder carries (see `export_model`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..gates.block_budget import CAPS as BLOCK_CAPS
from ..gates.thresholds import GatePolicy
from ..inference.policy import ExitPolicy
from ..inference.resolution_policy import ResolutionPolicy
from ..inference.token_policy import TokenPolicy
from ..inference.width_policy import WidthPolicy
from ..models.skipping.blockdrop import BlockDrop
from ..models.skipping.gated_resnet import GatedResNet
from ..models.spatial.deformable_resnet import DeformableCifarResNet
from ..models.spatial.dynamic_resolution import DynamicResolutionNet
from ..models.spatial.dynconv_resnet import DynConvResNet
from ..models.spatial.dynconv_resnet50 import DynConvImageNetResNet
from ..models.spatial.sact import SACTResNet
from ..models.parameters.mobilenetv2 import MobileNetV2Cifar
from ..models.parameters.resnet import DynamicCifarResNet
from ..models.spatial.stn import STNClassifier
from ..models.static.mnist1d import Mnist1dCNN, Mnist1dMLP
from ..models.static.resnet_cifar import CifarResNet
from ..models.static.resnet_imagenet import ImageNetResNet
from ..models.static.small_cnn import SmallCNN
from ..models.temporal.gru_classifier import GRUClassifier
from ..models.temporal.lstm_classifier import LSTMClassifier
from ..models.transformers import TOKEN_PRUNING
from ..models.transformers.vit import VisionTransformer
from ..models.width.dsnet import DSNet
from ..models.width.slimmable_resnet import SlimmableResNet
from ..adapt.gating import GatedModel
from ..adapt.slimmable import SlimmableChain
from ..execution import supported_executions
from ..protocols import MultiExit
from .graphs import (AtResolution, AtWidth, Chain, ExitHead, ExitSegment, GateScore, ResolutionScores, StateLayout,
                     WholeModel, WidthScores, as_tuple, per_sample_flops)
from .user_gated import gated_user_plan, refuse_decisions_inside

KINDS = ("early_exit", "gated", "width", "resolution", "static")
EXAMPLE_BATCH = 2  # exporters specialise a batch of 1; any other size keeps the batch dynamic
# Models with no decision between graphs: one graph. Exact types: a subclass (DynamicViT
# is a VisionTransformer) may add decisions.
ONE_GRAPH = (STNClassifier, CifarResNet, ImageNetResNet, SmallCNN, Mnist1dCNN, Mnist1dMLP, VisionTransformer,
             DynamicCifarResNet, MobileNetV2Cifar, DeformableCifarResNet, LSTMClassifier, GRUClassifier)

SPATIAL_MASKED = (DynConvResNet, DynConvImageNetResNet, SACTResNet)
"""Pixel-level spatial models, deployed as their masked execution: one graph with the gates and
every position computed (the dense cost), the same logits as compact inference; the gathers and
scatters of the compact path are not exported."""


@dataclass
class Graph:
    """One static piece: `module(*example) -> outputs` tensors, each with batch first.

    Attributes:
        module: the piece, in eval mode.
        example: example inputs `(EXAMPLE_BATCH, ...)`, one tensor per graph input.
        outputs: how many tensors it returns.
        flops: per-sample FLOPs of one call.
    """

    module: nn.Module
    example: tuple[Tensor, ...]
    outputs: int
    flops: float


@dataclass
class DeploymentPlan:
    """A dynamic model split into static graphs and the decisions between them.

    Attributes:
        kind: one of `KINDS` (`"early_exit"`, `"gated"`, `"width"`, `"resolution"`, `"static"`).
        model_name: the model's registered name (or class name).
        input_shape: per-sample input shape the graphs were traced on, e.g. `(3, 32, 32)`.
        graphs: the pieces by name, in the order they first run.
        structure: how the runtime wires them (kind-specific plain data).
        policy: the decision rule as plain data (`ExitPolicy` / `GatePolicy` / `WidthPolicy` /
            `ResolutionPolicy` fields, a token model's `{"kind": "token_keep_ratio", ...}`), or None.
    """

    kind: str
    model_name: str
    input_shape: tuple[int, ...]
    graphs: dict[str, Graph] = field(default_factory=dict)
    structure: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] | None = None


def _add(plan: DeploymentPlan, name: str, module: nn.Module, *example: Tensor) -> tuple[Tensor, ...]:
    """Run `module` on `example`, record it as graph `name`, return its outputs."""
    module.eval()  # a new wrapper starts in training mode (the ONNX exporter warns about it)
    with torch.no_grad():
        out = as_tuple(module(*example))
    plan.graphs[name] = Graph(module, tuple(example), len(out), per_sample_flops(module, tuple(example)))
    return out


def exit_policy_data(policy: ExitPolicy, num_exits: int) -> dict[str, Any]:
    """An `ExitPolicy` as plain data (checked against `num_exits`)."""
    criterion = policy.check(num_exits)
    return {"criterion": criterion.name, "thresholds": [float(t) for t in policy.thresholds],
            "max_flops": None if policy.max_flops is None else float(policy.max_flops)}


def _early_exit_plan(model: nn.Module, x: Tensor, policy: ExitPolicy | None, name: str) -> DeploymentPlan:
    plan = DeploymentPlan("early_exit", name, tuple(x.shape[1:]))
    num_exits = model.num_exits
    if policy is None:  # every sample to the last exit until a calibrated policy is given
        policy = ExitPolicy("maxprob", [float("inf")] * (num_exits - 1))
    plan.policy = exit_policy_data(policy, num_exits)
    state_in: StateLayout | None = None
    tensors: tuple[Tensor, ...] = ()
    segments = []
    for k in range(num_exits):
        takes_input = k == 0 or model.needs_input_after(k - 1)
        with torch.no_grad():
            state = model.run_segment(k, None if state_in is None else state_in.rebuild(tensors), x)
        state_out = StateLayout.of(state, f"model {name!r}, stage {k}")
        inputs = tensors + ((x,) if takes_input else ())
        tensors = _add(plan, f"segment{k}", ExitSegment(model, k, state_in, state_out, takes_input), *inputs)
        _add(plan, f"exit{k}", ExitHead(model, k, state_out), *tensors)
        segments.append({"segment": f"segment{k}", "head": f"exit{k}", "state_in": None if state_in is None
                         else state_in.to_dict(), "takes_input": takes_input})
        state_in = state_out
    costs = [float(c) for c in model.exit_costs(tuple(x.shape[1:]))]
    plan.structure = {"stages": segments, "exit_costs": costs,
                      "needs_input_after": [bool(model.needs_input_after(k)) for k in range(num_exits)]}
    return plan


def _gated_plan(model: GatedResNet, x: Tensor, policy: GatePolicy | None, name: str) -> DeploymentPlan:
    if isinstance(model, BlockDrop) or getattr(model, "gate_kind", "ffgate") != "ffgate":
        raise ConfigError(
            f"model {name!r}: its gates decide from a shared state (BlockDrop's policy network, "
            f"SkipNet's recurrent gate) and cannot be split into one graph per block yet; export "
            f"ConvNet-AIG or SkipNet with gate='ffgate'"
        )
    plan = DeploymentPlan("gated", name, tuple(x.shape[1:]))
    thresholds = model.gate_thresholds(policy)
    caps = {} if policy is None else {k: v for k, v in policy.caps.items() if k in BLOCK_CAPS}
    if policy is not None and set(policy.caps) - set(caps):
        raise ConfigError(f"model {name!r}: key {sorted(set(policy.caps) - set(caps))[0]!r}: a gated ResNet takes "
                          f"the caps {', '.join(BLOCK_CAPS)}")
    plan.policy = GatePolicy(tuple(thresholds), **caps).to_dict()
    backbone, steps, index = model.backbone, [], 0
    (h,) = _add(plan, "stem", Chain(backbone.stem, backbone.stages[0][0]), x)
    steps.append({"run": "stem"})
    for s, blocks in enumerate(backbone.stages):
        if s > 0:
            (h,) = _add(plan, f"stage{s}", blocks[0], h)
            steps.append({"run": f"stage{s}"})
        for block in blocks[1:]:
            _add(plan, f"gate{index}", GateScore(model.gates[index]), h)
            (h,) = _add(plan, f"block{index}", block, h)
            steps.append({"gate": f"gate{index}", "block": f"block{index}", "index": index})
            index += 1
    _add(plan, "head", backbone.head, h)
    plan.structure = {"steps": steps, "head": "head", "num_gates": index}
    return plan


def _width_plan(model: nn.Module, x: Tensor, name: str, policy: WidthPolicy | None) -> DeploymentPlan:
    plan = DeploymentPlan("width", name, tuple(x.shape[1:]))
    if policy is not None:  # a bias or cap that does not fit the model fails here, not in deployment
        with torch.no_grad():
            model(x, policy=policy)
    backbone = model.backbone if isinstance(model, DSNet) else model
    widths = [float(w) for w in backbone.widths]
    gate = None
    if isinstance(model, DSNet):
        _add(plan, "gate", WidthScores(model), x)
        gate = "gate"
    for i, w in enumerate(widths):
        _add(plan, f"width{i}", AtWidth(backbone, w), x)
    default = float(backbone.default_width)
    plan.structure = {"widths": widths, "variants": [f"width{i}" for i in range(len(widths))], "gate": gate,
                      "default_width": default}
    if policy is not None:
        plan.policy = policy.to_dict()
    else:
        plan.policy = {"kind": "argmax_gate" if gate else "fixed_width", "width": None if gate else default}
    return plan


def _resolution_plan(model: DynamicResolutionNet, x: Tensor, policy: ResolutionPolicy | None,
                     name: str) -> DeploymentPlan:
    plan = DeploymentPlan("resolution", name, tuple(x.shape[1:]))
    policy = policy or ResolutionPolicy()
    with torch.no_grad():  # a bias or cap that does not fit the model fails here, not in deployment
        policy.choose(model.resolution_logits(x), model.resolution_costs(tuple(x.shape[1:])), f"model {name!r}")
    _add(plan, "predictor", ResolutionScores(model), x)
    variants = [f"resolution{i}" for i in range(len(model.resolutions))]
    for i, variant in enumerate(variants):
        _add(plan, variant, AtResolution(model, i), x)
    plan.structure = {"resolutions": list(model.resolutions), "predictor": "predictor", "variants": variants}
    plan.policy = policy.to_dict()
    return plan


def _static_plan(model: nn.Module, x: Tensor, name: str, policy: TokenPolicy | GatePolicy | None = None,
                 execution: str | None = None) -> DeploymentPlan:
    plan = DeploymentPlan("static", name, tuple(x.shape[1:]))
    whole = WholeModel(model, (), policy, execution)
    with torch.no_grad():
        out = whole.run(x)
    decisions = getattr(out, "decisions", {})  # a plain network of the user's returns its logits
    whole.keys = tuple(sorted(k for k, v in decisions.items() if isinstance(v, Tensor) and v.shape[:1] == x.shape[:1]))
    _add(plan, "model", whole, x)
    plan.structure = {"graph": "model", "decisions": list(whole.keys)}
    if execution is not None:
        plan.structure["execution"] = execution
    return plan


def _token_plan(model: nn.Module, x: Tensor, policy: TokenPolicy | None, name: str) -> DeploymentPlan:
    """A token-pruning transformer under a keep-ratio policy: every sample keeps the same
    count at every stage, so the pruning (scores, top-k, gather) is inside one graph."""
    if policy is not None and not isinstance(policy, TokenPolicy):
        raise ConfigError(f"model {name!r} prunes tokens: policy must be a TokenPolicy, got {type(policy).__name__}")
    policy = policy or model.default_policy()
    if policy.keep_ratio is None:
        raise ConfigError(
            f"model {name!r}: a threshold TokenPolicy keeps a different number of tokens in each sample, "
            f"which one static graph cannot express; deploy it with a keep_ratio policy"
        )
    plan = _static_plan(model, x, name, policy)
    ratio = policy.keep_ratio
    plan.policy = {"kind": "token_keep_ratio", "min_tokens": policy.min_tokens,
                   "keep_ratio": float(ratio) if isinstance(ratio, (int, float)) else [float(r) for r in ratio]}
    return plan


def deployment_plan(model: nn.Module, input_shape: tuple[int, ...] | None = None, policy=None) -> DeploymentPlan:
    """Split `model` into static graphs and the decisions between them.

    Args:
        model: a multi-exit model (glance and focus included), a gated ResNet (ConvNet-AIG,
            SkipNet with feed-forward gates), a slimmable ResNet, DS-Net, a dynamic-resolution
            network, a spatial transformer classifier (`stn_cnn`), one of `ONE_GRAPH`'s
            static and dynamic-parameter networks, a token-pruning transformer
            (`TOKEN_PRUNING`), a slimmable chain (`adapt.make_slimmable`), or any other
            network returning logits `(B, classes)` (one graph: a user's own CNN, one with
            `adapt.swap_convs` dynamic convolutions), an `adapt.gate_residual_blocks` model
            (its forward cut at the gated blocks). Put in eval mode here.
        input_shape: per-sample input shape; default the model's `default_input_shape`.
        policy: `ExitPolicy` for early exits (default: every sample to the last exit; an
            `adapt.add_exits` model is one),
            `GatePolicy` for gated models (default: logit > 0; a `gate_residual_blocks`
            model's eval rule), `ResolutionPolicy` for
            dynamic resolution (default: the predictor's argmax), a keep-ratio
            `TokenPolicy` for token pruning (default: the model's `default_policy()`),
            unused for width and static models.

    Returns:
        the `DeploymentPlan`.

    Raises:
        ConfigError: a model of another kind, a policy of the wrong type or size.
    """
    name = getattr(model, "name", None) or type(model).__name__
    shape = tuple(input_shape or getattr(model, "default_input_shape", ()) or ())
    if not shape:
        raise ConfigError(f"model {name!r} has no default_input_shape: pass input_shape")
    model.eval()
    param = next(model.parameters())
    x = torch.randn((EXAMPLE_BATCH, *shape), generator=torch.Generator().manual_seed(0)).to(param)
    if isinstance(model, MultiExit):
        if policy is not None and not isinstance(policy, ExitPolicy):
            raise ConfigError(f"model {name!r} has early exits: policy must be an ExitPolicy, got "
                              f"{type(policy).__name__}")
        return _early_exit_plan(model, x, policy, name)
    if isinstance(model, GatedResNet):
        if policy is not None and not isinstance(policy, GatePolicy):
            raise ConfigError(f"model {name!r} has gated blocks: policy must be a GatePolicy, got "
                              f"{type(policy).__name__}")
        return _gated_plan(model, x, policy, name)
    if isinstance(model, (DSNet, SlimmableResNet, SlimmableChain)):
        if policy is not None and not (isinstance(model, DSNet) and isinstance(policy, WidthPolicy)):
            what = "a DS-Net's policy must be a WidthPolicy" if isinstance(model, DSNet) else (
                "a slimmable network has no gate; its width is chosen at run time (width=)")
            raise ConfigError(f"model {name!r}: {what}, got {type(policy).__name__}")
        return _width_plan(model, x, name, policy)
    if type(model) in ONE_GRAPH:
        if policy is not None:
            what = "its transform is regressed" if isinstance(model, STNClassifier) else "it is one graph"
            raise ConfigError(f"model {name!r} takes no decision policy ({what}), got {type(policy).__name__}")
        return _static_plan(model, x, name)
    if isinstance(model, TOKEN_PRUNING):
        return _token_plan(model, x, policy, name)
    if isinstance(model, SPATIAL_MASKED):
        if policy is not None and not isinstance(policy, GatePolicy):
            raise ConfigError(f"model {name!r} gates positions: policy must be a GatePolicy, got "
                              f"{type(policy).__name__}")
        plan = _static_plan(model, x, name, policy, execution="masked")
        if policy is not None:
            plan.policy = policy.to_dict()
        return plan
    if isinstance(model, DynamicResolutionNet):
        if policy is not None and not isinstance(policy, ResolutionPolicy):
            raise ConfigError(f"model {name!r} picks a resolution per sample: policy must be a ResolutionPolicy, "
                              f"got {type(policy).__name__}")
        return _resolution_plan(model, x, policy, name)
    if isinstance(model, GatedModel):
        if policy is not None and not isinstance(policy, GatePolicy):
            raise ConfigError(f"model {name!r} has gated blocks: policy must be a GatePolicy, got "
                              f"{type(policy).__name__}")
        return gated_user_plan(DeploymentPlan("gated", name, shape), model, x, policy, _add)
    if not supported_executions(model):  # the library's own dynamic models: the error below
        refuse_decisions_inside(model, name)
    if _plain_logits(model, x):
        if policy is not None:
            raise ConfigError(f"model {name!r} returns plain logits: it takes no decision policy, got "
                              f"{type(policy).__name__}")
        return _static_plan(model, x, name)
    raise ConfigError(
        f"model {name!r} ({type(model).__name__}) cannot be deployed yet: supported are multi-exit "
        f"models (the MultiExit protocol), ConvNet-AIG / SkipNet (feed-forward gates), slimmable "
        f"ResNets, DS-Net, dynamic resolution, spatial transformer and deformable-convolution networks, "
        f"DynConv and SACT (their masked execution), the "
        f"static networks (CNNs, ResNets, ViT, the LSTM/GRU classifiers), the "
        f"dynamic-parameter networks (CondConv, DY-ReLU, dynamic convolution), DynamicViT / EViT "
        f"(keep-ratio policies), slimmable chains (adapt.make_slimmable), gated networks of yours "
        f"(adapt.gate_residual_blocks) and any network of yours that returns logits (B, classes)"
    )


def _plain_logits(model: nn.Module, x: Tensor) -> bool:
    """True for a network that returns plain logits `(B, classes)`: no decision comes out, so
    it is one graph (a data-dependent path inside it refuses to be traced at export)."""
    with torch.no_grad():
        out = model(x)
    return isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == x.shape[0]
