"""Every shipped weight's model has a deployment plan: the zoo exports (the plan's graphs are
what `dynamicnets export --model NAME --pretrained TAG` writes and checks)."""
from __future__ import annotations

import pytest
import torch

from dynamicnets.deploy import deployment_plan
from dynamicnets.models import create_model
from dynamicnets.models.pretrained import list_pretrained

ROWS = list_pretrained()


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.model}:{r.tag}" for r in ROWS])
def test_a_shipped_weight_has_a_deployment_plan(row):
    torch.manual_seed(0)
    model = create_model(row.model, **row.model_args)  # the plan depends on the architecture, not the weights
    plan = deployment_plan(model)
    assert plan.graphs and plan.input_shape == tuple(row.input_shape)
