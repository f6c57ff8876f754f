"""`GatePolicy`: threshold gates' inference rule as a calibratable, saveable object."""
import io

import pytest
import torch

import dynamicnets as dn
from dynamicnets import ConfigError
from dynamicnets.gates import GatePolicy
from dynamicnets.inference import calibrate_gate_policy, calibrate_gate_rate

MODELS = [("skipnet_resnet", {"depth": 20}), ("skipnet_resnet", {"depth": 20, "gate": "rnn"}),
          ("convnet_aig_resnet", {"depth": 20}), ("blockdrop_resnet", {"depth": 20})]


def _model(name, kwargs):
    torch.manual_seed(0)
    return dn.create_model(name, num_classes=5, **kwargs).eval()


@pytest.mark.parametrize("name,kwargs", MODELS, ids=[f"{n}-{k.get('gate', 'ff')}" for n, k in MODELS])
def test_calibrated_policy_equals_folded_calibration_and_leaves_model_alone(name, kwargs):
    model = _model(name, kwargs)
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    policy = calibrate_gate_policy(model, x, 0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing folded in
    assert len(policy.thresholds) == model.num_gated_blocks
    with torch.no_grad():
        compact = model(x, policy=policy)
        masked = model(x, policy=policy, execution="masked")
        single = model(x[:1], policy=policy)
        folded = _model(name, kwargs)
        calibrate_gate_rate(folded, x, 0.5)
        reference = folded(x)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(compact.decisions["gates"], masked.decisions["gates"])
    assert torch.equal(compact.decisions["gates"], reference.decisions["gates"])
    assert torch.equal(single.decisions["gates"], compact.decisions["gates"][:1])
    if kwargs.get("gate") != "rnn":  # per-block gates are fitted exactly
        rate = compact.decisions["gates"].mean(dim=0)
        assert torch.allclose(rate, torch.full_like(rate, 0.5), atol=1 / 64 + 1e-6)


def test_policy_thresholds_move_the_decisions():
    model = _model("convnet_aig_resnet", {"depth": 20})
    x = torch.randn(8, 3, 32, 32)
    blocks = model.num_gated_blocks
    with torch.no_grad():
        none = model(x, policy=GatePolicy.constant(float("inf"), blocks))
        every = model(x, policy=GatePolicy.constant(float("-inf"), blocks))
    assert float(none.decisions["gates"].sum()) == 0 and float(every.decisions["gates"].min()) == 1
    assert (none.flops < every.flops).all()


def test_policy_round_trips_through_a_weights_only_checkpoint():
    policy = GatePolicy((0.5, -1.0, float("inf")), {"calibrated_rate": 0.5})
    buffer = io.BytesIO()
    torch.save({"gate_policy": policy.to_dict()}, buffer)
    buffer.seek(0)
    loaded = GatePolicy.from_dict(torch.load(buffer, weights_only=True)["gate_policy"])
    assert loaded == policy and loaded.meta == {"calibrated_rate": 0.5}


def test_bad_policies_are_refused():
    model = _model("skipnet_resnet", {"depth": 20})
    with pytest.raises(ConfigError, match="2 thresholds, the model has"):
        model(torch.randn(1, 3, 32, 32), policy=GatePolicy((0.0, 0.0)))
    with pytest.raises(ConfigError, match="non-empty list of numbers"):
        GatePolicy(())
    with pytest.raises(ConfigError, match="ckpt.pt: expected a saved gate policy"):
        GatePolicy.from_dict({"thresholds": 3}, source="ckpt.pt")


def test_skip_rnn_threshold_policy_trades_updates_on_every_path():
    torch.manual_seed(0)
    model = dn.create_model("skip_lstm_classifier", num_classes=5).eval()
    x = torch.randn(6, *model.default_input_shape)
    with torch.no_grad():
        default = model(x)
        explicit = model(x, policy=GatePolicy((0.5,)))
        strict = model(x, policy=GatePolicy((0.9,)))
        masked = model(x, policy=GatePolicy((0.9,)), execution="masked")
        single = model(x[:1], policy=GatePolicy((0.9,)))
    assert torch.equal(default.decisions["gates"], explicit.decisions["gates"])
    assert torch.equal(strict.decisions["gates"], masked.decisions["gates"])
    torch.testing.assert_close(strict.logits, masked.logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(single.decisions["gates"], strict.decisions["gates"][:1])
    assert float(strict.decisions["gates"].sum()) < float(default.decisions["gates"].sum())
    with pytest.raises(ConfigError, match="1 gates"):
        model(x, policy=GatePolicy((0.5, 0.5)))


@pytest.mark.parametrize("name", ["soft_decision_tree", "neural_tree_cnn"])
def test_tree_routing_thresholds_are_a_policy(name):
    torch.manual_seed(0)
    model = dn.create_model(name, num_classes=5).eval()
    x = torch.randn(16, *model.default_input_shape)
    inner = 2 ** model.depth - 1
    with torch.no_grad():
        default = model(x)
        zero = model(x, policy=GatePolicy.constant(0.0, inner))
        left = model(x, policy=GatePolicy.constant(float("inf"), inner))
        shifted = GatePolicy(tuple(float(v) for v in torch.linspace(-0.5, 0.5, inner)))
        compact, masked = model(x, policy=shifted), model(x, policy=shifted, execution="masked")
    assert torch.equal(default.decisions["leaf"], zero.decisions["leaf"])
    assert (left.decisions["leaf"] == 0).all()  # every node sends every sample left
    assert torch.equal(compact.decisions["leaf"], masked.decisions["leaf"])
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-4, atol=1e-5)


def test_channel_gate_thresholds_are_a_policy():
    torch.manual_seed(0)
    model = dn.create_model("gumbel_channel_resnet_cifar", num_classes=5).eval()
    x = torch.randn(4, 3, 32, 32)
    blocks = len(model.gates)
    with torch.no_grad():
        default = model(x)
        zero = model(x, policy=GatePolicy.constant(0.0, blocks))
        strict = model(x, policy=GatePolicy.constant(0.5, blocks))
        masked = model(x, policy=GatePolicy.constant(0.5, blocks), execution="masked")
    torch.testing.assert_close(default.logits, zero.logits)
    assert (strict.flops <= default.flops).all() and (strict.flops < default.flops).any()
    torch.testing.assert_close(strict.logits, masked.logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="FBS keeps each sample's top-k"):
        dn.create_model("fbs_resnet_cifar", num_classes=5).eval()(x, policy=GatePolicy.constant(0.0, blocks))
