"""`dynamicnets` command line: parse, call the library, print. Nothing else lives here."""
from __future__ import annotations

import argparse
import sys

from ..errors import DynamicNetsError
from ..models import FAMILIES
from ..pipelines.early_exit import DEFAULT_TIMED_SAMPLES
from .model_source import add_model_source_arguments


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` where there is a value to show: not for required options, flags
    or options whose absence the help text already explains."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _build_parser() -> argparse.ArgumentParser:
    formatter = _DefaultsFormatter
    parser = argparse.ArgumentParser(
        prog="dynamicnets",
        description="Dynamic neural networks: train, evaluate with real savings, explain, benchmark.",
        formatter_class=formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_parser(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=formatter)

    p = add_parser("train", "train a model from a YAML config")
    p.add_argument("--config", required=True,
                   help="a YAML file, the name of a shipped config (e.g. cifar10_resnet20; "
                        "`python -c 'import dynamicnets.configs as c; print(c.list_configs())'` lists them), "
                        "or a run folder (the config it was last trained with, e.g. --config runs/NAME --resume)")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/<name>/last.pt")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override config keys, e.g. epochs=3 model_args.width=16")

    p = add_parser("eval", "evaluate a checkpoint or shipped pretrained weights: accuracy, FLOPs, latency")
    add_model_source_arguments(p, "score")
    p.add_argument("--data", default=None,
                   help="data spec (default: the one it was trained on; required with --pretrained). Inputs are "
                        "prepared as in training (the recorded scale, mean, std), whatever the source")
    p.add_argument("--split", default="val", choices=["val", "test", "all"],
                   help="val: the seeded validation split carved from the training files (as in training); "
                        "test: the test files; all: every sample of the data source")
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch for inference and timing")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for timing (default: torch's current number)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--policy", default="maxprob", help="exit criterion: maxprob, entropy, margin, patience")
    p.add_argument("--budget", default=None,
                   help="mean FLOPs per sample, e.g. 30M, or a fraction of the full cost, e.g. 50%% "
                        "(multi-exit models: exit thresholds; dynamic resolution: a bias per resolution; "
                        "DS-Net: a bias per width on its gate; slimmable networks: a cascade of widths and its "
                        "thresholds; DynamicViT/EViT: a keep ratio)")
    p.add_argument("--budget-ms", type=float, default=None, help="mean measured ms per sample")
    p.add_argument("--thresholds", default=None, help="comma-separated, one per exit but the last")
    p.add_argument("--max-flops", default=None,
                   help="per-sample compute cap, e.g. 20M, on the rule of --budget/--budget-ms/--thresholds, or "
                        "alone (or with --gate-rate) on a gated ResNet's gates")
    p.add_argument("--anytime", action="store_true",
                   help="print accuracy and cost of every exit (multi-exit models; needs no exit rule)")
    p.add_argument("--gate-rate", type=float, default=None,
                   help="gated ResNets: fit each gate's threshold so this fraction of samples runs its block")
    p.add_argument("--confidence", type=float, default=None,
                   help="fit --budget/--budget-ms/--gate-rate so that the mean cost over a fresh batch of "
                        "--eval-size samples stays within it with this probability, e.g. 0.95 (i.i.d. data; "
                        "without it the mean on the calibration half meets the budget, which new data then "
                        "exceeds about half the time)")
    p.add_argument("--eval-size", type=int, default=None,
                   help="size of the fresh batch --confidence and the printed cost spread are for "
                        "(default: the number of scored samples)")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds per timed call and round")
    p.add_argument("--timed-samples", type=int, default=DEFAULT_TIMED_SAMPLES,
                   help="time the first N scored samples (in batches); the FLOPs speedup of exactly these "
                        "samples is printed beside the measured one; 0: all")
    p.add_argument("--anchor", default=None, metavar="CK|NAME:TAG",
                   help="the static network to measure against (a checkpoint or run folder, or shipped weights "
                        "as NAME:TAG, e.g. resnet20:cifar10): scored on the same samples and timed in the same "
                        "run at --batch-size and at batch 1")

    p = add_parser("attack", "slowdown (DeepSloth) or PGD attacks on a checkpoint: accuracy, early-exit "
                             "efficacy and per-sample FLOPs, clean vs attacked, with and without a cap")
    from .attack import add_arguments as add_attack_arguments

    add_attack_arguments(p)

    p = add_parser("export", "export a dynamic checkpoint as static graphs (torch.export or ONNX) plus a manifest "
                             "of its decisions, run by dynamicnets.deploy.DeployedModel")
    from .export import add_arguments as add_export_arguments

    add_export_arguments(p)

    p = add_parser("explain", "draw where a spatially dynamic checkpoint executes, per block, as PNGs")
    add_model_source_arguments(p, "draw")
    p.add_argument("--data", default=None,
                   help="data spec (default: the one it was trained on; required with --pretrained), prepared "
                        "as in training")
    p.add_argument("--split", default="val", choices=["val", "test", "all"],
                   help="which split's first images to draw (as for eval)")
    p.add_argument("--num-images", type=int, default=8, metavar="N", help="draw the first N images of the split")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the PNGs (default: spatial_maps/ beside the checkpoint; for shipped weights "
                        "spatial_maps/MODEL_TAG/ here)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")

    p = add_parser("bench", "latency/FLOPs of registered models (same-run ratios)")
    p.add_argument("models", nargs="*", help="model names (default: the static baselines)")
    p.add_argument("--input-shape", default=None, help="e.g. 3,32,32 (default: the model's own)")
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for timing (default: torch's current number)")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds per timed call and round")
    p.add_argument("--json", default=None, help="also write the results here")

    p = add_parser("models", "list registered models: family, input, params, FLOPs, description")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.add_argument("--family", default=None,
                   help=f"only this family: {', '.join(FAMILIES)} (depth: early exits)")
    p.add_argument("--names", action="store_true", help="print the names only, one per line (fast)")
    p.add_argument("--pretrained", action="store_true",
                   help="list the shipped pretrained weights instead: model, tag, validation accuracy, params, "
                        "FLOPs, CPU hours")

    p = add_parser("demo", "does a dynamic model beat static ones at equal cost? a cascade on MNIST-1D, measured, in about two minutes")
    p.add_argument("--out-dir", default="runs/demo", help="where the runs, tables and plots go")
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epochs (default: its own)")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds per timed call and round")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    # Imports are local so `dynamicnets models` starts fast and errors stay readable.
    if args.command == "train":
        from .train import run_train

        return run_train(args.config, args.overrides, resume=args.resume)
    if args.command == "eval":
        from .evaluate import run_eval

        return run_eval(args)
    if args.command == "attack":
        from .attack import run_attack

        return run_attack(args)
    if args.command == "export":
        from .export import run_export

        return run_export(args)
    if args.command == "explain":
        from .explain import run_explain

        return run_explain(args)
    if args.command == "bench":
        from .bench import run_bench

        return run_bench(args)
    if args.command == "models":
        from .models import run_models

        return run_models(args)
    if args.command == "demo":
        from ..pipelines.demo import DemoConfig, run_demo

        config = DemoConfig(out_dir=args.out_dir, progress=not args.no_progress, min_run_time=args.min_run_time)
        if args.epochs is not None:
            config.epochs = args.epochs
        run_demo(config)
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]  # key=value after an option: `--resume epochs=8`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _dispatch(args)
    except DynamicNetsError as e:
        if args.debug:
            raise
        print(f"dynamicnets {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dynamicnets {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
