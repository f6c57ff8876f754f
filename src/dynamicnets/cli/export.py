"""`dynamicnets export --checkpoint CK --format onnx|torch.export --out DIR [--thresholds ...]
[--criterion maxprob] [--max-flops 40M] [--check-samples 8]`."""
from __future__ import annotations

import argparse

# The parser is built for every command: the library (models, exporters) loads only when
# `export` runs. The pipeline checks the format again.
FORMATS = ("torch.export", "onnx")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a best.pt / last.pt, or a run folder")
    p.add_argument("--format", default="torch.export", choices=FORMATS,
                   help="torch.export programs (.pt2) or ONNX models (.onnx, run by onnxruntime)")
    p.add_argument("--out", required=True, help="the export folder (graphs + manifest.json)")
    p.add_argument("--thresholds", help="early exits: K-1 comma-separated exit thresholds (default: every "
                                        "sample to the last exit); gated models: one per gate, or one for all")
    p.add_argument("--criterion", default="maxprob", help="early exits: maxprob, entropy, margin or patience")
    p.add_argument("--max-flops", help="a per-sample compute cap shipped with the policy, e.g. 40M (early exits, "
                                       "gated models, dynamic resolution, DS-Net)")
    p.add_argument("--check-samples", type=int, default=8,
                   help="random inputs the exported folder is checked on against eager inference (0: none)")


def run_export(args: argparse.Namespace) -> int:
    from ..pipelines.export import ExportRequest, export_checkpoint, export_folder_size
    from ..profiling.report import parse_flops
    from .evaluate import _floats

    summary = export_checkpoint(ExportRequest(
        checkpoint=args.checkpoint, out_dir=args.out, format=args.format, criterion=args.criterion,
        thresholds=_floats(args.thresholds, "--thresholds") if args.thresholds is not None else None,
        max_flops=parse_flops(args.max_flops, what="--max-flops") if args.max_flops is not None else None,
        check_samples=args.check_samples,
    ))
    for key in ("model", "kind", "format", "graphs", "manifest", "check_samples", "check_max_logit_difference",
                "check_decisions_equal"):
        if key in summary:
            print(f"{key:>27}: {summary[key]}")
    print(f"{'size':>27}: {export_folder_size(args.out) / 1e6:.2f} MB")
    return 0
