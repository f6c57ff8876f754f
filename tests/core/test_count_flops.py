"""`count_flops`: one public counter for any module, checked against FlopCounterMode."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import dynamicnets as dn
from dynamicnets.flops import CostReporting, count_flops, counted_flops, matmul_flops


class UserBlock(nn.Module):
    """A user module the library knows nothing about (traced on meta tensors)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_count_flops_of_a_user_module_equals_the_counter():
    model = UserBlock()
    assert count_flops(model, (3, 12, 10)) == counted_flops(model, torch.randn(1, 3, 12, 10))


def test_count_flops_of_library_models_equals_the_counter():
    for name in ("resnet20", "small_cnn", "mobilenetv2_cifar"):
        model = dn.create_model(name).eval()
        shape = model.default_input_shape
        assert count_flops(model, shape) == counted_flops(model, torch.zeros(1, *shape)), name


def test_library_blocks_answer_the_cost_protocol():
    model = dn.create_model("resnet20")
    block = model.stages[0][0] if hasattr(model, "stages") else next(
        m for m in model.modules() if isinstance(m, CostReporting) and m is not model)
    assert isinstance(block, CostReporting)
    assert not isinstance(nn.Conv2d(1, 1, 1), CostReporting)  # counted by formula instead


def test_an_outer_counter_does_not_see_the_measurement():
    model = UserBlock()
    with FlopCounterMode(display=False) as outer:
        count_flops(model, (3, 8, 8))
    assert outer.get_total_flops() == 0


def test_matmul_formula():
    assert matmul_flops(3, 4, 5) == counted_flops(torch.matmul, torch.randn(3, 4), torch.randn(4, 5))


def test_every_registered_model_answers_the_cost_protocol():
    assert all(isinstance(dn.create_model(name), CostReporting) for name in dn.list_models())


@pytest.mark.parametrize("name,kwargs", [("resnet20", {}), ("skipnet_resnet", {"depth": 20}),
                                         ("msdnet_cifar", {"num_blocks": 2}), ("dsnet_resnet_cifar", {})])
def test_a_model_counts_its_static_forward(name, kwargs):
    model = dn.create_model(name, num_classes=7, **kwargs).eval()
    shape = model.default_input_shape
    flops, out_shape = model.flops_and_shape(shape)
    static = {"execution": "masked"} if dn.execution.supported_executions(model) else {}
    assert out_shape == (7,)
    assert flops == counted_flops(lambda x: model(x, **static), torch.zeros(1, *shape))


def test_a_traced_count_keeps_tied_weights_tied_and_puts_every_tensor_back():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 6)
            self.out = torch.nn.Linear(6, 10, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, tokens):
            assert self.out.weight is self.embed.weight  # what a tied model may check
            return self.out(self.embed(tokens.long().squeeze(-1)))

    model = Tied()
    weight = model.embed.weight
    assert count_flops(model, (4, 1)) == 2 * 4 * 6 * 10
    assert model.embed.weight is weight and model.out.weight is weight and not weight.is_meta


def test_counted_flops_sees_multihead_attention_in_eval():
    # In eval without grad nn.MultiheadAttention takes a fused kernel the counter does not
    # know; counted on a real batch it must still equal the meta count.
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Attention().eval()
    assert torch.backends.mha.get_fastpath_enabled()
    assert counted_flops(model, torch.randn(3, 5, 16)) == 3 * count_flops(model, (5, 16)) > 0
    assert torch.backends.mha.get_fastpath_enabled()  # put back
