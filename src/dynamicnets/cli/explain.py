"""`dynamicnets explain (--checkpoint CK | --model NAME --pretrained [TAG]) [--data SPEC] [--split val|test|all] [--num-images 8]
[--out DIR]`: where a spatially dynamic model executes, drawn over its inputs as PNGs."""
from __future__ import annotations

import argparse

from ..pipelines.explain import ExplainRequest, explain_checkpoint


def run_explain(args: argparse.Namespace) -> int:
    """Write the PNGs and print their paths, one per line, after a line saying what was drawn."""
    result = explain_checkpoint(ExplainRequest(
        checkpoint=args.checkpoint, model=args.model, pretrained=args.pretrained, data=args.data, split=args.split,
        num_images=args.num_images,
        out_dir=args.out, device=args.device,
    ))
    maps = result.maps
    means = ", ".join(f"{b}: {v:.3f}" for b, v in zip(maps.blocks, maps.mean_values.tolist()))
    print(f"{result.model}: {len(maps.image_paths)} image(s) of {result.drawn_from}")
    print(f"mean per block (executed fraction, or ponder cost): {means}")
    for path in maps.paths:
        print(path)
    return 0
