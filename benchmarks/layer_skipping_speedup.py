"""Real speedup of compact layer skipping.

A gated ResNet-110 (CIFAR layout, 3x32x32 inputs, 51 of its 54 blocks gated) executes
about half of its gated blocks per sample; its compact execution (each block runs only on
the samples whose gate is on) is timed against the full static ResNet-110 with the same
weights, interleaved in the same run (`dynamicnets.profiling.latency.compare`, fixed
threads, inference mode), at batch 256 and at batch 1 (`--singles` single samples in a
row). Each record gives the FLOPs speedup (static FLOPs / mean executed FLOPs, gates
included), the measured speedup and their ratio (target >= 0.85).

Methods (random weights, `accuracy` is null):

- `random_gates`: decisions drawn per sample and block with probability `--rate` (seed 0),
  given to the model as `gates=`; no gate network runs: the execution mechanism alone.
- `convnet_aig`, `skipnet_ffgate`: the models' own per-block gates, each gate's bias set
  so that a fraction `--rate` of a calibration batch executes its block (per-block
  thresholds); the gates' cost (FLOPs and time) is included.
- `skipnet_rnn`: SkipNet's recurrent gate (one LSTM step per block); its one output layer
  is shared, so one threshold holds the overall rate (the blocks' rates vary around it).
- `blockdrop`: the policy network's per-block thresholds calibrated the same way.

`ideal` is a static network of the executed size: the same backbone running, for every
sample, the first `k_s` gated blocks of stage `s` with `k_s` the method's mean executed
count (no gates, no gather). `ideal_over_flops` shows how FLOPs turn into time on this CPU
for a plain smaller network; `overhead_vs_ideal` is the compact execution's time per
executed FLOP over the ideal's (1.0: no overhead of its own from gates, gathers, bookkeeping).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/layer_skipping_speedup.py
    # quick check of the script itself (tiny settings, written elsewhere):
    .venv/bin/python benchmarks/layer_skipping_speedup.py --depth 14 --batch 8 --singles 2 \\
        --rounds 1 --min-run-time 0.01 --out /tmp/skipping_check

Writes `<out>/layer_skipping_speedup.json` and `.md` (default `benchmarks/results`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

import dynamicnets.models.skipping  # noqa: F401  (registers the layer-skipping models)
from dynamicnets import create_model
from dynamicnets.inference import calibrate_gate_rate
from dynamicnets.models.skipping import GatedResNet
from dynamicnets.profiling.latency import compare
from dynamicnets.profiling.report import markdown_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (3, 32, 32)
METHODS = {  # method -> (registered model, constructor kwargs, uses its own gates)
    "random_gates": ("convnet_aig_resnet", {}, False),
    "convnet_aig": ("convnet_aig_resnet", {}, True),
    "skipnet_ffgate": ("skipnet_resnet", {"gate": "ffgate"}, True),
    "skipnet_rnn": ("skipnet_resnet", {"gate": "rnn"}, True),
    "blockdrop": ("blockdrop_resnet", {}, True),
}


def ideal_network(model: GatedResNet, gates: torch.Tensor):
    """A static sub-network running the mean executed number of gated blocks per stage.

    Returns:
        `(run, flops)`: a callable `x -> logits` and its per-sample FLOPs on `SHAPE`.
    """
    backbone = model.backbone
    fixed, costs = model.block_costs(SHAPE)
    keep, index, flops = [], 0, float(fixed)
    for blocks in backbone.stages:
        gated = len(blocks) - 1
        keep.append(int(round(float(gates[:, index : index + gated].sum(1).mean()))))
        flops += float(costs[index : index + keep[-1]].sum())
        index += gated

    def run(x: torch.Tensor) -> torch.Tensor:
        x = backbone.stem(x)
        for blocks, k in zip(backbone.stages, keep):
            for block in blocks[: 1 + k]:
                x = block(x)
        return backbone.head(x)

    return run, flops


def build(method: str, depth: int, rate: float, calibration: torch.Tensor, fmt) -> GatedResNet:
    name, kwargs, own_gates = METHODS[method]
    torch.manual_seed(0)
    model = create_model(name, depth=depth, **kwargs).eval()
    if own_gates:
        calibrate_gate_rate(model, calibration, rate)
    return model.to(memory_format=fmt)


def forward_fn(model: GatedResNet, x: torch.Tensor, gates: torch.Tensor | None):
    if gates is None:
        return lambda: model(x)
    return lambda: model(x, gates=gates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depth", type=int, default=110)
    parser.add_argument("--rate", type=float, default=0.5, help="target fraction of gated blocks run")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--singles", type=int, default=32, help="single samples timed in a row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    g = torch.Generator().manual_seed(0)
    calibration = torch.randn(256, *SHAPE, generator=g)
    x_batch = torch.randn(args.batch, *SHAPE, generator=g).contiguous(memory_format=fmt)
    singles = [torch.randn(1, *SHAPE, generator=g).contiguous(memory_format=fmt)
               for _ in range(args.singles)]

    models = {m: build(m, args.depth, args.rate, calibration, fmt) for m in args.methods}
    static = models[args.methods[0]].backbone  # same seed, so every model has these weights
    full_flops = static.flops(SHAPE)
    fns = {"full_batch": lambda: static(x_batch), "full_1": lambda: [static(s) for s in singles]}
    facts = {}
    with torch.inference_mode():
        for method, model in models.items():
            num_gated = model.num_gated_blocks
            forced = not METHODS[method][2]
            gen = torch.Generator().manual_seed(0)

            def draw(batch: int) -> torch.Tensor | None:
                return (torch.rand(batch, num_gated, generator=gen) < args.rate).float() if forced else None

            g_batch = draw(args.batch)
            g_singles = [draw(1) for _ in singles]
            out_batch = model(x_batch, gates=g_batch)
            out_singles = [model(s, gates=gs) for s, gs in zip(singles, g_singles)]
            gates_1 = torch.cat([o.decisions["gates"] for o in out_singles])
            ideal_batch, ideal_flops_batch = ideal_network(model, out_batch.decisions["gates"])
            ideal_1, ideal_flops_1 = ideal_network(model, gates_1)
            fns[f"{method}_batch"] = forward_fn(model, x_batch, g_batch)
            fns[f"{method}_1"] = lambda model=model, g=g_singles: [
                model(s, gates=gs) for s, gs in zip(singles, g)]
            fns[f"ideal_{method}_batch"] = lambda run=ideal_batch: run(x_batch)
            fns[f"ideal_{method}_1"] = lambda run=ideal_1: [run(s) for s in singles]
            facts[method] = {
                "batch": (out_batch.mean_flops(), float(out_batch.decisions["executed_fraction"].mean()),
                          ideal_flops_batch),
                "1": (statistics.fmean(o.mean_flops() for o in out_singles),
                      float(gates_1.mean()), ideal_flops_1),
            }
            print(f"# {method}: executed fraction {facts[method]['batch'][1]:.3f} (batch), "
                  f"{facts[method]['1'][1]:.3f} (singles)", flush=True)

    timed = compare(fns, threads=args.threads, min_run_time=args.min_run_time,
                    warmup=args.warmup, rounds=args.rounds)
    rows = []
    for method in args.methods:
        for key, batch_size in (("batch", args.batch), ("1", 1)):
            flops, executed, ideal_flops = facts[method][key]
            full_ms = timed[f"full_{key}"].median_ms
            compact_ms = timed[f"{method}_{key}"].median_ms
            ideal_ms = timed[f"ideal_{method}_{key}"].median_ms
            speedup_flops = full_flops / flops
            measured = full_ms / compact_ms
            rows.append({
                "method": method, "batch_size": batch_size, "depth": args.depth,
                "gated_blocks": models[method].num_gated_blocks, "executed_fraction": executed,
                "mean_flops": flops, "full_flops": full_flops,
                "speedup_flops": speedup_flops, "speedup_measured": measured,
                "measured_over_flops": measured / speedup_flops,
                "ideal_over_flops": (full_ms / ideal_ms) / (full_flops / ideal_flops),
                "overhead_vs_ideal": (compact_ms / flops) / (ideal_ms / ideal_flops),
                "full_ms": full_ms, "compact_ms": compact_ms, "ideal_ms": ideal_ms,
                "accuracy": None, "weights": "random", "inputs": "random normal",
                "channels_last": args.channels_last, "threads": args.threads,
                "samples_per_call": batch_size if key == "batch" else args.singles,
            })
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()},
                  flush=True)

    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/layer_skipping_speedup.py", *given])
    suffix = "_channels_last" if args.channels_last else ""
    write_json(args.out / f"layer_skipping_speedup{suffix}.json", rows,
               {"threads": args.threads, "command": command, "rounds": args.rounds,
                "min_run_time": args.min_run_time})
    columns = ["method", "batch_size", "executed_fraction", "speedup_flops", "speedup_measured",
               "measured_over_flops", "ideal_over_flops", "overhead_vs_ideal", "accuracy"]
    table = markdown_table(rows, columns, floatfmt=".3f")
    (args.out / f"layer_skipping_speedup{suffix}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
