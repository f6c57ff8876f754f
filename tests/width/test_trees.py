"""Routing in trees: soft decision tree and hard-routed neural tree.

Compact (one root-to-leaf path per sample) equals masked (every node) for the same hard
decisions; each sample runs exactly one path (FLOPs and node invocations); reported
FLOPs equal `FlopCounterMode`; the balance penalty; a real learning run on digits.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, create_model
from dynamicnets.data import load_data
from dynamicnets.models.width import NeuralTree, SoftDecisionTree
from dynamicnets.models.width.binary_tree import follow, leaf_probs, reach_probs
from dynamicnets.flops import counted_flops

MODELS = ["soft_decision_tree", "neural_tree_cnn"]


@pytest.fixture(autouse=True)
def single_torch_thread():
    """These models are tiny: on a shared 2-core machine two threads stall, one does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, **kw):
    """The model in eval mode, its routers set so that random inputs spread over the leaves."""
    torch.manual_seed(0)
    model = create_model(name, **{"num_classes": 5, **kw}).eval()
    with torch.no_grad():
        if isinstance(model, SoftDecisionTree):
            model.inner.weight.normal_(0, 1.0)
        else:  # centre every router on a reference batch: about half goes each way
            for router in model.routers:
                router.weight.normal_(0, 3.0)
            logits = model.run_masked(inputs(model, 32, seed=99), None)[1]
            for node, router in enumerate(model.routers):
                router.bias -= logits[:, node].median()
    return model


def inputs(model, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *model.default_input_shape, generator=generator)


def random_decisions(model, batch: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (batch, model.num_inner), generator=generator).float()


def path_nodes(leaf: torch.Tensor, depth: int) -> torch.Tensor:
    """`(B,)` leaves -> `(B, depth + 1)` heap indices of every node on their paths."""
    nodes = leaf + 2**depth - 1
    levels = [nodes]
    for _ in range(depth):
        nodes = (nodes - 1) // 2
        levels.append(nodes)
    return torch.stack(levels[::-1], dim=1)


# ----------------------------------------------------------------- routing maths
def test_heap_order_of_a_depth_two_tree():
    r = torch.tensor([[0.25, 0.5, 0.125]])  # right at nodes 0, 1, 2
    torch.testing.assert_close(reach_probs(r, 2), torch.tensor([[1.0, 0.75, 0.25]]))
    leaves = leaf_probs(r, 2)  # leaves left to right: LL, LR, RL, RR
    torch.testing.assert_close(leaves, torch.tensor([[0.375, 0.375, 0.21875, 0.03125]]))
    decisions = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    leaf, path = follow(decisions, 2)
    assert leaf.tolist() == [3, 1] and path.tolist() == [[0, 2], [0, 1]]


