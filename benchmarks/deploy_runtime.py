"""Deployment runtimes: eager vs compiled vs torch.export vs onnxruntime.

A dynamic model split at its decisions (`dynamicnets.deploy.deployment_plan`) runs as
static graphs driven by the library's compact dispatch. This times, for an early-exit
MSDNet (`msdnet_cifar`, 5 exits) and a gated ResNet (`convnet_aig_resnet`, depth 56 by
default: 24 gated blocks of about 0.25 ms each per image at batch 1 on one thread, an
order of magnitude above the 10-60 us a graph call and a decision cost, so that batch-1
timing measures skipped work and not only dispatch; depth 110 doubles the export and
timing for the same per-block ratio), on 3x32x32 inputs, one torch thread and one
onnxruntime intra-op thread:

- `eager`: the model's own compact inference (`run_early_exit(model, x, policy)`,
  `model(x, policy=policy)`);
- `plan-eager`: `DeployedModel.from_plan(plan, "eager")`, the plan's modules as they are;
- `compiled`: `DeployedModel.from_plan(plan, "compiled")`, each graph through
  `torch.compile(dynamic=True)`, compiled and warmed up before timing;
- `torch.export`, `onnxruntime`: `DeployedModel.load(folder)` of the exported folders.

Each runtime runs the dynamic policy and the *full* network in that same runtime (every
sample to the last exit: `ExitPolicy` thresholds `inf`; every gated block on: gate
thresholds `-inf`, gates still evaluated), at batch 256 (one batch) and batch 1 (a
loop over `--singles` different single images). All 10 callables of a (model, batch) are
timed interleaved in the same run (`dynamicnets.profiling.latency.compare`:
`torch.utils.benchmark.Timer.blocked_autorange`, warm-up, inference mode), so:

- `speedup_measured = full_ms / dynamic_ms` within a runtime;
- `speedup_flops = full_flops / mean_flops` (per-sample FLOPs the runtime reports);
- `realised = speedup_measured / speedup_flops` (target: >= 0.9 for compiled / onnxruntime);
- `full_vs_eager`, `dynamic_vs_eager`: a runtime's time over eager's (< 1: faster).

`graph_calls` counts the graph calls the dispatch makes (per image at batch 1, per
batch at 256) and `small_graph_us` the time of one call of the model's cheapest graph at
batch 1 in that runtime: the per-call cost that batch 1 pays once per decision.

Decisions: untrained weights (seed 0) and random normal images (seed 0), so the decision
rules are fitted on the benchmark images themselves (`--singles` + `--batch` of them)
for a FLOPs speedup of `--target-speedup`: MSDNet's max-probability thresholds by
`calibrate_thresholds` (quantiles of each exit's scores, exit fractions geometric in one
parameter, bisected to the mean-FLOPs budget `full / target`); ConvNet-AIG's per-gate
thresholds by `calibrate_gate_policy` at one execution rate `r` for every gated block
(the `1 - r` quantile of each gate's logits on these images), `r` solved from the
block costs for that budget. Each threshold is then moved to the middle of the gap
between the scores next to it (no decision changes), so that the engines' last-bit
differences cannot flip a decision; every runtime gets the same policy and
`decisions_equal` checks it took eager's decisions on every timed image.

Exported folders are cached in `--cache` (default `runs/deploy_bench/`, one folder per
model, weights fingerprint and format) and reused when their manifest exists. The graph
breaks of `torch.compile` on the eager compact forward (`torch._dynamo.explain`) are
recorded in `meta.whole_model_graph_breaks`, for contrast with the plan's graphs (none).

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/deploy_runtime.py
    # quick check of the script (tiny settings, written elsewhere):
    .venv/bin/python benchmarks/deploy_runtime.py --depth 14 --batch 8 --singles 2 --rounds 1 \\
        --min-run-time 0.01 --out /tmp/deploy_check

Writes `<out>/deploy_runtime.json` and `.md` (default `benchmarks/results`).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch._dynamo.utils import counters

from dynamicnets import create_model
from dynamicnets.deploy import DeployedModel, deployment_plan, export_plan
from dynamicnets.deploy.backends import compile_room
from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.inference import ExitPolicy, calibrate_gate_policy, calibrate_thresholds, run_early_exit
from dynamicnets.profiling.latency import compare, measure
from dynamicnets.profiling.report import markdown_table, write_json

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)
RUNTIMES = ("eager", "plan-eager", "compiled", "torch.export", "onnxruntime")
FORMAT_OF = {"torch.export": "torch.export", "onnxruntime": "onnx"}


# ------------------------------------------------------------------ decisions
def middle_of_gap(scores: Tensor, cut: float, equal_passes: bool) -> float:
    """`cut` moved to the middle of the gap between the scores on either side of it.

    Args:
        scores: every score the decision meets, any shape.
        cut: the threshold.
        equal_passes: whether a score equal to `cut` passes (`>=`, exits) or not (`>`, gates).

    Returns:
        a threshold that takes the same decision on every score, as far from them as they allow.
    """
    if not math.isfinite(cut):
        return cut
    s = scores.flatten().double()
    passes = s >= cut if equal_passes else s > cut
    if passes.all() or not passes.any():
        return cut
    return float((s[~passes].max() + s[passes].min()) / 2)


def exit_policy(model: nn.Module, x: Tensor, target: float) -> ExitPolicy:
    """Max-probability thresholds for a mean-FLOPs speedup `target` on `x` (see the docstring)."""
    costs = [float(c) for c in model.exit_costs(tuple(x.shape[1:]))]
    with torch.no_grad():
        logits = model(x).exit_logits
    fitted = calibrate_thresholds(logits, torch.zeros(x.shape[0], dtype=torch.long), costs, costs[-1] / target)
    return ExitPolicy("maxprob", [middle_of_gap(l.softmax(-1).amax(-1), t, True)
                                  for l, t in zip(logits, fitted.policy.thresholds)])


def gate_policy(model: nn.Module, plan, x: Tensor, target: float) -> tuple[GatePolicy, float]:
    """Per-gate thresholds for a mean-FLOPs speedup `target` on `x`: `(policy, rate)`."""
    full = sum(g.flops for g in plan.graphs.values())  # every gate and every block
    gated = sum(plan.graphs[s["block"]].flops for s in plan.structure["steps"] if "block" in s)
    rate = 1.0 - (full - full / target) / gated
    fitted = calibrate_gate_policy(model, x, rate)
    seen: dict[int, Tensor] = {}  # the logits each gate meets under the fitted policy
    deployed = DeployedModel.from_plan(plan)
    for step in plan.structure["steps"]:
        if "gate" in step:
            deployed.runners[step["gate"]] = _recording(deployed.runners[step["gate"]], seen, step["index"])
    deployed(x, policy=fitted)
    cuts = [middle_of_gap(seen[i], t, False) for i, t in enumerate(fitted.thresholds)]
    return GatePolicy(tuple(cuts), {"rate": rate}), rate


def _recording(runner, seen: dict, index: int):
    def run(*tensors):
        out = runner(*tensors)
        seen[index] = out[0].detach().clone()
        return out
    return run


# ------------------------------------------------------------------ runtimes
def fingerprint(model: nn.Module) -> str:
    """12 hex digits of the SHA-256 of the model's weights and buffers."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def exported_folder(model: nn.Module, plan, fmt: str, cache: Path, tag: str) -> tuple[Path, float | None]:
    """The folder of `plan` exported in `fmt`, from the cache when its manifest exists.

    Returns:
        `(folder, seconds spent exporting or None when reused)`.
    """
    folder = cache / f"{tag}-{fingerprint(model)}" / fmt
    if (folder / "manifest.json").is_file():
        return folder, None
    start = time.perf_counter()
    export_plan(plan, folder, fmt)
    return folder, time.perf_counter() - start


