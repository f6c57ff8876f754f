import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dynamicnets.errors import DataError
from dynamicnets.outputs import DynamicOutput
from dynamicnets.training import evaluate


class LookupModel(nn.Module):
    """Returns stored logits: input `x (B, 1)` holds each sample's index."""

    def __init__(self, exit_logits: list[torch.Tensor], flops: torch.Tensor) -> None:
        super().__init__()
        self.exit_logits = exit_logits
        self.flops = flops
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        idx = x[:, 0].long()
        exits = [e[idx] * self.scale for e in self.exit_logits]
        return DynamicOutput(logits=exits[-1], exit_logits=exits, flops=self.flops[idx])


def test_accuracy_loss_per_exit_accuracy_and_mean_flops():
    n = 10
    y = torch.arange(n) % 2
    right = torch.nn.functional.one_hot(y, 2).float() * 5
    wrong = torch.nn.functional.one_hot(1 - y, 2).float() * 5
    exit1 = torch.where((torch.arange(n) < 3)[:, None], right, wrong)  # 3/10 right
    exit2 = torch.where((torch.arange(n) < 8)[:, None], right, wrong)  # 8/10 right
    flops = torch.arange(n, dtype=torch.float64) * 100
    model = LookupModel([exit1, exit2], flops)
    model.train()
    loader = DataLoader(TensorDataset(torch.arange(n).float()[:, None], y), batch_size=4)
    got = evaluate(model, loader, "cpu")
    assert got["accuracy"] == pytest.approx(0.8)
    assert got["exit_accuracy"] == pytest.approx([0.3, 0.8])
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(exit2, y).item())
    assert got["mean_flops"] == pytest.approx(450.0)
    assert got["samples"] == n
    assert model.training  # mode restored


def test_model_without_flops_reports_none():
    class Plain(nn.Module):
        def forward(self, x):
            return DynamicOutput(logits=x)

    loader = DataLoader(TensorDataset(torch.eye(3), torch.arange(3)), batch_size=2)
    got = evaluate(Plain(), loader, "cpu")
    assert got["accuracy"] == 1.0 and got["mean_flops"] is None


def test_empty_loader_is_a_data_error():
    loader = DataLoader(TensorDataset(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)), batch_size=2)
    with pytest.raises(DataError, match="no samples"):
        evaluate(LookupModel([torch.zeros(1, 2)], torch.zeros(1)), loader, "cpu")


def test_to_channels_last_converts_4d_tensors_and_leaves_stacked_expert_kernels():
    from dynamicnets import create_model
    from dynamicnets.training.evaluate import to_channels_last

    torch.manual_seed(0)
    model = create_model("resnet20_condconv").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x).logits
    with pytest.raises(RuntimeError):  # what the Trainer used to call
        create_model("resnet20_condconv").to(memory_format=torch.channels_last)
    to_channels_last(model)
    ranks = {p.dim() for p in model.parameters()}
    assert 5 in ranks and 4 in ranks
    for p in model.parameters():
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        after = model(x.contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