def test_soft_output_is_the_log_of_the_path_probability_mixture():
    model = build("soft_decision_tree", depth=3).train()
    x = inputs(model, 6)
    out = model(x)
    r = torch.sigmoid(model.router_logits(x.flatten(1))).double()
    q = torch.softmax(model.leaf_logits.double(), dim=-1)
    expected = torch.zeros(6, 5, dtype=torch.float64)
    for leaf in range(8):  # brute force: walk every leaf's path
        prob, node = torch.ones(6, dtype=torch.float64), 0
        for level in range(3):
            right = (leaf >> (2 - level)) & 1
            prob = prob * (r[:, node] if right else 1 - r[:, node])
            node = 2 * node + 1 + right
        expected += prob[:, None] * q[leaf]
    torch.testing.assert_close(out.logits.double().exp(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.logits.exp().sum(-1), torch.ones(6))


# ------------------------------------------------------- compact == masked
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("kind", ["random", "all_left", "all_right_then_left", "own"])
def test_compact_equals_masked_for_the_same_hard_decisions(name, batch, kind):
    model = build(name)
    x = inputs(model, batch)
    with torch.no_grad():
        if kind == "own":  # the routers' own choice, read off the compact run
            decisions = model(x, "compact").decisions["routing"].clamp_min(0)
        elif kind == "random":
            decisions = random_decisions(model, batch)
        else:  # whole subtrees get no sample
            decisions = torch.zeros(batch, model.num_inner)
            decisions[:, 0] = float(kind == "all_right_then_left")
        compact = model(x, "compact", decisions)
        masked = model(x, "masked", decisions)
    torch.testing.assert_close(compact.logits, masked.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(compact.decisions["leaf"], masked.decisions["leaf"])
    assert torch.equal(compact.decisions["path"], masked.decisions["path"])
    expected_leaf, _ = follow(decisions, model.depth)
    assert torch.equal(compact.decisions["leaf"], expected_leaf)
    if kind == "all_left":
        assert (compact.decisions["leaf"] == 0).all()


@pytest.mark.parametrize("name", MODELS)
def test_compact_follows_the_more_probable_child(name):
    model = build(name)
    x = inputs(model, 16, seed=3)
    with torch.no_grad():
        compact, masked = model(x, "compact"), model(x, "masked")
    assert torch.equal(compact.decisions["leaf"], masked.decisions["leaf"])
    assert compact.decisions["leaf"].unique().numel() >= 3  # the batch is really split
    if name == "soft_decision_tree":  # greedy path: the more probable child everywhere
        r = masked.decisions["routing"].gather(1, compact.decisions["path"])
        went_right = compact.decisions["routing"].gather(1, compact.decisions["path"])
        assert torch.equal(went_right, (r > 0.5).float())


# ------------------------------------------------------- one path per sample
def test_neural_tree_runs_each_sample_through_exactly_one_path():
    model = build("neural_tree_cnn")
    x = inputs(model, 9)
    seen: dict[tuple[str, int], int] = {}

    def counter(kind, index):
        def hook(_module, args, _output):
            seen[(kind, index)] = seen.get((kind, index), 0) + args[0].shape[0]
        return hook

    modules = [("node", model.transformers), ("router", model.routers), ("solver", model.solvers)]
    handles = [
        m.register_forward_hook(counter(kind, i)) for kind, ms in modules for i, m in enumerate(ms)
    ]
    decisions = random_decisions(model, 9)
    decisions[:, 2] = 0  # the right child of the root sends everyone left: node 6's subtree idle
    with torch.no_grad():
        out = model(x, "compact", decisions)
    for h in handles:
        h.remove()
    on_path = path_nodes(out.decisions["leaf"], model.depth)
    for node in range(len(model.transformers)):
        expected = int((on_path == node).sum())
        assert seen.get(("node", node), 0) == expected, node  # absent = never called
    assert sum(v for (kind, _), v in seen.items() if kind == "node") == 9 * (model.depth + 1)
    assert sum(v for (kind, _), v in seen.items() if kind == "router") == 9 * model.depth
    assert sum(v for (kind, _), v in seen.items() if kind == "solver") == 9
    assert ("node", 6) not in seen and ("node", 14) not in seen
    visited = (out.decisions["routing"] >= 0).sum(dim=1)
    assert (visited == model.depth).all()


@pytest.mark.parametrize("name", MODELS)
def test_flops_count_one_path_compact_and_every_node_masked(name):
    model = build(name)
    x = inputs(model, 5)
    decisions = random_decisions(model, 5)
    for execution in ("compact", "masked"):
        with torch.no_grad():
            out = model(x, execution, decisions)
        assert int(out.flops.sum()) == counted_flops(model, x, execution, decisions), execution
    with torch.no_grad():
        compact, masked = model(x, "compact"), model(x, "masked")
    assert (compact.flops < masked.flops).all()
    if name == "soft_decision_tree":  # d dot products of F features vs 2^d - 1
        assert (compact.flops == 2 * model.in_features * model.depth).all()
        assert (masked.flops == 2 * model.in_features * model.num_inner).all()
    else:
        shape = model.default_input_shape
        assert (compact.flops == model.path_flops(shape)).all()
        assert (masked.flops == model.all_nodes_flops(shape)).all()


def test_neural_tree_flops_on_another_input_size():
    model = build("neural_tree_cnn", depth=2, in_chans=1)
    x = torch.randn(4, 1, 20, 13)
    for execution in ("compact", "masked"):
        with torch.no_grad():
            out = model(x, execution)
        assert int(out.flops.sum()) == counted_flops(model, x, execution)


def test_default_sizes_params_and_flops():
    sdt = create_model("soft_decision_tree")
    assert sdt.default_input_shape == (1, 8, 8)
    assert sum(p.numel() for p in sdt.parameters()) == 15 * 65 + 16 * 10 + 1 == 1136
    assert (sdt.path_flops(), sdt.all_nodes_flops()) == (512, 1920)
    fixed = create_model("soft_decision_tree", learn_beta=False)
    assert "beta" not in dict(fixed.named_parameters()) and "beta" in fixed.state_dict()
    tree = create_model("neural_tree_cnn")
    assert isinstance(tree, NeuralTree) and tree.default_input_shape == (3, 32, 32)
    assert sum(p.numel() for p in tree.parameters()) == 9303
    assert tree.level_costs((3, 32, 32)) == [442_368, 294_912, 73_728, 18_432]
    assert tree.path_flops((3, 32, 32)) == 829_648
    assert tree.all_nodes_flops((3, 32, 32)) == 1_475_952


# ------------------------------------------------------------- training signals
def test_balance_penalty_is_log_two_per_unit_weight_at_balance_and_has_a_gradient():
    model = build("soft_decision_tree", penalty_strength=0.3, penalty_decay=0.5).train()
    x = inputs(model, 8)
    with torch.no_grad():
        model.inner.weight.zero_()
        model.inner.bias.zero_()
    balanced = model(x).aux_losses["routing_balance"]
    # every node routes half right; level k has 2^k nodes of weight 0.3 * 0.5^k
    assert balanced.item() == pytest.approx(0.3 * 4 * math.log(2), rel=1e-6)
    with torch.no_grad():
        model.inner.bias.fill_(2.0)  # everyone goes right: unbalanced
    out = model(x)
    assert out.aux_losses["routing_balance"] > balanced
    out.aux_loss().backward()
    assert model.inner.bias.grad.abs().sum() > 0 and model.beta.grad.abs() > 0
    assert (model.inner.bias.grad > 0).all()  # descending lowers the biases toward 0


def test_neural_tree_balance_penalty_reaches_routers_and_transformers():
    model = build("neural_tree_cnn", penalty_strength=0.1).train()
    out = model(inputs(model, 4))
    out.aux_losses["routing_balance"].backward()
    assert all(r.weight.grad.abs().sum() > 0 for r in model.routers)
    assert model.transformers[0].conv.weight.grad.abs().sum() > 0
    assert "routing_balance" not in model(inputs(model, 4), "compact").aux_losses


def test_hard_training_routes_one_leaf_per_sample_with_a_straight_through_gradient():
    model = build("neural_tree_cnn", hard_training=True).train()
    x = inputs(model, 6)
    torch.manual_seed(1)
    out = model(x)
    routing = out.decisions["routing"]
    assert ((routing == 0) | (routing == 1)).all()
    F.cross_entropy(out.logits, torch.arange(6) % 5).backward()
    assert model.routers[0].weight.grad.abs().sum() > 0  # the root takes part in every path
    model.eval()  # deterministic thresholds: masked and compact now agree on their own
    with torch.no_grad():
        masked, compact = model(x, "masked"), model(x, "compact")
    torch.testing.assert_close(masked.logits, compact.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(masked.decisions["leaf"], compact.decisions["leaf"])


def test_soft_decision_tree_learns_digits():
    bundle = load_data("digits", val_size=0.2, seed=0, augment=False)
    x_train, y_train = bundle.train.fetch(torch.arange(len(bundle.train)))
    x_val, y_val = bundle.val.fetch(torch.arange(len(bundle.val)))
    torch.manual_seed(0)
    model = create_model("soft_decision_tree", depth=4, penalty_strength=0.01).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = torch.randint(0, len(x_train), (128,), generator=generator)
        out = model(x_train[batch])
        loss = F.cross_entropy(out.logits, y_train[batch]) + out.aux_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        compact = model(x_val)  # one path, 4 dot products per sample
        masked = model(x_val, "masked")
    compact_acc = (compact.logits.argmax(-1) == y_val).float().mean().item()
    masked_acc = (masked.logits.argmax(-1) == y_val).float().mean().item()
    assert compact_acc > 0.7, compact_acc  # chance is 0.1
    assert masked_acc > 0.75, masked_acc
    assert compact.decisions["leaf"].unique().numel() >= 8  # the tree really splits the data


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "name, kwargs, key",
    [
        ("soft_decision_tree", {"depth": 0}, "depth"),
        ("soft_decision_tree", {"beta": 0.0}, "beta"),
        ("soft_decision_tree", {"penalty_decay": 1.5}, "penalty_decay"),
        ("soft_decision_tree", {"input_size": (8, 0)}, "input_size"),
        ("neural_tree_cnn", {"penalty_strength": -1.0}, "penalty_strength"),
        ("neural_tree_cnn", {"channels": 0}, "channels"),
        ("neural_tree_cnn", {"depth": 1.5}, "depth"),
        ("neural_tree_cnn", {"tau": 0.0}, "tau"),
    ],
)
def test_bad_arguments_raise_config_errors_naming_the_argument(name, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        create_model(name, **kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_bad_forward_inputs_raise_config_errors(name):
    model = build(name)
    x = inputs(model, 2)
    with pytest.raises(ConfigError, match="decisions"):
        model(x, "compact", torch.zeros(2, model.num_inner + 1))
    with pytest.raises(ConfigError, match="decisions"):
        model(x, "masked", torch.full((2, model.num_inner), 0.5))
    with pytest.raises(ConfigError, match="execution"):
        model(x, "sparse")
    with pytest.raises(ConfigError, match="in_chans|input features"):
        model(torch.randn(2, 2, 5, 5))
