"""Pixel-level sparse execution, the mechanism alone: what a residual block costs when only
a fraction of its output positions is computed.

Two identity-shortcut residual blocks, eval mode, BatchNorm with non-trivial running
statistics, channels_last float32, random weights:

- `resnet50_bottleneck`: a ResNet-50 stage-1 bottleneck (1x1 256->64, 3x3 64->64, 1x1
  64->256) on a 256-channel 56x56 map; a torchvision-layout block (`conv1/bn1/...`)
  defined in this script (the library's ImageNet ResNet module was not committed when it
  was written);
- `cifar_basic`: the CIFAR `BasicBlock` of `dynamicnets.models.static.resnet_cifar` (two
  3x3 16->16) on a 16-channel 32x32 map.

For each block, batch size (1 and 16) and requested density (10, 25, 50, 75%):

- `dense`: the block itself, every position;
- `masked`: `SparseBranch` with `Execution.MASKED` (`x + m * (block(x) - x)`: dense cost
  plus the mixing; the training path);
- `positions`: `Execution.COMPACT`, `SparseStrategy.POSITIONS` (gathered rows, one GEMM
  per convolution over the batch's active positions);
- `tiles`: `Execution.COMPACT`, `SparseStrategy.TILES`, 8x8 tiles for both blocks
  (gathered tiles with their halo, dense valid convolutions);
- `ideal`: the dense block on a map with the same number of positions: side
  `round(sqrt(density * H * W))`, same batch and channels. What a static network of the
  executed size costs; its FLOPs are exactly `density` of dense (up to rounding of the
  side), while the sparse strategies also pay the dilation of the mask (a 3x3 conv reads
  the neighbours of its outputs) or the tile halos.

Masks. Each strategy is timed on the masks its gate produces:

- `blob` masks (for `positions`, and `masked`): a smooth random field per sample
  (Gaussian noise on a coarse grid, one cell per 8x8 positions, upsampled bilinearly),
  thresholded at the sample's quantile so that exactly `round(density * H * W)` positions
  are active: compact blobs, as a per-position gate on a natural image gives;
- `tile` masks (for `tiles`): the same field averaged per 8x8 tile, the top
  `round(density * tiles)` tiles of each sample active, expanded to their positions (what
  a per-tile gate gives; the executed density is quantized to whole tiles).

The cross cases are timed too and labelled `cross: true`: `positions` on the tile masks
and `tiles` on the blob masks (a blob mask touches more tiles than its density). The
same field, drawn once per block and batch (seeded), is thresholded at every density, so
the masks of one block grow monotonically with the density.

Correctness before timing: every compact case (including the cross cases) runs the very
callable that is timed and must equal `masked` on its mask within atol 1e-4, twice in a
row (the second call checks that the input is restored); otherwise the script stops with
a message naming the block, batch, density, strategy and mask kind.

In-place inputs and the copy. The models run the compact strategies with `inplace=True`
at inference (the block input is an intermediate the block may overwrite: only the
active positions are written, nothing else is copied). Timing repeated in-place calls on
one tensor would feed each call the previous call's output: the work is the same (it
depends on the mask only) but the values drift and can overflow or turn denormal, which
changes CPU timing. So every timed statement, for every strategy including `dense`,
`masked` and `ideal`, is `x.copy_(x0)` followed by the strategy on `x` (`x0` the fixed
input, `x` a buffer of the same shape). The copy alone is timed in the same rounds (for
the full map and for each ideal map), and `time_ms` is the median over rounds of
`(copy + strategy) - copy`. `time_raw_ms` (copy included) and `copy_ms` are in the
records too, and `speedup_measured_raw` (from the raw times: a conservative bound, since
every full-map case pays the same copy). The subtraction assumes the two add up; the copy
leaves `x` in cache the way the layer that produced a block's input would.

Timing: `torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time=...)`, fixed
threads (`--threads`, default 1), `torch.inference_mode()`, `--warmup` untimed calls of
every case first, then `--rounds` rounds, each timing every case of a block and batch once
in the same order (round-robin). `speedup_measured` is the median over rounds of
`dense_time / strategy_time` from the same round (copy subtracted from both);
`speedup_flops` is `dense FLOPs / strategy FLOPs` (per sample: `SparseBranch.flops` for
masked/positions/tiles, `SparseBranch.full_flops` for dense and ideal; 2 per
multiply-add, BN folded, elementwise ops not counted); `efficiency` is
`speedup_measured / speedup_flops`. `executed_density` is the measured fraction of
positions whose block output is written (the mask's mean; 1 for dense; the ideal map's
positions over `H * W` for ideal), `computed_density` the fraction at which the last
convolution is computed (tiles compute whole tiles).

Writes `--out` (JSON: `meta` + one record per block, batch, density, strategy and mask
kind) and `--markdown` (a table per block and batch: rows = density, cells `speedup
(efficiency)`, and which strategy is fastest where).

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/spatial_mechanism.py --threads 1
    # quick check of the script itself (tiny blocks, a few seconds):
    .venv/bin/python benchmarks/spatial_mechanism.py --quick --out /tmp/sm.json --markdown /tmp/sm.md
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamicnets.execution import Execution
from dynamicnets.gates.spatial import expand_tiles
from dynamicnets.layers.sparse_tiles import tile_any, tile_grid
from dynamicnets.layers.spatial_block import SparseBranch, SparseStrategy
from dynamicnets.models.static.resnet_cifar import BasicBlock
from dynamicnets.profiling.allocator import keep_freed_memory
from dynamicnets.profiling.latency import compare
from dynamicnets.profiling.report import atomic_write, run_metadata, write_json

RESULTS = Path(__file__).resolve().parent / "results"
DENSITIES = (0.10, 0.25, 0.50, 0.75)
BATCH_SIZES = (1, 16)
ATOL = 1e-4
FIELD_CELL = 8  # positions per coarse-grid cell of the smooth random field
STRATEGIES = ("masked", "positions", "tiles", "ideal")  # timed per density, besides dense
TABLE_COLUMNS = (  # (strategy, mask kind, column title)
    ("masked", "blob", "masked"),
    ("positions", "blob", "positions"),
    ("tiles", "tile", "tiles"),
    ("ideal", "none", "ideal"),
    ("positions", "tile", "positions on tile masks"),
    ("tiles", "blob", "tiles on blob masks"),
)


class Bottleneck(nn.Module):
    """A ResNet bottleneck with identity shortcut, torchvision layout (`conv1, bn1, conv2,
    bn2, conv3, bn3`, no `downsample`): `relu(x + bn3(conv3(relu(bn2(conv2(relu(bn1(
    conv1(x)))))))))`.

    Args:
        channels: input and output channels `C`.
        mid: channels of the 3x3 convolution.

    Shapes:
        `(B, C, H, W) -> (B, C, H, W)`.
    """

    def __init__(self, channels: int, mid: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        return self.relu(self.bn3(self.conv3(h)) + x)


@dataclass(frozen=True)
class BlockSpec:
    """One benchmarked block: its name, map side, channels and tile size."""

    name: str
    side: int
    channels: int
    mid: int | None  # bottleneck mid channels; None for the basic block
    tile: int

    def build(self) -> nn.Module:
        if self.mid is None:
            return BasicBlock(self.channels, self.channels)
        return Bottleneck(self.channels, self.mid)

    def describe(self) -> str:
        kind = f"bottleneck, mid {self.mid}" if self.mid is not None else "basic block"
        return f"{self.channels} ch, {self.side}x{self.side}, {kind}, tile {self.tile}"


FULL_BLOCKS = (
    BlockSpec("resnet50_bottleneck", side=56, channels=256, mid=64, tile=8),
    BlockSpec("cifar_basic", side=32, channels=16, mid=None, tile=8),
)
QUICK_BLOCKS = (
    BlockSpec("resnet50_bottleneck", side=12, channels=32, mid=8, tile=4),
    BlockSpec("cifar_basic", side=8, channels=8, mid=None, tile=4),
)


def randomize_batchnorm(block: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm of `block` non-trivial affine parameters and running stats."""
    with torch.no_grad():
        for bn in block.modules():
            if isinstance(bn, nn.BatchNorm2d):
                n = bn.num_features
                bn.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                bn.bias.copy_(0.1 * torch.randn(n, generator=generator))
                bn.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                bn.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)