class Case:
    """One model with its dynamic and full decision rules, callable in every runtime."""

    def __init__(self, model: nn.Module, kind: str, policy, full) -> None:
        self.model, self.kind, self.policy, self.full = model, kind, policy, full

    def eager(self, x: Tensor, full: bool):
        policy = self.full if full else self.policy
        if self.kind == "early_exit":
            return run_early_exit(self.model, x, policy).as_output()
        return self.model(x, policy=policy)

    def deployed(self, runtime: DeployedModel) -> Callable[[Tensor, bool], object]:
        def run(x: Tensor, full: bool):
            return runtime(x, policy=self.full if full else self.policy)
        return run

    def key(self) -> str:
        return "exit_index" if self.kind == "early_exit" else "gates"


def count_calls(runtime: DeployedModel, run: Callable[[], object]) -> int:
    """How many graph calls `run()` makes through `runtime`."""
    calls = [0]
    original = dict(runtime.runners)

    def counted(runner):
        def call(*tensors):
            calls[0] += 1
            return runner(*tensors)
        return call
    runtime.runners = {name: counted(r) for name, r in original.items()}
    try:
        run()
    finally:
        runtime.runners = original
    return calls[0]


def small_graph_us(plan, name: str, deployed: dict[str, DeployedModel], min_run_time: float) -> dict[str, float]:
    """Microseconds of one call of graph `name` on one image, per runtime (eager: the module)."""
    example = tuple(t[:1] for t in plan.graphs[name].example)
    runners = {"eager": plan.graphs[name].module, **{r: d.runners[name] for r, d in deployed.items()}}
    return {runtime: measure(lambda r=runner: r(*example), threads=1, min_run_time=min_run_time).median_ms * 1e3
            for runtime, runner in runners.items()}


