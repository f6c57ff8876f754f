"""Skip-RNN, the mechanism alone: what skipping half of the state updates saves on the clock.

Random-weight `SkipLSTM` / `SkipGRU` layers (input size 1, as MNIST-1D is read), eval
mode, `--steps` steps, at each hidden size of `--hidden` and batch 1 and 256. Two kinds
of decisions, both updating about half of the steps:

- `given`: every sample updates at a random half of the steps (passed as `updates`);
- `gate`: the update gate's own decisions, its bias set to `logit(0.4)` (after an update
  `u~ = du ~ 0.4 < 0.5`, the next step `0.8 > 0.5`: about every second step).

Timed in the same run, interleaved (`--rounds` rounds, `torch.utils.benchmark`, one
thread, warm-up first):

- `compact`: the layer's compact execution (host-side schedule, fused cell op on the
  gathered rows, in-place write-back);
- `tensor_decided`: the same compact execution with `u~` kept in tensors and the rows
  found by `nonzero` at every step (how the batch path worked before the host schedule);
- `static_loop`: `nn.LSTMCell` / `nn.GRUCell` at every step (the FLOPs baseline);
- `ideal`: the static cell loop over exactly the mean number of executed steps;
- `fused`: `nn.LSTM` / `nn.GRU` (oneDNN on CPU) with the same weights over every step.

`speedup_flops` = static loop FLOPs / compact mean FLOPs (the update gate included);
`speedup_measured` = static loop time / compact time; `realised` = measured / FLOPs.

The clock is the thread's CPU time (`--clock cpu`, `time.thread_time`) by default: the
core these runs share is time-sliced between several processes, which inflates and
scatters wall-clock times; CPU time counts only this thread's work. `--clock wall` uses
the wall clock.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/skip_rnn_mechanism.py   # ~6 min here

Writes benchmarks/results/skip_rnn_mechanism.{json,md}.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from dynamicnets.flops import gru_cell_flops, lstm_cell_flops
from dynamicnets.layers.skip_rnn import SkipGRU, SkipLSTM
from dynamicnets.profiling.allocator import keep_freed_memory
from dynamicnets.profiling.report import markdown_table, write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KINDS = {"skip_lstm": (SkipLSTM, nn.LSTM, lstm_cell_flops), "skip_gru": (SkipGRU, nn.GRU, gru_cell_flops)}


def static_loop(cell: nn.Module, lstm: bool):
    """`x (B, T, I) -> h_T`: the cell at every step, as the static classifiers run it."""
    def run(x: torch.Tensor) -> torch.Tensor:
        steps = x.transpose(0, 1).contiguous()
        h = steps.new_zeros(steps.shape[1], cell.hidden_size)
        state = (h, h) if lstm else h
        for x_t in steps:
            state = cell(x_t, state)
        return state[0] if lstm else state
    return run


def fused_rnn(rnn_type, cell: nn.Module) -> nn.Module:
    """`nn.LSTM` / `nn.GRU` holding `cell`'s weights."""
    rnn = rnn_type(cell.input_size, cell.hidden_size, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(rnn, name + "_l0").copy_(getattr(cell, name))
    return rnn.eval()


def time_interleaved(fns: dict, args) -> dict[str, float]:
    """Median over rounds of the per-round median ms per call, the callables interleaved."""
    from torch.utils.benchmark import Timer

    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(args.rounds):
        for name, fn in fns.items():
            timer = Timer("fn()", globals={"fn": fn}, num_threads=1, timer=clock)
            rounds[name].append(timer.blocked_autorange(min_run_time=args.min_run_time).median * 1e3)
    return {name: statistics.median(times) for name, times in rounds.items()}


@torch.no_grad()
def case(kind: str, hidden: int, batch: int, decisions: str, args) -> dict:
    layer_type, fused_type, cell_flops = KINDS[kind]
    torch.manual_seed(0)
    bias = math.log(0.4 / 0.6) if decisions == "gate" else 2.0
    rnn = layer_type(args.input_size, hidden, update_bias_init=bias).eval()
    lstm = kind == "skip_lstm"
    x = torch.randn(batch, args.steps, args.input_size, generator=torch.Generator().manual_seed(1))
    updates = None
    if decisions == "given":
        order = torch.rand(batch, args.steps, generator=torch.Generator().manual_seed(2)).argsort(dim=1)
        updates = (order < args.steps // 2).float()  # exactly half the steps of every sample
    out = rnn(x, execution="compact", updates=updates)
    masked = rnn(x, execution="masked", updates=updates)
    assert torch.equal(out.updates, masked.updates), "compact and masked decisions differ"
    torch.testing.assert_close(out.hidden, masked.hidden, rtol=1e-4, atol=1e-5)
    executed = float(out.updates.sum(dim=1).mean())
    k = max(1, round(executed))
    loop, fused = static_loop(rnn.cell, lstm), fused_rnn(fused_type, rnn.cell)
    fns = {
        "compact": lambda: rnn(x, execution="compact", updates=updates),
        "tensor_decided": lambda: rnn._compact_tensors(x, updates, 0.5),
        "static_loop": lambda: loop(x),
        "ideal": lambda: loop(x[:, :k]),
        "fused": lambda: fused(x),
    }
    ms = time_interleaved(fns, args)
    static_flops = args.steps * cell_flops(rnn.cell)
    speedup_flops = static_flops / float(out.flops.mean())
    speedup_measured = ms["static_loop"] / ms["compact"]
    return {"method": kind, "decisions": decisions, "hidden": hidden, "batch_size": batch,
            "update_fraction": executed / args.steps, "executed_steps": executed, "ideal_steps": k,
            "speedup_flops": speedup_flops, "speedup_measured": speedup_measured,
            "realised": speedup_measured / speedup_flops,
            "static_loop_ms": ms["static_loop"], "ms": ms["compact"], "ideal_ms": ms["ideal"],
            "fused_ms": ms["fused"], "tensor_decided_ms": ms["tensor_decided"],
            "ideal_speedup": ms["static_loop"] / ms["ideal"],
            "tensor_decided_speedup": ms["static_loop"] / ms["tensor_decided"],
            "fused_speedup": ms["static_loop"] / ms["fused"],
            "compact_over_fused": ms["compact"] / ms["fused"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--decisions", nargs="+", default=["given", "gate"], choices=["given", "gate"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--input-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.1, help="seconds per callable per round")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--out", default="skip_rnn_mechanism", help="results name under benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"allocator: {keep_freed_memory()}")
    rows = []
    for kind in args.kinds:
        for hidden in args.hidden:
            for batch in args.batch:
                for decisions in args.decisions:
                    rows.append(case(kind, hidden, batch, decisions, args))
                    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()
                           if k in ("method", "decisions", "hidden", "batch_size", "update_fraction",
                                    "speedup_flops", "speedup_measured", "realised", "ideal_speedup",
                                    "tensor_decided_speedup", "fused_speedup")}, flush=True)
    meta = {"threads": 1, "clock": "thread CPU time" if args.clock == "cpu" else "wall clock",
            "steps": args.steps, "input_size": args.input_size, "rounds": args.rounds,
            "min_run_time": args.min_run_time,
            "command": "OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/skip_rnn_mechanism.py " + " ".join(sys.argv[1:])}
    write_json(RESULTS / f"{args.out}.json", rows, meta)
    columns = ("method", "decisions", "hidden", "batch_size", "update_fraction", "speedup_flops", "speedup_measured",
               "realised", "ideal_speedup", "tensor_decided_speedup", "fused_speedup", "compact_over_fused")
    table = markdown_table([{c: r[c] for c in columns} for r in rows], floatfmt=".2f")
    (RESULTS / f"{args.out}.md").write_text(
        f"Skip-RNN mechanism, {args.steps} steps, input size {args.input_size}, one thread, clock: {meta['clock']}; "
        f"speedups are static cell loop time / each method's time, same run.\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
