"""`pipelines.resolution`: scoring and timing dynamic-resolution cases beside a static network."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dynamicnets import ConfigError, create_model
from dynamicnets.inference.resolution_policy import ResolutionPolicy
from dynamicnets.pipelines.resolution import forward_case, score_case, time_cases

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def dyn():
    torch.manual_seed(0)
    return create_model("dynamic_resolution_resnet", depth=8, width=8).eval()


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(10, *SHAPE, generator=generator)
    y = torch.randint(0, 10, (10,), generator=generator)
    return x, y


def loader(data, batch_size=4):
    return DataLoader(TensorDataset(*data), batch_size=batch_size)


def test_forced_resolution_scores_every_sample_there(dyn, data):
    costs = dyn.resolution_costs(SHAPE)
    for index in range(3):
        scored = score_case(dyn, loader(data), resolution_index=index, memory_format=torch.channels_last)
        with torch.no_grad():
            expected = (dyn(data[0], resolution_index=torch.full((10,), index)).logits.argmax(1) == data[1])
        assert scored["resolution_histogram"] == [10 if i == index else 0 for i in range(3)]
        assert scored["mean_flops"] == pytest.approx(costs[index])
        assert scored["accuracy"] == pytest.approx(float(expected.double().mean()))
        assert scored["samples"] == 10


def test_policy_histogram_and_cost_agree(dyn, data):
    policy = ResolutionPolicy(bias=(3.0, 0.0, -3.0))
    scored = score_case(dyn, loader(data, 3), policy=policy)
    with torch.no_grad():
        chosen = dyn(data[0], policy=policy).decisions["resolution_index"]
    histogram = torch.bincount(chosen, minlength=3).tolist()
    costs = dyn.resolution_costs(SHAPE)
    assert scored["resolution_histogram"] == histogram
    assert scored["mean_flops"] == pytest.approx(sum(n * c for n, c in zip(histogram, costs)) / 10)


def test_static_model_has_no_histogram(data):
    torch.manual_seed(0)
    plain = create_model("resnet20").eval()
    scored = score_case(plain, loader(data))
    assert scored["resolution_histogram"] is None
    assert scored["mean_flops"] == pytest.approx(plain.flops(SHAPE))


def test_time_cases_reports_the_cost_of_the_timed_samples(dyn, data):
    batches = [data[0][:4], data[0][4:7]]
    cases = {"forced 16": (dyn, {"resolution_index": 0}), "argmax": (dyn, {})}
    timed = time_cases(cases, batches, threads=1, min_run_time=0.01, rounds=1)
    with torch.inference_mode():
        argmax_flops = torch.cat([forward_case(dyn, b).flops for b in batches]).mean()
    assert list(timed) == ["forced 16", "argmax"]
    assert timed["forced 16"]["mean_flops"] == pytest.approx(dyn.resolution_costs(SHAPE)[0])
    assert timed["argmax"]["mean_flops"] == pytest.approx(float(argmax_flops))
    for t in timed.values():
        assert t["timed_samples"] == 7 and t["batch_size"] == 4
        assert t["median_ms"] > 0 and t["ms_per_sample"] == pytest.approx(t["median_ms"] / 7)


def test_empty_inputs_are_config_errors(dyn, data):
    with pytest.raises(ConfigError, match="no sample"):
        score_case(dyn, [])
    with pytest.raises(ConfigError, match="at least one case"):
        time_cases({}, [data[0]])
    with pytest.raises(ConfigError, match="one batch"):
        time_cases({"argmax": (dyn, {})}, [])
