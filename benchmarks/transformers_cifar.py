"""Dynamic transformers on CIFAR-10: the static ViT against DynamicViT, EViT, A-ViT and the
early-exit ViT fine-tuned from it: accuracy, mean FLOPs, and what the clock says.

The runs (one schedule for all, stated in BENCHMARKS.md): a static `vit_cifar` trained with
`configs/cifar10_vit_cifar.yaml`; then each model, the static one included (`plain`),
fine-tuned for the same epochs from that checkpoint with its `configs/cifar10_*_finetune.yaml`.

Scoring: the seeded 45k/5k validation split of the runs' config is cut in two halves;
the early-exit ViT's thresholds are calibrated for each budget on the first half
(`dynamicnets.inference.calibrate`), and every model is scored on the second half, in eval
mode with compact execution. Cases per model:

- token pruning (DynamicViT, EViT): `TokenPolicy(keep_ratio=r)` for each `--keep-ratios`
  (per stage, multiplicative), and for each `--threshold-twins` ratio a
  `TokenPolicy(threshold=t)` whose `t` is fitted on the first half to that ratio's mean
  FLOPs (`calibrate_token_policy`): the same mean cost, spent unevenly per image;
- A-ViT: its default halting policy;
- early exits: the policies calibrated for `--budgets` (fractions of the static FLOPs).

`mean_flops` is the mean of `out.flops` (what each sample executes). Timing, per batch size
(`--batch-sizes`): the first `--timed-samples` images of the scored half in batches of that
size, the static model and the case interleaved in rounds (`torch.utils.benchmark`,
`--threads` threads, warm-up, no autograd); for cases whose samples keep different token
counts, every token batching (`pad`, `pack`, `bucket`) is timed. `speedup_flops` = static
FLOPs / the case's mean FLOPs on the timed images; `speedup_measured` = static time / case
time; `realized` = their ratio.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/transformers_cifar.py \\
        --static runs/transformers/plain_vit_cifar \\
        --runs runs/transformers/dynamic_vit_cifar runs/transformers/evit_cifar \\
               runs/transformers/avit_cifar runs/transformers/exit_vit_cifar
    # smoke run
    ... --quick --out /tmp/t.json --markdown /tmp/t.md --plot /tmp/t.png

Writes benchmarks/results/transformers_cifar.{json,md,png} by default.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from dynamicnets.data import make_eval_loader
from dynamicnets.inference import TokenPolicy, calibrate, calibrate_token_policy, run_early_exit
from dynamicnets.outputs import DynamicOutput
from dynamicnets.pipelines.checkpoint_data import load_checkpoint_data
from dynamicnets.pipelines.checkpoints import load_trained_model, run_checkpoint
from dynamicnets.pipelines.early_exit import timed_batches
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.plots import plot_accuracy_vs_flops
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.protocols import MultiExit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BATCHINGS = ("pad", "pack", "bucket")
TARGET_SAVING = 0.30  # fraction of the static FLOPs saved, at least
TARGET_DROP = 0.5     # accuracy points below static, at most
QUICK_SAMPLES = 32


@dataclass
class Case:
    """One model under one inference policy."""

    run: str
    model_name: str
    label: str
    call: Callable[..., DynamicOutput]   # call(x, token_batching=None) -> DynamicOutput
    keep_ratio: float | None = None
    varies: bool = False                 # per-sample token counts differ: time every batching
    extra: dict = field(default_factory=dict)


def token_policy_cases(run: str, name: str, model: nn.Module, calib: Dataset, args) -> list[Case]:
    cases = []
    for r in args.keep_ratios:
        def call(x, token_batching=None, r=r):
            return model(x, policy=TokenPolicy(keep_ratio=r, token_batching=token_batching or "pack"))
        cases.append(Case(run, name, f"keep {r:g}", call, keep_ratio=r))
    loader = make_eval_loader(calib, 256)
    for r in args.threshold_twins:
        # a score threshold fitted to the keep ratio's mean FLOPs on the calibration half
        budget = _mean_flops_of(lambda x: model(x, policy=TokenPolicy(keep_ratio=r)), loader)
        fit = calibrate_token_policy(model, loader, budget, by="threshold", iterations=args.calibration_steps)
        t = fit.policy.threshold

        def call(x, token_batching=None, t=t):
            return model(x, policy=TokenPolicy(threshold=t, token_batching=token_batching or "pack"))
        cases.append(Case(run, name, f"threshold at keep {r:g}'s FLOPs", call, varies=True,
                          extra={"threshold": t, "threshold_budget_flops": budget}))
    return cases


@torch.no_grad()
def _mean_flops_of(fn: Callable, loader) -> float:
    total = count = 0
    for x, _ in loader:
        flops = fn(x).flops
        total += float(flops.double().sum())
        count += flops.shape[0]
    return total / count


def halting_cases(run: str, name: str, model: nn.Module) -> list[Case]:
    default = model.default_policy()

    def call(x, token_batching=None):
        policy = default if token_batching is None else dataclasses.replace(default, token_batching=token_batching)
        return model(x, policy=policy)
    return [Case(run, name, f"halting eps {default.eps:g}", call, varies=True, extra={"eps": default.eps})]


def exit_cases(run: str, name: str, model: nn.Module, calib: Dataset, static_flops: float, args) -> list[Case]:
    cases = []
    loader = make_eval_loader(calib, 256)
    for fraction in args.budgets:
        policy = calibrate(model, loader, fraction * static_flops).policy

        def call(x, token_batching=None, policy=policy):
            return run_early_exit(model, x, policy).as_output()
        cases.append(Case(run, name, f"budget {fraction:g}", call, extra={"budget_fraction": fraction,
                                                                          "thresholds": list(policy.thresholds)}))
    return cases


def cases_for(run: str, model: nn.Module, name: str, calib: Dataset, static_flops: float, args) -> list[Case]:
    """The inference policies the benchmark scores for `model`, by what the model can do."""
    if isinstance(model, MultiExit):
        return exit_cases(run, name, model, calib, static_flops, args)
    policy = model.default_policy() if callable(getattr(model, "default_policy", None)) else None
    if isinstance(policy, TokenPolicy):
        return token_policy_cases(run, name, model, calib, args)
    if policy is not None:
        return halting_cases(run, name, model)
    return [Case(run, name, "default", lambda x, token_batching=None: model(x))]


@torch.no_grad()
def score(case: Case, dataset: Dataset) -> dict:
    correct = count = 0
    flops = tokens = 0.0
    for x, y in make_eval_loader(dataset, 256):
        out = case.call(x)
        correct += int((out.logits.argmax(1) == y).sum())
        count += y.shape[0]
        flops += float(out.flops.double().sum())
        kept = out.decisions.get("tokens")
        tokens += float(kept.double().sum()) if kept is not None else float("nan")
    return {"accuracy": correct / count, "mean_flops": flops / count, "mean_tokens_last_stage": tokens / count,
            "samples": count}


@torch.no_grad()
def mean_flops(call: Callable, batches: list[Tensor], **kwargs) -> float:
    return sum(float(call(x, **kwargs).flops.double().sum()) for x in batches) / sum(x.shape[0] for x in batches)


def time_case(static: nn.Module, case: Case, batches: list[Tensor], args) -> list[dict]:
    batchings = BATCHINGS if case.varies else ("pack",)
    fns = {"static": lambda: [static(x) for x in batches]}
    fns.update({b: (lambda b=b: [case.call(x, token_batching=b) for x in batches]) for b in batchings})
    with torch.inference_mode():
        timing = compare(fns, threads=args.threads, min_run_time=args.min_run_time, warmup=args.warmup,
                         rounds=args.rounds)
        static_flops = mean_flops(lambda x, **_: static(x), batches)
        flops = mean_flops(case.call, batches)
    rows = []
    for b in batchings:
        measured = ratio(timing, "static", b)
        rows.append({"strategy": b if case.varies else "uniform", "batch_size": int(batches[0].shape[0]),
                     "speedup_flops": static_flops / flops, "speedup_measured": measured,
                     "realized": measured * flops / static_flops,
                     "ms": timing[b].median_ms / len(batches), "static_ms": timing["static"].median_ms / len(batches)})
    return rows


def write_markdown(path: Path, static_row: dict, rows: list[dict], batch_sizes: list[int], meta: dict) -> None:
    scored = {(r["run"], r["policy"]): r for r in rows}
    table = [{"model": static_row["model"], "policy": "static", "accuracy": static_row["accuracy"],
              "mean FLOPs (M)": static_row["mean_flops"] / 1e6, "FLOPs saved %": 0.0}]
    for (run, policy), first in scored.items():
        row = {"model": first["model"], "policy": policy, "accuracy": first["accuracy"],
               "mean FLOPs (M)": first["mean_flops"] / 1e6, "FLOPs saved %": 100 * first["flops_saving"]}
        for r in rows:
            if r["run"] == run and r["policy"] == policy:
                row[f"b{r['batch_size']} {r['strategy']}"] = r["speedup_measured"]
        table.append(row)
    columns = ["model", "policy", "accuracy", "mean FLOPs (M)", "FLOPs saved %"]
    columns += [f"b{b} {s}" for b in batch_sizes for s in ("uniform", *BATCHINGS)]
    columns = [c for c in columns if any(c in row for row in table)]
    formats = {c: ".2f" for c in columns}
    formats.update({"accuracy": ".4f", "FLOPs saved %": ".1f"})
    met = [r for r in scored.values()
           if r["flops_saving"] >= TARGET_SAVING and r["accuracy_drop_points"] <= TARGET_DROP]
    verdict = ("Target (within {:g} point of the static ViT at >= {:.0f}% fewer FLOPs): ".format(
        TARGET_DROP, 100 * TARGET_SAVING)
        + ("met by " + ", ".join(f"{r['model']} ({r['policy']}: {100 * r['flops_saving']:.1f}% saved, "
                                f"{-r['accuracy_drop_points']:+.2f} points)" for r in met) if met else "not met by any case")
        + ".")
    text = (f"Scored on {meta['scored_on']}; eval mode, compact execution. Columns `bB strategy`: measured "
            f"speedup over the static ViT at batch B ({meta['threads']} thread(s), interleaved rounds; `uniform`: "
            f"every sample keeps the same token count).\n\n{markdown_table(table, columns, formats)}\n\n{verdict}\n")
    if meta.get("quick"):
        text = "**Smoke run (`--quick`): a few images, short timings; not results.**\n\n" + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_plot(path: Path, static_row: dict, rows: list[dict]) -> None:
    series: dict[str, set] = {}
    for r in rows:
        series.setdefault(r["model"], set()).add((r["mean_flops"], r["accuracy"]))
    plot_accuracy_vs_flops({k: sorted(v) for k, v in series.items()}, path,
                           title="CIFAR-10 dynamic ViTs (fine-tuned from one static ViT)",
                           static_points={"static ViT": (static_row["mean_flops"], static_row["accuracy"])})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--static", required=True, help="run folder or checkpoint of the static ViT")
    parser.add_argument("--runs", nargs="+", required=True, help="run folders or checkpoints of dynamic ViTs")
    parser.add_argument("--data", default=None, help="data spec (default: the one each checkpoint names)")
    parser.add_argument("--keep-ratios", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--threshold-twins", type=float, nargs="*", default=[0.5, 0.7],
                        help="token pruning: also a score-threshold policy calibrated to each of these keep "
                             "ratios' mean FLOPs (per-sample token counts)")
    parser.add_argument("--calibration-steps", type=int, default=10, help="bisection steps of each threshold")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8],
                        help="early exits: mean-FLOPs budgets as fractions of the static ViT's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--timed-samples", type=int, default=64)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "transformers_cifar.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "transformers_cifar.md")
    parser.add_argument("--plot", type=Path, default=RESULTS / "transformers_cifar.png")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_SAMPLES} images, short timing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.timed_samples, args.min_run_time, args.rounds, args.warmup = 1, 0.005, 1, 1
    static_path = run_checkpoint(args.static)
    static, static_ckpt = load_trained_model(static_path)
    static.eval()
    data = load_checkpoint_data(static_ckpt, str(static_path), args.data, "val")
    half = len(data.dataset) // 2
    calib, scored = Subset(data.dataset, range(half)), Subset(data.dataset, range(half, len(data.dataset)))
    if args.quick:
        calib, scored = Subset(calib, range(QUICK_SAMPLES)), Subset(scored, range(QUICK_SAMPLES))
    scored_on = f"the second half of {data.scored_on} ({len(scored)} images; exits calibrated on the first half)"
    static_case = Case(static_path.parent.name, static_ckpt["model_name"], "static", lambda x, token_batching=None: static(x))
    static_row = {"model": static_ckpt["model_name"], "run": static_case.run, "policy": "static",
                  **score(static_case, scored)}
    print(json.dumps(static_row), flush=True)
    meta = {"threads": args.threads, "quick": args.quick, "scored_on": scored_on, "batch_sizes": args.batch_sizes,
            "timed_samples": args.timed_samples, "min_run_time": args.min_run_time, "rounds": args.rounds,
            "target": {"flops_saving": TARGET_SAVING, "accuracy_drop_points": TARGET_DROP},
            "command": "python benchmarks/transformers_cifar.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    rows = []
    for given in args.runs:
        path = run_checkpoint(given)
        model, ckpt = load_trained_model(path)
        model.eval()
        for case in cases_for(path.parent.name, model, ckpt["model_name"], calib, static_row["mean_flops"], args):
            base = {"model": case.model_name, "run": case.run, "policy": case.label, "keep_ratio": case.keep_ratio,
                    **case.extra, **score(case, scored)}
            base["flops_saving"] = 1 - base["mean_flops"] / static_row["mean_flops"]
            base["accuracy_drop_points"] = 100 * (static_row["accuracy"] - base["accuracy"])
            for batch_size in args.batch_sizes:
                batches = timed_batches(scored, max(args.timed_samples // batch_size, 1) * batch_size, batch_size)
                for timed in time_case(static, case, batches, args):
                    rows.append({**base, **timed})
                    print(json.dumps({k: rows[-1][k] for k in ("model", "policy", "accuracy", "batch_size",
                                                               "strategy", "speedup_flops", "speedup_measured")}),
                          flush=True)
            write_json(args.out, [static_row, *rows], meta)
    write_json(args.out, [static_row, *rows], meta)
    write_markdown(args.markdown, static_row, rows, args.batch_sizes, meta)
    write_plot(args.plot, static_row, rows)
    print(args.markdown.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
