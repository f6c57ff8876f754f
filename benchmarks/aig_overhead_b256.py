"""What the gates of the shipped ConvNet-AIG-56 cost when they execute every block.

Times, in one run and interleaved over rounds, the shipped static ResNet-56 and the shipped
ConvNet-AIG-56 with every gate on at batch 256 (random inputs; with every block executed the
work does not depend on them): once through the model's own scored path (per-block thresholds
of -inf, so the gate networks run and every logit passes) and once with the decisions given
(`gates=ones`, the gate networks not run). The ratio over ResNet-56 is the overhead of gating
at full execution. Run it on a quiet core:

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/aig_overhead_b256.py
"""
from __future__ import annotations

import argparse

import torch

from dynamicnets import create_model
from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.profiling.allocator import keep_freed_memory
from dynamicnets.profiling.latency import compare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"allocator: {keep_freed_memory()}")
    gated = create_model("convnet_aig_resnet", pretrained="cifar10").eval()
    static = create_model("resnet56", pretrained="cifar10").eval()
    x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    every = GatePolicy.constant(float("-inf"), gated.num_gated_blocks)
    ones = torch.ones(args.batch, gated.num_gated_blocks)
    calls = {
        "resnet56": lambda: static(x),
        "gated, scored path, every gate on": lambda: gated(x, policy=every),
        "gated, decisions given (all on)": lambda: gated(x, gates=ones, execution="compact"),
    }
    measured = compare(calls, threads=1, min_run_time=args.min_run_time, warmup=1, rounds=args.rounds)
    base = measured["resnet56"].median_ms
    for name, m in measured.items():
        print(f"{name:36s} {m.median_ms:8.1f} ms   resnet56 time / this = {base / m.median_ms:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