def smooth_field(batch: int, side: int, generator: torch.Generator) -> Tensor:
    """`(B, side, side)`: Gaussian noise on a coarse grid, upsampled bilinearly."""
    coarse = max(2, -(-side // FIELD_CELL))
    noise = torch.randn(batch, 1, coarse, coarse, generator=generator)
    return F.interpolate(noise, size=(side, side), mode="bilinear", align_corners=False)[:, 0]


def top_count(scores: Tensor, count: int) -> Tensor:
    """`(B, N)` scores -> `(B, N)` bool with exactly `count` True per row (the largest)."""
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    return chosen.scatter_(1, scores.topk(count, dim=1).indices, True)


def count_for(density: float, total: int) -> int:
    """`round(density * total)` (halves up), at least 1."""
    return max(1, int(density * total + 0.5))


def blob_mask(field_: Tensor, density: float) -> Tensor:
    """`(B, H, W)` bool: the `round(density * H * W)` highest positions of each sample."""
    batch, height, width = field_.shape
    flat = top_count(field_.flatten(1), count_for(density, height * width))
    return flat.view(batch, height, width)


def tile_mask(field_: Tensor, density: float, tile: int) -> Tensor:
    """`(B, H, W)` bool: the `round(density * tiles)` tiles of highest mean field, expanded."""
    batch, height, width = field_.shape
    rows, cols = tile_grid(height, width, tile)
    pooled = F.avg_pool2d(field_.unsqueeze(1), tile, ceil_mode=True)[:, 0]
    chosen = top_count(pooled.flatten(1), count_for(density, rows * cols)).view(batch, rows, cols)
    return expand_tiles(chosen, tile, height, width)


@dataclass
class Case:
    """One timed callable and what its record needs."""

    key: str
    strategy: str
    mask_kind: str
    density: float | None
    run: Callable[[], Tensor]
    copy_key: str
    flops: float
    executed_density: float
    computed_density: float
    cross: bool = False
    mask: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_cases(spec: BlockSpec, batch: int, densities: tuple[float, ...], seed: int
                ) -> tuple[list[Case], dict[str, Callable[[], Tensor]], SparseBranch, Tensor]:
    """Block, inputs, masks and the timed callables for one block and batch size.

    Returns:
        `(cases, copies, branch, x0)`: the cases (dense first), the copy-alone callables
        by key, the `SparseBranch` of the block, the fixed `(B, C, H, W)` input.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    block = spec.build().eval()
    randomize_batchnorm(block, gen)
    block = block.to(memory_format=torch.channels_last)
    branch = SparseBranch(block, spec.name)
    side, chans = spec.side, spec.channels
    cl = torch.channels_last
    x0 = torch.randn(batch, chans, side, side, generator=gen).relu_().contiguous(memory_format=cl)
    x = torch.empty_like(x0)
    field_ = smooth_field(batch, side, gen)
    full = float(branch.full_flops(side, side))
    copies: dict[str, Callable[[], Tensor]] = {"copy_full": lambda: x.copy_(x0)}

    def dense() -> Tensor:
        x.copy_(x0)
        return block(x)

    cases = [Case("dense", "dense", "none", None, dense, "copy_full", full, 1.0, 1.0)]
    for density in densities:
        tag = f"{density:g}"
        masks = {"blob": blob_mask(field_, density), "tile": tile_mask(field_, density, spec.tile)}

        def masked(mask=masks["blob"]) -> Tensor:
            x.copy_(x0)
            return branch(x, mask, Execution.MASKED)

        blob_density = float(masks["blob"].float().mean())
        cases.append(Case(f"masked_{tag}", "masked", "blob", density, masked, "copy_full",
                          float(branch.flops(masks["blob"], Execution.MASKED).mean()),
                          blob_density, 1.0, mask=masks["blob"]))
        for strategy, kind in (("positions", "blob"), ("tiles", "tile"),
                               ("positions", "tile"), ("tiles", "blob")):
            mask = masks[kind]
            strat = SparseStrategy(strategy)

            def compact(mask=mask, strat=strat) -> Tensor:
                x.copy_(x0)
                return branch(x, mask, Execution.COMPACT, strategy=strat, tile=spec.tile,
                              inplace=True)

            computed = mask if strategy == "positions" else expand_tiles(
                tile_any(mask, spec.tile), spec.tile, side, side)
            flops = branch.flops(mask, Execution.COMPACT, strategy=strat, tile=spec.tile)
            cases.append(Case(f"{strategy}_{kind}_{tag}", strategy, kind, density, compact,
                              "copy_full", float(flops.mean()), float(mask.float().mean()),
                              float(computed.float().mean()),
                              cross=(strategy, kind) in (("positions", "tile"), ("tiles", "blob")),
                              mask=mask))
        small = max(1, round(math.sqrt(density * side * side)))
        y0 = torch.randn(batch, chans, small, small, generator=gen).relu_().contiguous(memory_format=cl)
        y = torch.empty_like(y0)

        def ideal(y=y, y0=y0) -> Tensor:
            y.copy_(y0)
            return block(y)

        copies[f"copy_ideal_{tag}"] = lambda y=y, y0=y0: y.copy_(y0)
        share = small * small / (side * side)
        cases.append(Case(f"ideal_{tag}", "ideal", "none", density, ideal, f"copy_ideal_{tag}",
                          float(branch.full_flops(small, small)), share, share,
                          extra={"ideal_side": small}))
    return cases, copies, branch, x0


def verify(spec: BlockSpec, batch: int, cases: list[Case], branch: SparseBranch, x0: Tensor) -> float:
    """Check every compact case against `masked` on its mask; stop the script on a mismatch.

    Returns:
        The largest absolute difference seen.
    """
    worst = 0.0
    with torch.inference_mode():
        for case in cases:
            if case.strategy not in ("positions", "tiles"):
                continue
            reference = branch(x0.clone(), case.mask, Execution.MASKED)
            for attempt in ("first call", "second call"):
                out = case.run().clone()
                diff = float((out - reference).abs().max())
                if not torch.allclose(out, reference, rtol=0.0, atol=ATOL) or not math.isfinite(diff):
                    raise SystemExit(
                        f"spatial_mechanism: {spec.name}, batch {batch}, density {case.density:g}: "
                        f"strategy {case.strategy!r} on {case.mask_kind} masks differs from masked "
                        f"execution by {diff:.3g} (> atol {ATOL}) on the {attempt}; not timing")
                worst = max(worst, diff)
    return worst


def time_round_robin(fns: dict[str, Callable[[], Any]], threads: int, min_run_time: float,
                     warmup: int, rounds: int) -> dict[str, list[float]]:
    """Median seconds per call of each callable, per round (`profiling.latency.compare`:
    warm-up, then round-robin in the same order)."""
    measured = compare(fns, threads=threads, min_run_time=min_run_time, warmup=warmup, rounds=rounds)
    return {name: [ms / 1e3 for ms in m.round_ms] for name, m in measured.items()}


def records_for(spec: BlockSpec, batch: int, cases: list[Case], timed: dict[str, list[float]],
                machine: dict[str, Any]) -> list[dict[str, Any]]:
    """One result record per case, speedups from the same round, copy subtracted."""
    def net(case: Case) -> list[float]:
        return [raw - copy for raw, copy in zip(timed[case.key], timed[case.copy_key])]

    dense_case = cases[0]
    dense_net, dense_raw = net(dense_case), timed[dense_case.key]
    rows = []
    for case in cases:
        times = net(case)
        if min(times) <= 0:
            print(f"warning: {spec.name} batch {batch} {case.key}: the copy took as long as the "
                  f"whole statement in some round; its speedup is not meaningful", file=sys.stderr)
        ratios = [d / t if t > 0 else math.nan for d, t in zip(dense_net, times)]
        raw_ratios = [d / t for d, t in zip(dense_raw, timed[case.key])]
        speedup_flops = dense_case.flops / case.flops
        measured = statistics.median(ratios)
        rows.append({
            "block": spec.name, "batch_size": batch, "density": case.density,
            "executed_density": case.executed_density, "computed_density": case.computed_density,
            "strategy": case.strategy, "mask_kind": case.mask_kind, "cross": case.cross,
            "flops": case.flops, "speedup_flops": speedup_flops,
            "time_ms": statistics.median(times) * 1e3,
            "speedup_measured": measured, "efficiency": measured / speedup_flops,
            "time_raw_ms": statistics.median(timed[case.key]) * 1e3,
            "copy_ms": statistics.median(timed[case.copy_key]) * 1e3,
            "speedup_measured_raw": statistics.median(raw_ratios),
            "round_speedups": ratios,
            "height": spec.side, "width": spec.side, "channels": spec.channels,
            "mid_channels": spec.mid, "tile": spec.tile, **case.extra, **machine,
        })
    return rows


def percent(value: float) -> str:
    return f"{100 * value:.0f}%" if abs(100 * value - round(100 * value)) < 1e-9 else f"{100 * value:.1f}%"


def markdown(records: list[dict[str, Any]], blocks: tuple[BlockSpec, ...], meta: dict[str, Any]) -> str:
    """Tables per block and batch (rows = density, cells `speedup (efficiency)`)."""
    lines = [
        "# Pixel-level sparse execution: mechanism",
        "",
        f"`{meta['command']}` — {meta['cpu_model']}, torch {meta['torch_version']}, "
        f"{meta['threads']} thread(s), {meta['rounds']} interleaved rounds of "
        f"{meta['min_run_time_s']} s. Cells: measured speedup over the dense block (median over "
        "rounds of same-round ratios, input copy subtracted) and, in parentheses, its "
        "efficiency = measured / FLOPs speedup. `positions` and `masked` run on blob masks, "
        "`tiles` on tile masks; the last two columns are the cross cases.",
        "",
    ]
    for spec in blocks:
        for batch in sorted({r["batch_size"] for r in records if r["block"] == spec.name}):
            rows = [r for r in records if r["block"] == spec.name and r["batch_size"] == batch]
            dense = next(r for r in rows if r["strategy"] == "dense")
            lines += [f"## {spec.name} ({spec.describe()}), batch {batch}", "",
                      f"dense: {dense['time_ms']:.3g} ms per batch, "
                      f"{dense['flops'] / 1e6:.4g} MFLOPs per sample", ""]
            header = ["density", "executed (blob / tile)", *(title for _, _, title in TABLE_COLUMNS)]
            lines += ["| " + " | ".join(header) + " |",
                      "|" + "|".join(["--:"] * len(header)) + "|"]
            wins = {}
            for density in sorted({r["density"] for r in rows if r["density"] is not None}):
                at = {(r["strategy"], r["mask_kind"]): r for r in rows if r["density"] == density}
                cells = [percent(density),
                         f"{percent(at['positions', 'blob']['executed_density'])} / "
                         f"{percent(at['tiles', 'tile']['executed_density'])}"]
                for strategy, kind, _ in TABLE_COLUMNS:
                    r = at[strategy, kind]
                    cells.append(f"{r['speedup_measured']:.2f}× ({r['efficiency']:.2f})")
                lines.append("| " + " | ".join(cells) + " |")
                contenders = {"dense": 1.0, "masked": at["masked", "blob"]["speedup_measured"],
                              "positions": at["positions", "blob"]["speedup_measured"],
                              "tiles": at["tiles", "tile"]["speedup_measured"]}
                wins.setdefault(max(contenders, key=lambda k: contenders[k]), []).append(percent(density))
            summary = "; ".join(f"**{name}** at {', '.join(ds)}" for name, ds in wins.items())
            lines += ["", f"Fastest real strategy (each on its own masks; ideal excluded): {summary}.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per case per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--blocks", nargs="+", default=[b.name for b in FULL_BLOCKS],
                        choices=[b.name for b in FULL_BLOCKS])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="tiny blocks (12x12x32 bottleneck, 8x8x8 basic, tile 4), densities "
                             "0.25 0.5, batches 1 2, 2 rounds of 2 ms, 1 warm-up: checks the script")
    parser.add_argument("--out", type=Path, default=RESULTS / "spatial_mechanism.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "spatial_mechanism.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.densities, args.batch_sizes = [0.25, 0.5], [1, 2]
        args.rounds, args.min_run_time, args.warmup = 2, 0.002, 1
    for density in args.densities:
        if not 0 < density <= 1:
            parser.error(f"--densities must lie in (0, 1], got {density}")
    if args.threads < 1 or args.rounds < 1 or args.min_run_time <= 0 or args.warmup < 0:
        parser.error("--threads and --rounds must be >= 1, --min-run-time > 0, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    catalogue = QUICK_BLOCKS if args.quick else FULL_BLOCKS
    blocks = tuple(b for b in catalogue if b.name in args.blocks)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    print(f"allocator: {keep_freed_memory()}")
    try:
        machine_all = run_metadata()
        machine = {k: machine_all[k] for k in ("torch_version", "threads", "cpu_model")}
        cases_per_batch = 1 + len(args.densities) * (len(STRATEGIES) + 2)
        copies_per_batch = 1 + len(args.densities)
        entries = len(blocks) * len(args.batch_sizes) * (cases_per_batch + copies_per_batch)
        print(f"# {entries} timed callables x {args.rounds} rounds x >= {args.min_run_time} s "
              f"(at least {entries * args.rounds * (args.min_run_time + 0.1) / 60:.1f} min of timing; "
              f"calls slower than --min-run-time add to it)",
              flush=True)
        records = []
        for spec in blocks:
            for batch in args.batch_sizes:
                cases, copies, branch, x0 = build_cases(spec, batch, tuple(args.densities), args.seed)
                worst = verify(spec, batch, cases, branch, x0)
                print(f"# {spec.name} batch {batch}: compact equals masked (max |diff| {worst:.2e}); "
                      f"timing {len(cases) + len(copies)} callables", flush=True)
                fns = {c.key: c.run for c in cases} | copies
                timed = time_round_robin(fns, args.threads, args.min_run_time, args.warmup, args.rounds)
                records += records_for(spec, batch, cases, timed, machine)
        given = sys.argv[1:] if argv is None else argv
        meta = {"threads": args.threads, "rounds": args.rounds, "min_run_time_s": args.min_run_time,
                "warmup": args.warmup, "seed": args.seed, "quick": args.quick,
                "command": " ".join(["python benchmarks/spatial_mechanism.py", *given]),
                "blocks": {b.name: b.describe() for b in blocks}, "atol": ATOL,
                "timed": "x.copy_(x0) + strategy, minus the copy alone (same rounds); "
                         "torch.inference_mode, eval mode, channels_last float32"}
        write_json(args.out, records, meta)
        text = markdown(records, blocks, {**machine_all, **meta})
        atomic_write(args.markdown, text + "\n")
        print(text)
    finally:
        torch.set_num_threads(previous_threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
