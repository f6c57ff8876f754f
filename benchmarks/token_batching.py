"""Token pruning, the mechanism alone: what a DeiT-Tiny costs when every sample keeps its own
number of tokens, and how well each way of batching ragged token counts turns the FLOPs
saved into time.

Layout: `deit_tiny_patch16_224` (random weights, eval mode, float32, 224x224: 196 patch
tokens + the class token, 12 blocks of width 192, 3 heads). Tokens are pruned at three
stages, before blocks 3, 6 and 9 (DynamicViT's layout); the class token is never pruned.

Keep decisions (seeded, drawn once per keep ratio `r` and batch size, before timing):

- `varying`: each sample draws its own ratio per stage, uniform in `[r - 0.15, r + 0.15]`
  (clipped to [0.05, 1]), and keeps `ceil(ratio * n)` of the `n` patch tokens entering the
  stage (at least 1), the best of fresh uniform random scores: counts are multiplicative
  and differ within the batch (e.g. r = 0.7: 70/49/34% of the patches on average);
- `equal`: every sample keeps `TokenPolicy(keep_ratio=r)`'s counts, `ceil(r * n)` per stage
  (138/97/68 of 196 for 0.7, 98/49/25 for 0.5). The three strategies are then the same
  dense computation: the reference row.

Timed cases, per keep ratio (0.7, 0.5) and batch size (1, 64), each `embed -> blocks (with
the pruning gathers between stages, `RaggedTokens.select`) -> norm + head of the class
token`:

- `pad`, `pack`, `bucket` (`dynamicnets.layers.token_batching.run_blocks`) on the
  `varying` and the `equal` decisions;
- `ideal` (with `varying`): a static network of the executed size: every sample keeps the
  batch's mean count (rounded) at every stage, run dense;
- `static`: the whole DeiT-Tiny (`forward_features` + `forward_head`), once per batch size.

Correctness before timing: every pruned case's logits must equal a per-sample reference
(each sample alone, its own tokens, dense blocks) within atol 1e-4, and `FlopCounterMode`
(the library's counter, fused attention included) must count exactly the FLOPs the record
reports (`executed_flops`); otherwise the script stops naming the case.

Figures: `flops` is the mean per-sample cost of the kept tokens (patch embedding + every
block on the sample's own token count + head); `executed_flops` what the strategy runs
(pad pays the longest sample's tokens); `speedup_flops = static_flops / flops`;
`speedup_measured` the median over rounds of `static_ms / ms` of the same round;
`efficiency = speedup_measured / speedup_flops`. Target: efficiency >= 0.85 at batch 64 and
>= 0.9 at batch 1 for the best strategy (on `varying` decisions).

A second table times the attention alone (the only part where `pack` has choices), on the
query/key/value rows of the batch's `varying` tokens at each stage: `per_length` (one fused
call per distinct length: the library's `pack`), `per_sample` (one call per sample),
`padded` (padded to the longest, key mask), `nested` (one call on nested jagged tensors,
`torch.nested.nested_tensor_from_jagged`, outside inference mode as they require) and
`block_diagonal` (one call on all `T` rows with a `T x T` block-diagonal mask; only where
`T <= --block-diagonal-max-rows`).

Timing: `torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time=...)`, fixed threads
(`--threads`, default 1), `torch.inference_mode()`, `--warmup` untimed calls of every case,
then `--rounds` rounds, each timing every case of a batch size once in the same order.

Writes `--out` (JSON: `meta` + one record per case: `table` "model" or "attention") and
`--markdown`.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/token_batching.py
    # quick check of the script itself (a tiny 12-block ViT on 32x32, seconds):
    .venv/bin/python benchmarks/token_batching.py --quick --out /tmp/tb.json --markdown /tmp/tb.md
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dynamicnets.flops import counted_flops
from dynamicnets.inference import TokenPolicy
from dynamicnets.layers.ragged_tokens import RaggedTokens
from dynamicnets.layers.token_batching import executed_flops, length_groups, run_blocks
from dynamicnets.models import create_model
from dynamicnets.models.transformers.vit import VisionTransformer
from dynamicnets.profiling.allocator import keep_freed_memory
from dynamicnets.profiling.latency import compare
from dynamicnets.profiling.report import atomic_write, run_metadata, write_json

RESULTS = Path(__file__).resolve().parent / "results"
PRUNE_BEFORE = (3, 6, 9)
KEEP_RATIOS = (0.7, 0.5)
BATCH_SIZES = (1, 64)
SPREAD = 0.15
MIN_RATIO = 0.05
STRATEGIES = ("pad", "pack", "bucket")
ATTENTION_VARIANTS = ("per_length", "per_sample", "padded", "nested", "block_diagonal")
ATOL = 1e-4
TARGETS = {1: 0.9, 64: 0.85}  # efficiency of the best strategy, by batch size


@dataclass(frozen=True)
class Decisions:
    """Which patch tokens every sample keeps at each pruning stage.

    Attributes:
        kind: "varying", "equal" or "ideal".
        masks: one `(B, P)` bool per stage over the `P` patch positions, nested (a stage
            keeps a subset of the previous stage's tokens).
    """

    kind: str
    masks: tuple[Tensor, ...]

    def counts(self) -> list[list[int]]:
        """Tokens (class token included) per sample in each segment of blocks."""
        batch, patches = self.masks[0].shape
        return [[1 + patches] * batch] + [(1 + m.sum(1)).tolist() for m in self.masks]

    def rows(self) -> list[Tensor]:
        """Per stage, the `(T,)` bool over the rows of the ragged batch entering it."""
        batch = self.masks[0].shape[0]
        cls = torch.ones(batch, 1, dtype=torch.bool)
        previous = torch.ones_like(self.masks[0])
        rows = []
        for mask in self.masks:
            rows.append(torch.cat([cls, mask], 1)[torch.cat([cls, previous], 1)])
            previous = mask
        return rows


def keep_top(scores: Tensor, alive: Tensor, counts: list[int]) -> Tensor:
    """`(B, P)` bool: per sample the `counts[i]` best `scores` among the `alive` tokens."""
    order = scores.masked_fill(~alive, -math.inf).argsort(dim=1, descending=True, stable=True)
    chosen = torch.zeros_like(alive)
    for i, count in enumerate(counts):
        chosen[i, order[i, :count]] = True
    return chosen


def draw_decisions(batch: int, patches: int, ratio: float, stages: int, seed: int
                   ) -> tuple[Decisions, Decisions, Decisions]:
    """The `varying`, `equal` and `ideal` decisions of one keep ratio and batch size."""
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.rand(batch, patches, generator=gen) for _ in range(stages)]
    ratios = (ratio + SPREAD * (2 * torch.rand(batch, stages, generator=gen, dtype=torch.float64) - 1))
    ratios = ratios.clamp(MIN_RATIO, 1.0)
    policy = TokenPolicy(keep_ratio=ratio)
    alive = {kind: torch.ones(batch, patches, dtype=torch.bool) for kind in ("varying", "equal", "ideal")}
    masks: dict[str, list[Tensor]] = {kind: [] for kind in alive}
    for s in range(stages):
        available = alive["varying"].sum(1).double()
        varying = torch.ceil(available * ratios[:, s] - 1e-9).clamp(min=1).long().tolist()
        equal_scores = scores[s].masked_fill(~alive["equal"], -math.inf)
        equal = policy.keep_counts(equal_scores, s, stages).tolist()
        mean = max(1, round(sum(varying) / batch))
        for kind, counts in (("varying", varying), ("equal", equal), ("ideal", [mean] * batch)):
            alive[kind] = keep_top(scores[s], alive[kind], counts)
            masks[kind].append(alive[kind])
    return tuple(Decisions(kind, tuple(masks[kind])) for kind in ("varying", "equal", "ideal"))


def segments_of(model: VisionTransformer) -> list[list[torch.nn.Module]]:
    """The blocks between pruning stages: `[0:3], [3:6], [6:9], [9:]`."""
    bounds = (0, *PRUNE_BEFORE, model.depth)
    return [list(model.blocks[a:b]) for a, b in zip(bounds, bounds[1:])]


def pruned_logits(model: VisionTransformer, segments: list, x: Tensor, rows: list[Tensor],
                  strategy: str) -> Tensor:
    """Embed, run each segment on the ragged batch with `strategy`, gather the kept rows
    between segments, classify the class token: `(B, num_classes)`."""
    ragged = RaggedTokens.from_dense(model.embed(x))
    for s, blocks in enumerate(segments):
        if s:
            ragged = ragged.select(rows[s - 1])
        ragged = run_blocks(blocks, ragged, strategy)
    return model.head(model.norm(ragged.first_tokens()))


def static_logits(model: VisionTransformer, x: Tensor) -> Tensor:
    return model.forward_head(model.forward_features(x))


def reference_logits(model: VisionTransformer, segments: list, x: Tensor, decisions: Decisions) -> Tensor:
    """Each sample alone: dense blocks on its own kept tokens, the gathers by position."""
    out = []
    for i in range(x.shape[0]):
        tokens = model.embed(x[i:i + 1])
        positions = torch.arange(tokens.shape[1])
        for s, blocks in enumerate(segments):
            if s:
                kept = torch.cat([torch.tensor([0]), 1 + decisions.masks[s - 1][i].nonzero().flatten()])
                where = torch.isin(positions, kept)
                tokens, positions = tokens[:, where], positions[where]
            for block in blocks:
                tokens = block(tokens)
        out.append(model.head(model.norm(tokens[:, 0])))
    return torch.cat(out)


def per_sample_flops(model: VisionTransformer, segments: list, counts: list[list[int]], strategy: str
                     ) -> list[int]:
    """Per-sample FLOPs of `pruned_logits` with `strategy` (`pack` = each sample's own tokens)."""
    batch = len(counts[0])
    total = [model.patch_embed.flops() + model.head_flops()] * batch
    for blocks, lengths in zip(segments, counts):
        total = [t + f for t, f in zip(total, executed_flops(blocks, lengths, strategy))]
    return total


@dataclass
class Case:
    """One timed callable of the model table."""

    key: str
    strategy: str
    decisions: str
    keep_ratio: float | None
    run: Callable[[], Any]
    flops: float
    executed_flops: float
    tokens: list[dict[str, float]]
    distinct_lengths: list[int]


def token_summary(counts: list[list[int]]) -> list[dict[str, float]]:
    return [{"mean": statistics.fmean(c), "min": min(c), "max": max(c)} for c in counts]


def build_model_cases(model: VisionTransformer, x: Tensor, batch: int, ratios: tuple[float, ...],
                      seed: int) -> tuple[list[Case], dict[str, Decisions]]:
    """The static case first, then per keep ratio the strategies on varying and equal
    decisions and the ideal case; checks every pruned case against the per-sample reference
    and its FLOPs against the counter."""
    segments = segments_of(model)
    patches = model.patch_embed.num_patches
    static_flops = float(model.flops())
    full = [[1 + patches] * batch] * len(segments)
    cases = [Case("static", "static", "none", None, lambda: static_logits(model, x), static_flops,
                  static_flops, token_summary(full), [1] * len(segments))]
    drawn: dict[str, Decisions] = {}
    for ratio in ratios:
        varying, equal, ideal = draw_decisions(batch, patches, ratio, len(PRUNE_BEFORE), seed + round(100 * ratio))
        drawn[f"{ratio:g}"] = varying
        for decisions, strategies in ((varying, STRATEGIES), (equal, STRATEGIES), (ideal, ("ideal",))):
            counts, rows = decisions.counts(), decisions.rows()
            kept = statistics.fmean(per_sample_flops(model, segments, counts, "pack"))
            reference = reference_logits(model, segments, x, decisions)
            for strategy in strategies:
                run_as = "bucket" if strategy == "ideal" else strategy
                key = f"{strategy}_{decisions.kind}_{ratio:g}"

                def run(rows=rows, run_as=run_as) -> Tensor:
                    return pruned_logits(model, segments, x, rows, run_as)

                executed = per_sample_flops(model, segments, counts, run_as)
                check(key, batch, run, reference, sum(executed))
                cases.append(Case(key, strategy, decisions.kind, ratio, run, kept,
                                  statistics.fmean(executed), token_summary(counts),
                                  [len(length_groups(c)) for c in counts]))
    return cases, drawn


def check(key: str, batch: int, run: Callable[[], Tensor], reference: Tensor, flops: int) -> None:
    """Stop the script when a case's logits or counted FLOPs disagree."""
    out = run()
    diff = float((out - reference).abs().max().detach())
    if not math.isfinite(diff) or diff > ATOL:
        raise SystemExit(f"token_batching: {key} at batch {batch} differs from the per-sample reference "
                         f"by {diff:.3g} (> atol {ATOL}); not timing")
    counted = counted_flops(run)
    if counted != flops:
        raise SystemExit(f"token_batching: {key} at batch {batch}: the counter sees {counted} FLOPs, the "
                         f"record would say {flops}; not timing")


# --- the attention alone -----------------------------------------------------------------------


def attention_variants(qkv: Tensor, lengths: list[int], max_rows: int) -> dict[str, Callable[[], Tensor]]:
    """Ways to compute each sample's self-attention on packed `qkv (T, 3, H, d)`; each returns
    `(T, H * d)`. `nested` needs tensors made outside inference mode and runs outside it."""
    rows, _, heads, head_dim = qkv.shape
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    groups = []
    for length, samples in length_groups(lengths).items():
        index = torch.cat([torch.arange(int(offsets[s]), int(offsets[s + 1])) for s in samples])
        groups.append((length, index, len(samples)))
    longest = max(lengths)
    valid = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    sample_ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    q_nt, k_nt, v_nt = (t.contiguous() for t in qkv.unbind(1))

    def dense(part: Tensor, mask: Tensor | None = None) -> Tensor:  # (b, L, 3, H, d) -> (b, L, H*d)
        q, k, v = part.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(part.shape[0], part.shape[1], heads * head_dim)

    def per_length() -> Tensor:
        out = qkv.new_empty(rows, heads * head_dim)
        for length, index, count in groups:
            part = qkv.index_select(0, index).reshape(count, length, 3, heads, head_dim)
            out.index_copy_(0, index, dense(part).reshape(-1, heads * head_dim))
        return out

    def per_sample() -> Tensor:
        return torch.cat([dense(part[None])[0] for part in qkv.split(lengths)])

    def padded() -> Tensor:
        buffer = qkv.new_zeros(len(lengths), longest, 3, heads, head_dim)
        buffer[valid] = qkv
        return dense(buffer, valid[:, None, None, :])[valid]

    def nested() -> Tensor:
        with torch.inference_mode(False), torch.no_grad():
            q, k, v = (torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2)
                       for t in (q_nt, k_nt, v_nt))
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
            return out.values().reshape(rows, heads * head_dim)

    def block_diagonal() -> Tensor:
        mask = sample_ids[:, None] == sample_ids[None, :]
        return dense(qkv[None], mask)[0]

    fns = {"per_length": per_length, "per_sample": per_sample, "padded": padded, "nested": nested}
    if rows <= max_rows:
        fns["block_diagonal"] = block_diagonal
    return fns


def build_attention_cases(model: VisionTransformer, batch: int, decisions: Decisions, seed: int,
                          max_rows: int) -> tuple[dict[str, Callable[[], Tensor]], list[dict[str, Any]]]:
    """Timed callables and record stubs of the attention table for one batch's varying decisions."""
    heads, head_dim = model.blocks[0].attn.num_heads, model.blocks[0].attn.head_dim
    gen = torch.Generator().manual_seed(seed)
    fns, stubs = {}, []
    for segment, lengths in enumerate(decisions.counts()):
        qkv = torch.randn(sum(lengths), 3, heads, head_dim, generator=gen)
        variants = attention_variants(qkv, lengths, max_rows)
        reference = variants["per_sample"]()
        for name, fn in variants.items():
            diff = float((fn() - reference).abs().max())
            if diff > ATOL:
                raise SystemExit(f"token_batching: attention variant {name} differs by {diff:.3g}; not timing")
            key = f"attention_{name}_{segment}"
            fns[key] = fn
            stubs.append({"key": key, "variant": name, "segment": segment, "rows": sum(lengths),
                          "distinct_lengths": len(length_groups(lengths)),
                          "mean_tokens": statistics.fmean(lengths), "max_diff": diff})
    return fns, stubs


# --- timing and reporting ----------------------------------------------------------------------


def time_round_robin(fns: dict[str, Callable[[], Any]], threads: int, min_run_time: float,
                     warmup: int, rounds: int) -> dict[str, list[float]]:
    """Median seconds per call of each callable, per round (`profiling.latency.compare`:
    warm-up, then round-robin in the same order)."""
    measured = compare(fns, threads=threads, min_run_time=min_run_time, warmup=warmup, rounds=rounds)
    return {name: [ms / 1e3 for ms in m.round_ms] for name, m in measured.items()}


def model_records(model_name: str, batch: int, cases: list[Case], timed: dict[str, list[float]],
                  machine: dict[str, Any]) -> list[dict[str, Any]]:
    static = cases[0]
    static_times = timed[static.key]
    records = []
    for case in cases:
        times = timed[case.key]
        ratios = [s / t for s, t in zip(static_times, times)]
        speedup_flops = static.flops / case.flops
        measured = statistics.median(ratios)
        records.append({
            "table": "model", "model": model_name, "strategy": case.strategy, "decisions": case.decisions,
            "keep_ratio": case.keep_ratio, "batch_size": batch, "speedup_flops": speedup_flops,
            "speedup_measured": measured, "efficiency": measured / speedup_flops,
            "ms": statistics.median(times) * 1e3, "static_ms": statistics.median(static_times) * 1e3,
            "flops": case.flops, "executed_flops": case.executed_flops, "static_flops": static.flops,
            "tokens": case.tokens, "distinct_lengths": case.distinct_lengths, "round_speedups": ratios,
            "prune_before": list(PRUNE_BEFORE), **machine,
        })
    return records


def attention_records(batch: int, stubs: list[dict[str, Any]], timed: dict[str, list[float]],
                      machine: dict[str, Any]) -> list[dict[str, Any]]:
    records = []
    for stub in stubs:
        baseline = timed[f"attention_per_length_{stub['segment']}"]
        times = timed[stub["key"]]
        records.append({
            "table": "attention", "batch_size": batch, **{k: v for k, v in stub.items() if k != "key"},
            "ms": statistics.median(times) * 1e3,
            "relative_to_per_length": statistics.median(t / b for t, b in zip(times, baseline)), **machine,
        })
    return records


def stage_tokens(record: dict[str, Any]) -> str:
    return "/".join(f"{t['mean']:.0f}" for t in record["tokens"])


def markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    model = next(r for r in records if r["table"] == "model")
    lines = [
        "# Token pruning: batching ragged token counts",
        "",
        f"`{meta['command']}` — {meta['cpu_model']}, torch {meta['torch_version']}, {meta['threads']} "
        f"thread(s), {meta['rounds']} interleaved rounds of {meta['min_run_time_s']} s. `{model['model']}` "
        f"(random weights), pruned before blocks {', '.join(map(str, PRUNE_BEFORE))}; `varying`: each "
        f"sample's ratio per stage uniform in [r - {SPREAD}, r + {SPREAD}]; `equal`: `TokenPolicy(keep_ratio=r)`; "
        "`ideal`: every sample at the batch's mean count, dense. Tokens: mean per segment (class token "
        "included). Speedups are over the static model timed in the same rounds; efficiency = measured / "
        "FLOPs speedup.",
        "",
    ]
    for batch in sorted({r["batch_size"] for r in records if r["table"] == "model"}):
        rows = [r for r in records if r["table"] == "model" and r["batch_size"] == batch]
        static = next(r for r in rows if r["strategy"] == "static")
        lines += [f"## batch {batch}", "",
                  f"static: {static['ms']:.4g} ms per batch, {static['flops'] / 1e9:.4g} GFLOPs per sample", "",
                  "| keep ratio | decisions | strategy | tokens per segment | distinct lengths | FLOPs speedup "
                  "| executed / kept FLOPs | measured speedup | efficiency | ms |",
                  "|--:|---|---|---|---|--:|--:|--:|--:|--:|"]
        for r in rows:
            if r["strategy"] == "static":
                continue
            lines.append(
                f"| {r['keep_ratio']:g} | {r['decisions']} | {r['strategy']} | {stage_tokens(r)} | "
                f"{'/'.join(map(str, r['distinct_lengths']))} | {r['speedup_flops']:.2f}× | "
                f"{r['executed_flops'] / r['flops']:.3f} | {r['speedup_measured']:.2f}× | "
                f"{r['efficiency']:.2f} | {r['ms']:.4g} |")
        lines.append("")
        target = TARGETS.get(batch)
        for ratio in sorted({r["keep_ratio"] for r in rows if r["keep_ratio"] is not None}, reverse=True):
            contenders = [r for r in rows if r["keep_ratio"] == ratio and r["decisions"] == "varying"]
            best = max(contenders, key=lambda r: r["efficiency"])
            verdict = "" if target is None else (
                f" (target >= {target}: {'met' if best['efficiency'] >= target else 'not met'})")
            lines.append(f"- keep ratio {ratio:g}, varying counts: best **{best['strategy']}**, efficiency "
                         f"{best['efficiency']:.2f}{verdict}.")
        lines.append("")
    attention = [r for r in records if r["table"] == "attention"]
    if attention:
        lines += ["## attention alone (the choices of `pack`), varying counts of keep ratio "
                  f"{meta['attention_keep_ratio']:g}", "",
                  "Median ms per call (relative to `per_length`, the library's `pack`).", ""]
        header = ["batch", "segment", "rows", "distinct lengths", *ATTENTION_VARIANTS]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["--:"] * len(header)) + "|"]
        for batch in sorted({r["batch_size"] for r in attention}):
            for segment in sorted({r["segment"] for r in attention if r["batch_size"] == batch}):
                at = {r["variant"]: r for r in attention if r["batch_size"] == batch and r["segment"] == segment}
                first = at["per_length"]
                cells = [str(batch), str(segment), str(first["rows"]), str(first["distinct_lengths"])]
                cells += [f"{at[v]['ms']:.3g} ({at[v]['relative_to_per_length']:.2f})" if v in at else "n/a"
                          for v in ATTENTION_VARIANTS]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def quick_model() -> VisionTransformer:
    """A tiny 12-block ViT on 32x32 images (64 patches) with the same pruning layout."""
    return VisionTransformer(img_size=32, patch_size=4, num_classes=10, embed_dim=32, depth=12, num_heads=2,
                             mlp_ratio=2.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per case per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--keep-ratios", type=float, nargs="+", default=list(KEEP_RATIOS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--attention-batch-sizes", type=int, nargs="*", default=[8, 64],
                        help="batch sizes of the attention table (none: skip it)")
    parser.add_argument("--block-diagonal-max-rows", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a tiny 12-block ViT on 32x32, batches 1 4, attention batch 4, 2 rounds of "
                             "2 ms, 1 warm-up: checks the script")
    parser.add_argument("--out", type=Path, default=RESULTS / "token_batching.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "token_batching.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.attention_batch_sizes = [1, 4], [4]
        args.rounds, args.min_run_time, args.warmup = 2, 0.002, 1
    for ratio in args.keep_ratios:
        if not 0 < ratio <= 1:
            parser.error(f"--keep-ratios must lie in (0, 1], got {ratio}")
    if min(args.batch_sizes + args.attention_batch_sizes + [1]) < 1:
        parser.error("batch sizes must be >= 1")
    if args.threads < 1 or args.rounds < 1 or args.min_run_time <= 0 or args.warmup < 0:
        parser.error("--threads and --rounds must be >= 1, --min-run-time > 0, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    print(f"allocator: {keep_freed_memory()}")
    try:
        torch.manual_seed(args.seed)
        model_name = "quick_vit_12x32" if args.quick else "deit_tiny_patch16_224"
        model = (quick_model() if args.quick else create_model(model_name)).eval()
        machine_all = run_metadata()
        machine = {k: machine_all[k] for k in ("torch_version", "threads", "cpu_model")}
        records = []
        for batch in args.batch_sizes:
            gen = torch.Generator().manual_seed(args.seed + batch)
            x = torch.randn(batch, *model.default_input_shape, generator=gen)
            with torch.inference_mode():
                cases, _ = build_model_cases(model, x, batch, tuple(args.keep_ratios), args.seed + batch)
            print(f"# batch {batch}: every pruned case equals the per-sample reference and counts its FLOPs; "
                  f"timing {len(cases)} cases", flush=True)
            timed = time_round_robin({c.key: c.run for c in cases}, args.threads, args.min_run_time,
                                     args.warmup, args.rounds)
            records += model_records(model_name, batch, cases, timed, machine)
        attention_ratio = args.keep_ratios[0]
        for batch in args.attention_batch_sizes:
            patches = model.patch_embed.num_patches
            varying, _, _ = draw_decisions(batch, patches, attention_ratio, len(PRUNE_BEFORE),
                                           args.seed + batch + round(100 * attention_ratio))
            fns, stubs = build_attention_cases(model, batch, varying, args.seed, args.block_diagonal_max_rows)
            print(f"# attention alone, batch {batch}: {len(fns)} cases", flush=True)
            timed = time_round_robin(fns, args.threads, min(args.min_run_time, 0.5), args.warmup, args.rounds)
            records += attention_records(batch, stubs, timed, machine)
        given = sys.argv[1:] if argv is None else argv
        meta = {"threads": args.threads, "rounds": args.rounds, "min_run_time_s": args.min_run_time,
                "warmup": args.warmup, "seed": args.seed, "quick": args.quick, "model": model_name,
                "command": " ".join(["python benchmarks/token_batching.py", *given]),
                "prune_before": list(PRUNE_BEFORE), "spread": SPREAD, "atol": ATOL,
                "attention_keep_ratio": attention_ratio,
                "timed": "embed + blocks + pruning gathers + norm/head of the class token, "
                         "torch.inference_mode, eval mode, float32"}
        write_json(args.out, records, meta)
        text = markdown(records, {**machine_all, **meta})
        atomic_write(args.markdown, text + "\n")
        print(text)
    finally:
        torch.set_num_threads(previous_threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