def graph_breaks(fn: Callable, *args) -> dict:
    """`torch._dynamo.explain` of `fn(*args)`: graphs, breaks, their reasons and skipped frames."""
    counters.clear()
    explained = torch._dynamo.explain(fn)(*args)
    reasons: dict[str, int] = {}
    for text, count in counters["graph_break"].items():
        lines = [line.strip() for line in str(text).splitlines() if line.strip()]
        context = [line for line in lines if line.startswith("Developer debug context")]
        key = lines[0] + (f" ({context[0].split(':', 1)[1].strip()})" if context else "")
        reasons[key] = reasons.get(key, 0) + int(count)
    skipped = sorted({line.split("frame skipped:", 1)[1].strip().replace(f"{ROOT}/", "")
                      for text in counters["unimplemented"] for line in str(text).splitlines()
                      if "frame skipped:" in line})
    return {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count, "reasons": reasons,
            "frames_skipped": skipped}


def bench_model(name: str, kwargs: dict, args, cache: Path) -> tuple[list[dict], dict]:
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch + args.singles, *SHAPE, generator=gen)
    x_batch = images[: args.batch]
    singles = [images[args.batch + i: args.batch + i + 1] for i in range(args.singles)]
    plan = deployment_plan(model, SHAPE)  # no policy in the graphs: it is passed per call
    tag = name if name == "msdnet_cifar" else f"{name}{kwargs['depth']}"
    if plan.kind == "early_exit":
        policy = exit_policy(model, images, args.target_speedup)
        full = ExitPolicy("maxprob", [math.inf] * (model.num_exits - 1))
        rule = {"criterion": "maxprob", "thresholds": policy.thresholds}
    else:
        policy, rate = gate_policy(model, plan, images, args.target_speedup)
        full = GatePolicy.constant(-math.inf, model.num_gated_blocks)
        rule = {"rate": rate, "thresholds": list(policy.thresholds)}
    case = Case(model, plan.kind, policy, full)
    print(f"# {tag}: {len(plan.graphs)} graphs, policy {rule}", flush=True)

    runtimes: dict[str, Callable] = {"eager": case.eager}
    deployed: dict[str, DeployedModel] = {"plan-eager": DeployedModel.from_plan(plan, "eager"),
                                          "compiled": DeployedModel.from_plan(plan, "compiled")}
    timings_meta = {"graphs": len(plan.graphs), "policy": rule, "export_s": {}}
    for runtime, fmt in FORMAT_OF.items():
        folder, seconds = exported_folder(model, plan, fmt, cache, tag)
        timings_meta["export_s"][fmt] = "cached" if seconds is None else round(seconds, 1)
        deployed[runtime] = DeployedModel.load(folder)  # onnxruntime: torch's thread count (1)
    for runtime in RUNTIMES[1:]:
        runtimes[runtime] = case.deployed(deployed[runtime])

    with torch.inference_mode():
        start = time.perf_counter()  # compile every variant the timed calls meet
        for full_run in (False, True):
            runtimes["compiled"](x_batch, full_run)
            for s in singles:
                runtimes["compiled"](s, full_run)
        timings_meta["compile_s"] = round(time.perf_counter() - start, 1)
        reference = {(b, f): _outputs(runtimes["eager"], x_batch, singles, b, f) for b in (1, args.batch)
                     for f in (False, True)}
        checks = {}
        for runtime in RUNTIMES:
            checks[runtime] = {}
            for b in (1, args.batch):
                got = _outputs(runtimes[runtime], x_batch, singles, b, False)
                ref = reference[(b, False)]
                checks[runtime][b] = {
                    "decisions_equal": bool(torch.equal(got.decisions[case.key()], ref.decisions[case.key()])),
                    "max_logit_diff": float((got.logits - ref.logits).abs().max()),
                }
        calls = {(b, f): count_calls(deployed["plan-eager"], lambda b=b, f=f: _outputs(
            runtimes["plan-eager"], x_batch, singles, b, f)) for b in (1, args.batch) for f in (False, True)}
        smallest = min(plan.graphs, key=lambda n: plan.graphs[n].flops)
        with compile_room(len(plan.graphs)):  # as the compiled runtime calls its graphs
            small_us = small_graph_us(plan, smallest, deployed, args.min_run_time)

    rows = []
    for b in (args.batch, 1):
        fns = {}
        for runtime in RUNTIMES:
            run = runtimes[runtime]
            for full_run in (True, False):
                label = f"{runtime}|{'full' if full_run else 'dynamic'}"
                fns[label] = (lambda run=run, f=full_run: run(x_batch, f)) if b != 1 else \
                    (lambda run=run, f=full_run: [run(s, f) for s in singles])
        timed = compare(fns, threads=1, min_run_time=args.min_run_time, rounds=args.rounds, warmup=1)
        per = 1 if b != 1 else len(singles)  # batch 1: ms per image
        flops_dyn = float(reference[(b, False)].flops.double().mean())
        flops_full = float(reference[(b, True)].flops.double().mean())
        eager_full = timed["eager|full"].median_ms
        eager_dyn = timed["eager|dynamic"].median_ms
        for runtime in RUNTIMES:
            full_ms, dyn_ms = timed[f"{runtime}|full"].median_ms, timed[f"{runtime}|dynamic"].median_ms
            speedup_flops = flops_full / flops_dyn
            row = {
                "model": tag, "runtime": runtime, "batch_size": b,
                "full_ms": full_ms / per, "dynamic_ms": dyn_ms / per,
                "speedup_flops": speedup_flops, "speedup_measured": full_ms / dyn_ms,
                "realised": full_ms / dyn_ms / speedup_flops,
                "full_vs_eager": full_ms / eager_full, "dynamic_vs_eager": dyn_ms / eager_dyn,
                "mean_flops": flops_dyn, "full_flops": flops_full,
                "graph_calls": None if runtime == "eager" else calls[(b, False)] / (len(singles) if b == 1 else 1),
                "graph_calls_full": None if runtime == "eager" else calls[(b, True)] / (len(singles) if b == 1 else 1),
                "small_graph_us": small_us[runtime], "small_graph": smallest,
                **checks[runtime][b],
                "full_iqr_ms": timed[f"{runtime}|full"].iqr_ms / per,
                "dynamic_iqr_ms": timed[f"{runtime}|dynamic"].iqr_ms / per,
                "threads": 1, "weights": "untrained (seed 0)", "inputs": "random normal (seed 0)",
            }
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                   if k not in ("weights", "inputs", "small_graph")}, flush=True)

    # contrast: torch.compile of the eager compact forward breaks at its decisions
    few = images[:8]
    if plan.kind == "early_exit":
        timings_meta["whole_model_graph_breaks"] = {
            "what": "run_early_exit(model, x, policy), batch 8",
            **graph_breaks(lambda x: run_early_exit(model, x, policy).logits, few)}
    else:
        timings_meta["whole_model_graph_breaks"] = {
            "what": "model(x, policy=policy) (compact), batch 8",
            **graph_breaks(lambda x: model(x, policy=policy).logits, few)}
    return rows, timings_meta


