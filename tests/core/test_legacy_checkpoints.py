"""State dicts written before the one-core refactor still load and give the same outputs.

`tests/fixtures/models_main_e75df04.pt` was written by the library at commit e75df04 (the
last commit before the shared execution/compact/cost vocabulary): for each model its
constructor arguments, state_dict, an input and the eval-mode logits and FLOPs it gave.
"""
from pathlib import Path

import pytest
import torch

from dynamicnets import create_model

FIXTURE = Path(__file__).parent.parent / "fixtures" / "models_main_e75df04.pt"
RECORDS = torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_old_state_dict_loads_and_gives_identical_outputs(name):
    record = RECORDS[name]
    model = create_model(record["model_name"], num_classes=record["num_classes"], **record["model_args"])
    model.load_state_dict(record["model"])  # strict: every key still exists, none new
    with torch.no_grad():
        out = model.eval()(record["input"])
    # Equal up to float summation order: the thread count (and a test run's earlier thread
    # settings) changes how convolutions split their sums, by about one ulp.
    torch.testing.assert_close(out.logits, record["expected_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.flops, record["expected_flops"], rtol=0, atol=0)
