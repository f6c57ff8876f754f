"""Staged training: `train_only` trains the named sub-modules only (frozen BN keeps its
statistics), `split_steps` divides a budget; GFNet's stages on `glance_focus_cnn`."""
import pytest
import torch
from torch import nn

from dynamicnets import ConfigError, create_model
from dynamicnets.training.objective import dynamic_loss
from dynamicnets.training.stages import split_steps, train_only


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(x))


def test_only_the_named_children_learn_and_frozen_bn_keeps_its_statistics():
    torch.manual_seed(0)
    model = Two()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = train_only(model, ["head"])
    assert {id(p) for p in params} == {id(p) for p in model.head.parameters()}
    assert model.training and model.head.training and not model.body.training
    optimizer = torch.optim.SGD(params, lr=0.1)
    loss = model(torch.randn(8, 3)).square().mean()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("body."))
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert all(p.grad is None for p in model.body.parameters())


@pytest.mark.parametrize("names", [["tail"], [], ["body.0"]])
def test_unknown_names_are_a_config_error(names):
    with pytest.raises(ConfigError, match="names"):
        train_only(Two(), names)


@pytest.mark.parametrize("total,fractions,want", [(10, [0.6, 0.2, 0.2], [6, 2, 2]), (7, [1, 1], [4, 3]),
                                                  (5, [0, 1], [0, 5]), (0, [1, 2], [0, 0])])
def test_split_steps_sums_to_the_total(total, fractions, want):
    assert split_steps(total, fractions) == want


@pytest.mark.parametrize("total,fractions,name", [(-1, [1], "total"), (4, [], "fractions"),
                                                  (4, [0, 0], "fractions"), (4, [1, -1], "fractions")])
def test_bad_split_names_the_argument(total, fractions, name):
    with pytest.raises(ConfigError, match=name):
        split_steps(total, fractions)


def test_glance_focus_stages_train_what_they_name():
    """Stage 1 (random locations) leaves the policy untouched; stage 2 (sampled locations,
    REINFORCE) moves the policy and `where` only; stage 3 (greedy, `sample=False`) adds no
    policy loss and leaves the global encoder alone."""
    torch.manual_seed(0)
    model = create_model("glance_focus_cnn", num_classes=5, image_size=20, glance_size=10, patch_size=8, grid=4,
                         steps=3, width=4, hidden=16, policy_hidden=8)
    x, y = torch.randn(6, 1, 20, 20), torch.randint(0, 5, (6,))
    forwards = {"read": lambda: model(x, locations=model.random_locations(6, generator=torch.Generator())),
                "policy": lambda: model(x, target=y, sample=True),
                "fine_tune": lambda: model(x, sample=False)}
    for stage, forward in forwards.items():
        params = train_only(model, model.training_stages[stage])
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.SGD(params, lr=0.5)
        out = forward()
        assert ("policy" in out.aux_losses) == (stage == "policy")
        dynamic_loss(out, y).backward()
        optimizer.step()
        after = model.state_dict()
        changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
        assert changed == set(model.training_stages[stage]), (stage, changed)
    locations = model.random_locations(50, generator=torch.Generator().manual_seed(0))
    assert locations.shape == (50, 2) and locations.dtype == torch.int64
    assert 0 <= int(locations.min()) and int(locations.max()) < 16
