"""`dynamicnets attack (--checkpoint CK | --model NAME --pretrained [TAG]) --kind slowdown|pgd --eps 8/255 --steps 20
[--budget 50% | --thresholds ... | --budget-ms MS] [--policy P] [--max-flops F] --out FILE.json`."""
from __future__ import annotations

import argparse

from .model_source import add_model_source_arguments

COLUMNS = ("defense", "attack", "cap", "accuracy", "efficacy", "mean_flops", "max_flops", "exit_histogram",
           "executed_fraction")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `dynamicnets attack`."""
    add_model_source_arguments(p, "attack")
    p.add_argument("--kind", required=True, choices=["slowdown", "pgd"],
                   help="slowdown: DeepSloth (every internal exit pushed toward uniform, or every gate on); "
                        "pgd: untargeted PGD on the final logits")
    p.add_argument("--eps", required=True, help="L-infinity radius in pixel units, e.g. 8/255")
    p.add_argument("--steps", type=int, default=20, help="attack steps")
    p.add_argument("--step-size", default=None, help="pixel change per step (default: 2.5 eps / steps)")
    p.add_argument("--out", required=True, metavar="FILE.json", help="write the records here")
    p.add_argument("--data", default=None,
                   help="data spec (default: the one it was trained on; required with --pretrained)")
    p.add_argument("--split", default="val", choices=["val", "test", "all"], help="as for eval")
    p.add_argument("--samples", type=int, default=500, help="attack and score this many samples; 0: all")
    p.add_argument("--policy", default="maxprob", help="exit criterion: maxprob, entropy, margin, patience")
    p.add_argument("--budget", default=None,
                   help="mean FLOPs per sample on clean data, e.g. 30M or 50%% (thresholds fitted on clean data)")
    p.add_argument("--budget-ms", type=float, default=None, help="mean measured ms per sample on clean data")
    p.add_argument("--thresholds", default=None, help="comma-separated, one per exit but the last")
    p.add_argument("--max-flops", default=None,
                   help="per-sample compute cap, e.g. 60M: every row is repeated under the capped policy")
    p.add_argument("--batch-size", type=int, default=128, help="samples per attack and per executor call")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")


def run_attack(args: argparse.Namespace) -> int:
    # Imported here: building the parser must stay light (`dynamicnets models` starts fast).
    from ..pipelines.attack import AttackRequest, attack_checkpoint
    from ..profiling.report import format_flops, print_table, write_json
    from ..profiling.report import parse_flops
    from ..writing import check_writable
    from .evaluate import _early_exit_request

    check_writable(args.out, "--out")  # before the attack, not after it
    early_exit = _early_exit_request(args)
    # Without an exit rule, --max-flops caps a layer-skipping model's gates.
    gate_max_flops = parse_flops(args.max_flops, what="--max-flops") if (
        early_exit is None and args.max_flops is not None) else None
    result = attack_checkpoint(AttackRequest(
        checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained, kind=args.kind, eps=args.eps,
        steps=args.steps, step_size=args.step_size,
        data=args.data, split=args.split, samples=args.samples or None, early_exit=early_exit,
        gate_max_flops=gate_max_flops,
        batch_size=args.batch_size, device=args.device, seed=args.seed,
    ))
    meta = result["meta"]
    print(f"{meta['model']} on {meta['data']} ({meta['samples']} samples), {meta['kind']} eps={meta['eps']:.4g} "
          f"steps={meta['steps']}; largest pixel change {meta['perturbation_linf']:.4g}")
    if "thresholds" in meta:
        print(f"policy {meta['policy']} thresholds {', '.join(f'{t:.4g}' for t in meta['thresholds'])}; "
              f"{meta['protocol']}")
    rows = []
    for record in result["records"]:
        row = {k: record[k] for k in COLUMNS if k in record}
        for key in ("cap", "mean_flops", "max_flops"):
            row[key] = "-" if row.get(key) is None else format_flops(row[key])
        rows.append(row)
    print_table(rows, floatfmt={"accuracy": ".4f", "efficacy": ".4f", "executed_fraction": ".4f"})
    write_json(args.out, result["records"], meta=meta)
    return 0
