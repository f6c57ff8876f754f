"""Token pruning on a GPU, eager and compiled: does the FLOPs saving reach the clock once
launches stop dominating?

At a fixed keep ratio DynamicViT and EViT keep the same number of tokens for every image, so
their compact forward has static shapes and `torch.compile(mode="reduce-overhead")` (inductor
kernels replayed as one CUDA graph) applies to it as to the static ViT. This script times the
shipped `vit_cifar`, `dynamic_vit_cifar` and `evit_cifar` weights (tag `cifar10_mix`) eager and
compiled, all six interleaved in one `compare` run per batch size, on random inputs (the cost
of a fixed keep ratio does not depend on the image), after checking that each compiled model's
logits match its eager ones. Speedups are the ViT's time over the pruned model's under the
same mode.

    python benchmarks/gpu_compiled_tokens.py --device cuda --out OUT/compiled_tokens.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import dynamicnets as dn
from dynamicnets.profiling.latency import compare
from dynamicnets.profiling.report import markdown_table, write_json

MODELS = ("vit_cifar", "dynamic_vit_cifar", "evit_cifar")
TAG = "cifar10_mix"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", default="256,1")
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--mode", default="reduce-overhead", help="torch.compile mode")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    models = {name: dn.create_model(name, pretrained=TAG).eval().to(device) for name in MODELS}
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)).to(device)
        calls, compile_s = {}, {}
        with torch.inference_mode():
            # FLOPs each model reports for what its compact forward executed on x
            flops = {name: float(model(x).flops.double().mean()) for name, model in models.items()}
            for name, model in models.items():
                eager = (lambda m: lambda: m(x).logits)(model)
                compiled_fn = torch.compile((lambda m: lambda t: m(t).logits)(model), mode=args.mode, fullgraph=True)
                start = time.perf_counter()
                for _ in range(3):  # compile, record the graph, replay
                    got = compiled_fn(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                compile_s[name] = time.perf_counter() - start
                torch.testing.assert_close(got.float(), eager().float(), rtol=1e-2, atol=1e-2)
                calls[f"{name}/eager"] = eager
                calls[f"{name}/compiled"] = (lambda f: lambda: f(x))(compiled_fn)
            timed = compare(calls, min_run_time=args.min_run_time)
        for mode in ("eager", "compiled"):
            anchor_ms = timed[f"vit_cifar/{mode}"].median_ms
            for name in MODELS:
                ms = timed[f"{name}/{mode}"].median_ms
                by_flops = flops["vit_cifar"] / flops[name]
                rows.append({"batch_size": batch, "model": name, "mode": mode, "ms_per_batch": ms,
                             "flops": flops[name], "speedup_flops": by_flops, "speedup_measured": anchor_ms / ms,
                             "realized_fraction": anchor_ms / ms / by_flops,
                             "vs_eager_same_model": timed[f"{name}/eager"].median_ms / ms,
                             "compile_seconds": compile_s[name] if mode == "compiled" else None})
        write_json(args.out, rows, meta={"device": str(device), "compile_mode": args.mode,
                                         "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None})
        print(markdown_table([r for r in rows if r["batch_size"] == batch]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
