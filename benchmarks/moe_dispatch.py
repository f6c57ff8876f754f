"""MoE dispatch on CPU: 8 experts, top-2, 4096 tokens, d_model 512, hidden 2048.

Four ways to compute the same mixture output for one fixed routing, timed interleaved in
the same run (`dynamicnets.profiling.latency.compare`, 2 threads, inference mode):

- `ours`: `MoELayer` - sort assignments by expert, gather, each expert on its own rows,
  weight and scatter-add back (dispatch + combine included, router excluded);
- `ideal`: only the expert GEMMs, on tokens already grouped by expert in contiguous
  buffers (the same row counts as `ours`);
- `naive`: a loop over experts, each run on *all* tokens, its output masked by the
  routing weights (zero for tokens not routed to it);
- `dense`: every expert on every token as batched matmuls, fused with the dense
  `(T, E)` combine weights.

`ours_with_router` adds the top-2 router. Outputs are checked equal before timing.
Writes `benchmarks/results/moe_dispatch.json` (`ours, ideal, naive, dense` median ms,
ratios, FLOPs) and `moe_dispatch.md`.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/moe_dispatch.py
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dynamicnets.layers.moe import MoE, combine_weights, dense_moe, dispatch
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.report import markdown_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2
VARIANTS = ("ours", "ideal", "naive", "dense", "ours_with_router")


def naive_masked(moe: MoE, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Loop over experts; each runs on every token, masked by its `(T,)` weight column."""
    out = torch.zeros_like(x)
    for e in range(moe.experts.num_experts):
        out += weights[:, e : e + 1] * moe.experts.forward_expert(e, x)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=RESULTS / "moe_dispatch.json")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)

    moe = MoE(args.d_model, args.hidden, args.experts, args.k).eval()
    x = torch.randn(args.tokens, args.d_model)
    with torch.inference_mode():
        routing = moe.router(x)
        plan = dispatch(routing)
        counts = plan.counts.tolist()
        groups = [g.contiguous() for g in x.index_select(0, plan.token_ids).split(counts)]
        dense_weights = combine_weights(routing)
        ours = moe.layer(x, routing).output
        for name, other in {
            "naive": naive_masked(moe, x, dense_weights),
            "dense": dense_moe(moe.experts, x, dense_weights),
        }.items():
            if not torch.allclose(ours, other, atol=1e-4, rtol=1e-4):
                raise RuntimeError(f"{name} differs from ours by {(ours - other).abs().max().item()}")

    def ideal() -> list[torch.Tensor]:
        return [moe.experts.forward_expert(e, g) for e, g in enumerate(groups) if g.shape[0]]

    fns = {
        "ours": lambda: moe.layer(x, routing),
        "ideal": ideal,
        "naive": lambda: naive_masked(moe, x, dense_weights),
        "dense": lambda: dense_moe(moe.experts, x, dense_weights),
        "ours_with_router": lambda: moe(x),
    }
    m = compare(fns, threads=THREADS, min_run_time=args.min_run_time, rounds=args.rounds, warmup=2)
    rows = plan.token_ids.numel()
    record = {
        "tokens": args.tokens,
        "d_model": args.d_model,
        "hidden": args.hidden,
        "experts": args.experts,
        "k": args.k,
        **{k: m[k].median_ms for k in VARIANTS},
        "ours/ideal": ratio(m, "ours", "ideal"),
        "naive/ideal": ratio(m, "naive", "ideal"),
        "dense/ideal": ratio(m, "dense", "ideal"),
        "iqr_ms": {k: m[k].iqr_ms for k in VARIANTS},
        "tokens_per_expert": counts,
        "flops_ours": moe.experts.flops(rows),
        "flops_dense": moe.experts.flops(args.tokens * args.experts),
    }
    meta = {
        "threads": THREADS,
        "rounds": args.rounds,
        "min_run_time_s": args.min_run_time,
        "timed": "torch.inference_mode, one fixed top-k routing (router excluded except in ours_with_router)",
    }
    write_json(args.out, [record], meta)
    columns = ["tokens", *VARIANTS, "ours/ideal", "naive/ideal", "dense/ideal"]
    table = markdown_table([record], columns, ".3g")
    args.out.with_suffix(".md").write_text(
        f"Median ms, {args.experts} experts, top-{args.k}, {args.tokens} tokens, d_model "
        f"{args.d_model}, hidden {args.hidden}, 2 threads "
        "(`OMP_NUM_THREADS=2 .venv/bin/python benchmarks/moe_dispatch.py`)\n\n" + table + "\n"
    )
    print(table)


if __name__ == "__main__":
    main()
