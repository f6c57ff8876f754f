"""Ship a finished training run as pretrained weights of the model zoo.

    python benchmarks/export_zoo_weight.py --run zoo_runs/cifar10_resnet20_zoo --tag cifar10 \
        --data cifar10:path/to/cifar-10-batches-py

Picks the run's best.pt (else last.pt), writes src/dynamicnets/weights/<model>_<tag>.pt
(state_dict only, float32) atomically with its sha256 into registry.json, records the
validation accuracy and CPU hours from metrics.jsonl, and regenerates the model card
(docs/model_cards/<model>_<tag>.md + PNG) and benchmarks/results/model_zoo.{json,md}.
With --data the shipped file is loaded back and re-scored on the validation split it was
trained with, and a dynamic model's accuracy-FLOPs trade-off (speedups at batch 1 and 256)
is measured for its card (a layer-skipping, spatially gated, token-pruning or width model's against
`--anchor`, its static anchor's run; a dynamic-parameter model is compared with the anchor only when one is given). `--cards-only` regenerates every card and the zoo table from
registry.json without a run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dynamicnets.errors import DynamicNetsError
from dynamicnets.models.pretrained import read_registry
from dynamicnets.pipelines.zoo import ZooExport, ZooPaths, export_run, write_cards, write_zoo_table

ROOT = Path(__file__).resolve().parents[1]
PATHS = ZooPaths(weights_dir=ROOT / "src" / "dynamicnets" / "weights", cards_dir=ROOT / "docs" / "model_cards",
                 zoo_table=ROOT / "benchmarks" / "results" / "model_zoo.json", repo_root=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a finished run folder, e.g. zoo_runs/cifar10_resnet20_zoo")
    parser.add_argument("--tag", help="the weights' tag, e.g. cifar10")
    parser.add_argument("--data", default=None,
                        help="data spec of the run's data: re-score the shipped file, measure dynamic trade-offs")
    parser.add_argument("--default", action="store_true", help="make this tag the model's default")
    parser.add_argument("--budgets", type=int, default=8, help="points on a dynamic model's accuracy-FLOPs curve")
    parser.add_argument("--anchor", default=None,
                        help="finished run of the static anchor (same schedule): a layer-skipping, spatially "
                             "gated, token-pruning, width or dynamic-parameter model is timed and scored against it")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for evaluation and timing")
    parser.add_argument("--cards-only", action="store_true", help="regenerate cards and zoo table from registry.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.cards_only:
            rows = read_registry(PATHS.weights_dir)
            for card in write_cards(rows, PATHS):
                print(f"wrote {card.relative_to(ROOT)}")
            write_zoo_table(rows, PATHS.zoo_table)
            return 0
        if not args.run or not args.tag:
            parser.error("--run and --tag are required (or --cards-only)")
        row = export_run(ZooExport(run=args.run, tag=args.tag, paths=PATHS, data=args.data, default=args.default,
                                   budgets=args.budgets, threads=args.threads, anchor=args.anchor))
    except DynamicNetsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rescored = row.details.get("rescored")
    print(f"{row.model}/{row.tag}: {row.file} sha256 {row.sha256}")
    print(f"  val accuracy {100 * row.val_accuracy:.2f}% (metrics)"
          + (f", {100 * rescored['val_accuracy']:.2f}% re-scored from the shipped file" if rescored else ""))
    print(f"  params {row.params}, FLOPs {row.flops:.0f}, CPU hours {row.cpu_hours:.2f}")
    print(f"  card {row.details['card']}; table {PATHS.zoo_table.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
