"""The options that name a trained model: `--checkpoint CK`, or `--model NAME --pretrained [TAG]`."""
from __future__ import annotations

import argparse


def add_model_source_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    """`--checkpoint`, `--model` and `--pretrained` for a command that `verb`s a trained model."""
    p.add_argument("--checkpoint", default=None,
                   help="a best.pt / last.pt written by train, or its run folder (best.pt, else last.pt)")
    p.add_argument("--model", default=None, help=f"with --pretrained: the model whose shipped weights to {verb}")
    p.add_argument("--pretrained", nargs="?", const=True, default=None, metavar="TAG",
                   help=f"{verb} the shipped weights of --model tagged TAG (e.g. cifar10; without TAG: its only "
                        "or default tag); `dynamicnets models --pretrained` lists them")
