"""`dynamicnets export (--checkpoint CK | --model NAME --pretrained [TAG]) --format onnx|torch.export
--out DIR [--thresholds ... | (--budget 50% | --gate-rate 0.7) [--data SPEC] [--confidence 0.95 [--eval-size N]]]
[--criterion maxprob] [--max-flops 40M] [--keep-ratio 0.7] [--check-samples 8]`."""
from __future__ import annotations

import argparse
import sys

# The parser is built for every command: the library (models, exporters) loads only when
# `export` runs. The pipeline checks the format again.
FORMATS = ("torch.export", "onnx")
# what a fitted budget prints, in this order
FITTED = ("budget_flops", "gate_rate", "policy", "fitted_on", "fitted_samples", "fitted_accuracy", "fitted_mean_flops",
          "expected_cost")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="a best.pt / last.pt, or a run folder")
    p.add_argument("--model", default=None, help="with --pretrained: the model whose shipped weights to export")
    p.add_argument("--pretrained", nargs="?", const=True, default=None, metavar="TAG",
                   help="export shipped weights (TAG, e.g. cifar10; without TAG the model's only or default tag)")
    p.add_argument("--format", default="torch.export", choices=FORMATS,
                   help="torch.export programs (.pt2) or ONNX models (.onnx, run by onnxruntime)")
    p.add_argument("--out", required=True, help="the export folder (graphs + manifest.json)")
    p.add_argument("--thresholds", help="early exits: K-1 comma-separated exit thresholds (default: every "
                                        "sample to the last exit); gated models: one per gate, or one for all")
    p.add_argument("--budget", default=None,
                   help="fit the rule to a mean FLOPs per sample on the validation split instead of --thresholds, "
                        "e.g. 30M or 50%% of the full cost (early exits: thresholds; slimmable networks: a width "
                        "cascade; DS-Net and dynamic resolution: a bias per option; DynamicViT/EViT: a keep ratio), as "
                        "`eval --budget` fits it")
    p.add_argument("--gate-rate", type=float, default=None,
                   help="gated ResNets: fit each gate's threshold on the validation split so this fraction of the "
                        "samples runs its block (as `eval --gate-rate`), instead of --thresholds")
    p.add_argument("--data", default=None,
                   help="with --budget/--gate-rate: the data whose validation split it is fitted on (default: the "
                        "checkpoint's; required for --pretrained)")
    p.add_argument("--confidence", type=float, default=None,
                   help="with --budget/--gate-rate: fit it to hold on a fresh batch of --eval-size samples with this "
                        "probability")
    p.add_argument("--eval-size", type=int, default=None,
                   help="that batch's size (default: the number of validation samples)")
    p.add_argument("--criterion", "--policy", dest="criterion", default="maxprob",
                   help="early exits: maxprob, entropy, margin or patience (--policy, as in eval and attack)")
    p.add_argument("--max-flops", help="a per-sample compute cap shipped with the policy, e.g. 40M (early exits, "
                                       "gated models, dynamic resolution, DS-Net)")
    p.add_argument("--keep-ratio", default=None,
                   help="token-pruning transformers (DynamicViT, EViT): the share of tokens every sample keeps at "
                        "each stage, one value or one per stage, comma-separated (default: the model's own)")
    p.add_argument("--check-samples", type=int, default=8,
                   help="random inputs the exported folder is checked on against eager inference (0: none)")


def run_export(args: argparse.Namespace) -> int:
    from ..pipelines.export import ExportRequest, export_checkpoint, export_folder_size
    from ..profiling.report import format_flops, parse_flops
    from .evaluate import _floats, parse_budget

    budget_flops, budget_fraction = parse_budget(args.budget) if args.budget is not None else (None, None)
    summary = export_checkpoint(ExportRequest(
        checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained, out_dir=args.out,
        format=args.format, criterion=args.criterion,
        thresholds=_floats(args.thresholds, "--thresholds") if args.thresholds is not None else None,
        max_flops=parse_flops(args.max_flops, what="--max-flops") if args.max_flops is not None else None,
        check_samples=args.check_samples, budget_flops=budget_flops, budget_fraction=budget_fraction,
        data=args.data, confidence=args.confidence, eval_size=args.eval_size, gate_rate=args.gate_rate,
        keep_ratio=_floats(args.keep_ratio, "--keep-ratio") if args.keep_ratio is not None else None,
        say=lambda line: print(line, file=sys.stderr, flush=True),
    ))
    for key in ("model", "kind", "format", "graphs", "manifest", *FITTED, "flops_per_sample", "check_samples",
                "check_max_logit_difference", "check_decisions_equal"):
        if key not in summary:
            continue
        value = summary[key]
        if key in ("budget_flops", "fitted_mean_flops", "flops_per_sample"):
            value = f"{format_flops(value)} ({value:.0f})"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        print(f"{key:>27}: {value}")
    print(f"{'size':>27}: {export_folder_size(args.out) / 1e6:.2f} MB")
    return 0
