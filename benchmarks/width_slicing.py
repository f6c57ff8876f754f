"""DS-Net Table 1 on this CPU: ResNet-50 (ImageNet layout, 224x224) run at 25% width.

Five ways to get the 0.25x network's logits, timed interleaved in the same run
(`dynamicnets.profiling.latency.compare`, 2 threads, inference mode):

- `full`: the slimmable ResNet-50 at width 1.0 (what a non-dynamic network costs);
- `masking`: full compute, then every layer's channels beyond 25% multiplied by zero;
- `indexing`: the 25% weights gathered with `index_select` on every call;
- `slicing`: our compact path, weight *views* `weight[:out, :in]` (no cache);
- `slicing_cached`: the same with the eval-mode cache of contiguous per-width copies;
- `ideal`: a static ResNet-50 0.25x built as its own model (`width_mult=0.25`).

Every variant times the network itself (`forward_logits`), not the per-call FLOPs
bookkeeping of `forward`. Before timing, masking/indexing/slicing/cached outputs are
checked equal. Writes `benchmarks/results/width_slicing.json` (one record per batch
size: `batch_size, full, masking, indexing, slicing, slicing_cached, ideal` in median ms,
the ratios, FLOPs) and `width_slicing.md`. `--channels-last` runs every variant in NHWC
(write it elsewhere with `--out`).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/width_slicing.py
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from dynamicnets.layers.slimmable import build_slice_cache, set_execution
from dynamicnets.models.width.slimmable_resnet import slimmable_resnet50
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.report import markdown_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"
WIDTH = 0.25
THREADS = 2
VARIANTS = ("full", "masking", "indexing", "slicing", "slicing_cached", "ideal")


def build_variants(
    seed: int = 0, memory_format: torch.memory_format = torch.contiguous_format
) -> dict[str, torch.nn.Module]:
    """One eval-mode network per variant (the dynamic ones share the same weights)."""
    torch.manual_seed(seed)
    slim = slimmable_resnet50(widths=(WIDTH, 1.0)).eval().to(memory_format=memory_format)
    masked = set_execution(copy.deepcopy(slim), "masked")
    indexed = set_execution(copy.deepcopy(slim), "indexed")
    cached = build_slice_cache(copy.deepcopy(slim), [WIDTH])
    ideal = slimmable_resnet50(width_mult=WIDTH, widths=(1.0,)).eval()
    ideal = ideal.to(memory_format=memory_format)
    return {"slim": slim, "masked": masked, "indexed": indexed, "cached": cached, "ideal": ideal}


def check_equal(nets: dict[str, torch.nn.Module], x: torch.Tensor) -> float:
    """Largest difference between the 25% logits of masking/indexing/cache and slicing."""
    with torch.inference_mode():
        ref = nets["slim"].forward_logits(x, WIDTH)
        worst = 0.0
        for key in ("masked", "indexed", "cached"):
            out = nets[key].forward_logits(x, WIDTH)
            diff = (out - ref).abs().max().item()
            if not torch.allclose(out, ref, atol=1e-4, rtol=1e-4):
                raise RuntimeError(f"{key} differs from slicing by {diff}")
            worst = max(worst, diff)
    return worst


def run(
    batch_sizes: list[int], rounds: int, min_run_time: float, channels_last: bool
) -> list[dict]:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    nets = build_variants(memory_format=layout)
    shape = (3, 224, 224)
    worst = check_equal(nets, torch.randn(2, *shape).contiguous(memory_format=layout))
    print(f"masking/indexing/cache equal slicing (max |diff| {worst:.2e})")
    records = []
    for b in batch_sizes:
        x = torch.randn(b, *shape).contiguous(memory_format=layout)
        fns = {
            "full": lambda: nets["slim"].forward_logits(x, 1.0),
            "masking": lambda: nets["masked"].forward_logits(x, WIDTH),
            "indexing": lambda: nets["indexed"].forward_logits(x, WIDTH),
            "slicing": lambda: nets["slim"].forward_logits(x, WIDTH),
            "slicing_cached": lambda: nets["cached"].forward_logits(x, WIDTH),
            "ideal": lambda: nets["ideal"].forward_logits(x),
        }
        m = compare(fns, threads=THREADS, min_run_time=min_run_time, rounds=rounds, warmup=2)
        record = {
            "batch_size": b,
            "channels_last": channels_last,
            **{k: m[k].median_ms for k in VARIANTS},
        }
        record.update(
            {
                "slicing/ideal": ratio(m, "slicing", "ideal"),
                "slicing_cached/ideal": ratio(m, "slicing_cached", "ideal"),
                "masking/full": ratio(m, "masking", "full"),
                "indexing/ideal": ratio(m, "indexing", "ideal"),
                "iqr_ms": {k: m[k].iqr_ms for k in VARIANTS},
                "flops_full": nets["slim"].flops(shape, 1.0),
                "flops_width": nets["slim"].flops(shape, WIDTH),
                "flops_ideal": nets["ideal"].flops(shape),
            }
        )
        records.append(record)
        ratios = ["slicing/ideal", "slicing_cached/ideal"]
        print(markdown_table([record], ["batch_size", *VARIANTS, *ratios], ".3g"))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--channels-last", action="store_true", help="NHWC activations and weights")
    parser.add_argument("--out", type=Path, default=RESULTS / "width_slicing.json")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    records = run(batch_sizes, args.rounds, args.min_run_time, args.channels_last)
    meta = {
        "threads": THREADS,
        "width": WIDTH,
        "model": "ResNet-50 ImageNet layout, 3x224x224, 1000 classes",
        "rounds": args.rounds,
        "min_run_time_s": args.min_run_time,
        "timed": "forward_logits (the network), torch.inference_mode, eval mode",
        "channels_last": args.channels_last,
    }
    write_json(args.out, records, meta)
    columns = ["batch_size", *VARIANTS, "slicing/ideal", "slicing_cached/ideal", "masking/full"]
    table = markdown_table(records, columns, ".3g")
    args.out.with_suffix(".md").write_text(
        "Median ms per batch, ResNet-50 at 25% width, 2 threads "
        "(`OMP_NUM_THREADS=2 .venv/bin/python benchmarks/width_slicing.py`)\n\n" + table + "\n"
    )
    print(table)


if __name__ == "__main__":
    main()