def _outputs(run, x_batch: Tensor, singles: list[Tensor], batch: int, full: bool):
    """The runtime's output on the batch, or its single-image outputs stacked in one."""
    if batch != 1:
        return run(x_batch, full)
    outs = [run(s, full) for s in singles]
    first = outs[0]
    return type(first)(logits=torch.cat([o.logits for o in outs]), flops=torch.cat([o.flops for o in outs]),
                       decisions={k: torch.cat([o.decisions[k] for o in outs]) for k in first.decisions
                                  if k in ("exit_index", "gates")})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=56, help="depth of the gated ResNet (6n + 2)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--singles", type=int, default=64, help="single images timed as a loop at batch 1")
    parser.add_argument("--target-speedup", type=float, default=1.75, help="FLOPs speedup the policies aim at")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--models", nargs="+", default=["msdnet_cifar", "convnet_aig_resnet"])
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "deploy_bench")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows, meta = [], {}
    for name in args.models:
        kwargs = {"depth": args.depth} if name == "convnet_aig_resnet" else {}
        model_rows, meta[name] = bench_model(name, kwargs, args, args.cache)
        rows += model_rows
    command = "OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/deploy_runtime.py"
    write_json(args.out / "deploy_runtime.json", rows, {
        "threads": 1, "onnxruntime_intra_op_threads": 1, "command": command, "target_speedup": args.target_speedup,
        "singles": args.singles, "batch": args.batch, "rounds": args.rounds, "min_run_time": args.min_run_time,
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "models": meta})
    columns = ["model", "batch_size", "runtime", "full_ms", "dynamic_ms", "speedup_flops", "speedup_measured",
               "realised", "full_vs_eager", "dynamic_vs_eager", "graph_calls", "small_graph_us", "decisions_equal"]
    table = markdown_table(rows, columns, floatfmt={"full_ms": ".2f", "dynamic_ms": ".2f", "graph_calls": ".1f",
                                                    "small_graph_us": ".0f", "speedup_flops": ".2f",
                                                    "speedup_measured": ".2f", "realised": ".2f",
                                                    "full_vs_eager": ".2f", "dynamic_vs_eager": ".2f"})
    (args.out / "deploy_runtime.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
