"""MoEFeedForward: a drop-in MLP block; its losses and FLOPs through collect_aux_losses."""
import pytest
import torch
from torch import nn

import dynamicnets as dn
from dynamicnets.adapt import MoEFeedForward, collect_aux_losses
from dynamicnets.errors import ConfigError

from adapt_helpers import counted


class UserBlock(nn.Module):
    """A user's pre-norm transformer-style MLP block, its MLP swapped for experts."""

    def __init__(self, d=8, mlp=None):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = mlp or nn.Sequential(nn.Linear(d, 16), nn.GELU(), nn.Linear(16, d))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


def blocks(**kwargs):
    torch.manual_seed(0)
    kwargs = {"num_experts": 4, "k": 2, **kwargs}
    return nn.Sequential(*[UserBlock(mlp=MoEFeedForward(8, 16, **kwargs)) for _ in range(2)])


@pytest.mark.parametrize("kwargs", [{}, {"capacity_factor": 0.5}, {"router": "expert_choice", "k": 1}])
def test_compact_equals_masked_and_flops_are_counted(kwargs):
    model = blocks(**kwargs).eval()
    x = torch.randn(3, 5, 8)
    layer = model[0].mlp
    with torch.no_grad():
        h = model[0].norm(x)
        with collect_aux_losses(model) as aux_c:
            compact, total_c = counted(layer, h, execution="compact")
        with collect_aux_losses(model) as aux_m:
            masked, total_m = counted(layer, h, execution="masked")
    assert compact.shape == masked.shape == x.shape
    torch.testing.assert_close(compact, masked)
    assert aux_c.token_flops["0.mlp"].sum().item() == total_c
    assert aux_m.token_flops["0.mlp"].tolist() == [layer.token_flops("masked")] * 15
    assert aux_m.token_flops["0.mlp"].sum().item() == total_m
    assert aux_c.losses.keys() == aux_m.losses.keys()
    for key in aux_c.losses:
        torch.testing.assert_close(aux_c.losses[key], aux_m.losses[key])


def test_aux_losses_are_collected_and_train_the_router():
    model = blocks().train()
    x, y = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    with collect_aux_losses(model) as aux:
        out = model(x)
    assert isinstance(out, torch.Tensor)
    assert set(aux.losses) == {"0.mlp/load_balance", "0.mlp/router_z", "1.mlp/load_balance", "1.mlp/router_z"}
    torch.testing.assert_close(aux.by_kind()["load_balance"], aux.losses["0.mlp/load_balance"] + aux.losses["1.mlp/load_balance"])
    loss = nn.functional.mse_loss(out, y) + aux.total()
    loss.backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    # the same losses as the MoE layer's own output for that input
    own = model[0].mlp.moe(model[0].norm(x))
    torch.testing.assert_close(own.aux_losses["load_balance"], aux.losses["0.mlp/load_balance"])


def test_outside_the_context_nothing_is_recorded():
    model = blocks().eval()
    with collect_aux_losses(model) as aux:
        pass
    model(torch.randn(1, 3, 8))
    assert aux.losses == {} and aux.total().item() == 0
    assert all(m._record is None for m in model.modules() if isinstance(m, MoEFeedForward))
    with pytest.raises(ConfigError, match="holds no MoEFeedForward"):
        with collect_aux_losses(UserBlock()):
            pass
    with collect_aux_losses(model):
        with pytest.raises(ConfigError, match="already being collected"):
            with collect_aux_losses(model):
                pass


def test_dynamic_loss_takes_the_collected_losses():
    model = nn.Sequential(nn.Linear(4, 8), MoEFeedForward(8, 16, num_experts=4), nn.Linear(8, 3)).train()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    with collect_aux_losses(model) as aux:
        logits = model(x)
    loss = dn.training.dynamic_loss(logits, y, aux_losses=aux.by_kind())
    torch.testing.assert_close(loss, nn.functional.cross_entropy(logits, y) + aux.total())


def test_counting_flops_leaves_the_experts_trained_weights_in_place():
    # MoE registers its experts twice (on itself and on its router/layer pair); the count swaps
    # each module's tensors once and puts them back
    model = nn.Sequential(nn.Linear(4, 8), MoEFeedForward(8, 16, num_experts=4, k=2), nn.Linear(8, 3)).eval()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        expected = model(x)
    eval_count = dn.count_flops(model, (5, 4))
    assert eval_count == dn.count_flops(model.train(), (5, 4))  # nested layers counted masked in eval too
    model.eval()
    assert not any(t.is_meta for t in model.state_dict().values())
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
