"""dynamic_loss from a user's own loop, and the REINFORCE baseline protocol."""
import pytest
import torch
import torch.nn.functional as F

import dynamicnets as dn
from dynamicnets.errors import ConfigError
from dynamicnets.outputs import DynamicOutput
from dynamicnets.training import SupportsBaselineUpdate, dynamic_loss, exit_distillation_loss, loss_terms


def test_terms_add_up_from_their_parts():
    torch.manual_seed(0)
    exits = [torch.randn(4, 5, requires_grad=True) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 3])
    out = DynamicOutput(logits=exits[-1], exit_logits=exits, aux_losses={"rate": torch.tensor(0.25)})
    extra = {"load_balance": torch.tensor(0.5)}
    terms = loss_terms(out, y, exit_weights=[1, 1, 2], aux_losses=extra, distill_weight=0.3)
    task = sum(w * F.cross_entropy(e, y) for w, e in zip([0.25, 0.25, 0.5], exits))
    torch.testing.assert_close(terms["task"], task)
    torch.testing.assert_close(terms["aux"], torch.tensor(0.75))
    torch.testing.assert_close(terms["distill"], exit_distillation_loss(out, 3.0, 0.3))
    torch.testing.assert_close(dynamic_loss(out, y, exit_weights=[1, 1, 2], aux_losses=extra, distill_weight=0.3),
                               terms["task"] + terms["aux"] + terms["distill"])
    assert loss_terms(out, y, include_model_aux=False)["aux"].item() == 0


def test_plain_logits_and_bad_outputs():
    logits, y = torch.randn(3, 4), torch.tensor([0, 1, 3])
    torch.testing.assert_close(dynamic_loss(logits, y), F.cross_entropy(logits, y))
    with pytest.raises(ConfigError, match="DynamicOutput or a logits tensor"):
        dynamic_loss((logits,), y)


def test_reinforce_models_satisfy_the_baseline_protocol():
    skipnet = dn.create_model("skipnet_resnet", depth=14, width=4, rl=True)
    assert isinstance(skipnet, SupportsBaselineUpdate)
    assert not isinstance(dn.create_model("resnet20"), SupportsBaselineUpdate)
