"""Glance and focus (GFNet) against a CNN on the whole canvas and a spatial transformer, on
60x60 cluttered MNIST: accuracy, FLOPs, glimpses and measured speed.

Three models get the same schedule: `--max-steps` AdamW steps at batch `--batch-size`
(lr `--lr`, weight decay 1e-4, cosine decay, seed 0, from scratch, on the seeded 55k/5k
split of the MNIST training set made into cluttered canvases; the same stream of batches).
`small_cnn` (width 32) reads the whole canvas (the static baseline); `stn_cnn` is a
spatial transformer + the same CNN on a 28x28 glimpse; `glance_focus_cnn` glances at the
canvas resized to 30x30, then reads one 28x28 patch out of a 7x7 grid, picked by a
REINFORCE policy (width 32, as the static CNN: 48% of its FLOPs); both steps are exits
(`--glance` overrides these settings, e.g. `width=16,steps=4,patch_size=40,grid=5`). The static CNN and the STN train in
one stage (all parameters, one cosine schedule over all the steps). Glance and focus
trains in GFNet's three stages (Wang et al., "Glance and Focus", NeurIPS 2020; shares
`--stages` of the same step count, each with its own cosine schedule from `--lr`, through
`dynamicnets.training.stages.train_only`): `read` (the policy untouched, every focus step
at a random location: the encoders, GRU and head learn to read patches), `policy` (the
readers frozen, batch-norm statistics too: the policy and the `where` conv learn where to
look, REINFORCE with the label-exact reward) and `fine_tune` (the policy fixed and greedy:
the local encoder, GRU and head adapt to its patches). The loss is the library's training
objective (`dynamic_loss`: the cross-entropy of every exit, equally weighted, + the model's
aux losses; the policy's baselines are updated after each step, as the `Trainer` does).

Rows (`model`): `small_cnn`, `stn_cnn`; `glance_focus full` (every step, greedy
policy); `glance_focus budget F` (early exits with a max-probability `ExitPolicy`
calibrated by `dynamicnets.inference.calibrate` to `F` times the full read's mean FLOPs on
the first `--calib` validation images; left out when `F` is below the glance alone's cost);
`glance_focus oracle` (every focus step forced to
the patch nearest the digit's true box, from `cluttered_boxes`; scored, not timed);
`glance_focus encoders only (ideal)` (the physical limit of a full read, timed only: the
global encoder on the resized images and the local encoder on each step's pre-cropped patch,
no policy, GRU, head, cropping or bookkeeping; its FLOPs are those convolutions'). The
next `--score` validation images score every row: `accuracy`, `mean_flops`,
`mean_glimpses` (patches read), `speedup_flops` (small_cnn's FLOPs over the row's) and,
at batch sizes 1 and 64 in the same run, `speedup_measured` (small_cnn's time over the
row's on the same images, timed interleaved by `dynamicnets.profiling.latency.compare`,
compact execution, eval mode, one thread).

    python benchmarks/cluttered_glance.py                      # 1500 steps per model (~45 min, one core)
    # again: the weights saved in runs/cluttered_glance are reloaded, only scoring and timing run
    #   (~5 min; use it to re-time on a quiet core)
    # smoke check (a few steps; results elsewhere)
    python benchmarks/cluttered_glance.py --max-steps 3 --calib 128 --score 128 --batch1-samples 4 \
        --min-run-time 0.05 --rounds 1 --results /tmp/glance_smoke --checkpoints ''

Writes `cluttered_glance.{json,md,png}` to `--results` (default benchmarks/results); the
picture shows the greedy policy's patches on a few validation canvases.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from dynamicnets.data import cluttered_boxes, load_data, make_eval_loader
from dynamicnets.flops import flops_and_shape
from dynamicnets.inference import calibrate
from dynamicnets.layers.resize import resize
from dynamicnets.models import create_model
from dynamicnets.pipelines.early_exit import timed_batches
from dynamicnets.profiling.latency import compare, ratio
from dynamicnets.profiling.report import markdown_table, write_json
from dynamicnets.training.objective import dynamic_loss
from dynamicnets.training.protocols import SupportsBaselineUpdate
from dynamicnets.training.stages import split_steps, train_only
from dynamicnets.writing import atomic_write_with

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "data" / "mnist"
MODELS = {
    "small_cnn": {"width": 32},
    "stn_cnn": {"canvas": 60, "glimpse": 28},
    "glance_focus_cnn": {"image_size": 60, "glance_size": 30, "patch_size": 28, "grid": 7, "steps": 2,
                         "width": 32, "hidden": 128},
}
BUDGETS = (0.5, 0.75)
STAGES = ("read", "policy", "fine_tune")
IDEAL = "glance_focus encoders only (ideal)"


def batches(loader: DataLoader, count: int):
    """`count` training batches `(x channels-last, y)`, cycling through `loader`."""
    done = 0
    while done < count:
        for x, y in loader:
            yield x.contiguous(memory_format=torch.channels_last), y
            done += 1
            if done >= count:
                return


def run_stage(model, params, stream, steps: int, opts, forward) -> float:
    """`steps` AdamW steps (lr `opts.lr`, cosine over the stage, wd 1e-4) on `params`;
    `forward(model, x, y)` gives the output whose `dynamic_loss` is minimised. Returns the
    last loss."""
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    last = math.nan
    for _ in range(steps):
        x, y = next(stream)
        out = forward(model, x, y)
        loss = dynamic_loss(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if isinstance(model, SupportsBaselineUpdate):
            model.update_baseline(out, y)
        last = float(loss.detach())
    return last


def train(name: str, loader: DataLoader, opts) -> torch.nn.Module:
    """`name` trained for `opts.max_steps` steps, in eval mode: one AdamW + cosine stage for
    the static CNN and the STN; GFNet's three stages for glance and focus (`STAGES`)."""
    torch.manual_seed(0)
    model = create_model(name, **MODELS[name]).to(memory_format=torch.channels_last)
    stream = batches(loader, opts.max_steps)
    start = time.perf_counter()
    if name != "glance_focus_cnn":
        model.train()
        losses = [run_stage(model, list(model.parameters()), stream, opts.max_steps, opts,
                            lambda m, x, y: m(x))]
    else:
        draws = torch.Generator().manual_seed(1)
        forwards = {"read": lambda m, x, y: m(x, locations=m.random_locations(x.shape[0], generator=draws)),
                    "policy": lambda m, x, y: m(x, target=y, sample=True),
                    "fine_tune": lambda m, x, y: m(x, sample=False)}
        losses = []
        for stage, steps in zip(STAGES, split_steps(opts.max_steps, opts.stages)):
            params = train_only(model, model.training_stages[stage])
            losses.append(run_stage(model, params, stream, steps, opts, forwards[stage]))
        model.requires_grad_(True)
    print(f"{name}: {opts.max_steps} steps, last losses {[round(v, 3) for v in losses]} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return model.eval()


@torch.no_grad()
def score(model, loader, kwargs: dict, boxes: torch.Tensor | None = None) -> dict:
    """Accuracy, mean FLOPs and (glance-focus rows) mean glimpses on `loader`; with
    `boxes` (`(N, 4)` for the loader's samples, in order) the focus steps are forced to
    the patch nearest each digit."""
    correct = count = flops = glimpses = 0.0
    for x, y in loader:
        extra = {}
        if boxes is not None:
            where = model.crop.nearest(boxes[int(count): int(count) + x.shape[0], :2])
            extra["locations"] = where.view(-1, 1).expand(-1, model.steps - 1)
        out = model(x.contiguous(memory_format=torch.channels_last), **kwargs, **extra)
        correct += float((out.logits.argmax(1) == y).sum())
        count += y.shape[0]
        flops += float(out.flops.sum())
        if "exit_index" in out.decisions:
            glimpses += float(out.decisions["exit_index"].sum())
    return {"accuracy": correct / count, "mean_flops": flops / count,
            "mean_glimpses": glimpses / count if hasattr(model, "crop") else None}


def encoders_only(model, batches: list[torch.Tensor]):
    """The physical limit of a full read: a callable running only the global encoder on the
    resized images and the local encoder on each step's patches (cropped beforehand at the
    greedy policy's locations): the convolutions a full read executes, with no policy, GRU,
    head, cropping or bookkeeping."""
    with torch.inference_mode():
        work = []
        for x in batches:
            locations = model(x).decisions["locations"]
            work.append((resize(x, model.glance_size),
                         [model.crop(x, locations[:, t]) for t in range(model.steps - 1)]))

    def run():
        return [(model.global_encoder(small), [model.local_encoder(p) for p in patches]) for small, patches in work]
    return run


def picture(model, dataset, boxes: torch.Tensor, path: Path, count: int = 6) -> None:
    """The greedy policy's patches (numbered by step) and the digit's box on a few canvases."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    x = torch.stack([dataset[i][0] for i in range(count)])
    with torch.no_grad():
        out = model(x)
    size = model.crop.patch_size
    fig, axes = plt.subplots(1, count, figsize=(2.2 * count, 2.4))
    for i, ax in enumerate(axes):
        ax.imshow(x[i, 0], cmap="gray")
        top, left, bottom, right = boxes[i].tolist()
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, ec="lime", lw=1.5))
        for step, loc in enumerate(out.decisions["locations"][i].tolist(), start=1):
            t, lft = model.crop.corners[loc].tolist()
            ax.add_patch(Rectangle((lft - 0.5, t - 0.5), size, size, fill=False, ec="red", lw=1, ls="--"))
            ax.text(lft + 1, t + 4, str(step), color="red", fontsize=8)
        ax.set_title(f"pred {int(out.logits[i].argmax())}", fontsize=8)
        ax.axis("off")
    fig.suptitle("focus patches (red, by step) and the digit's box (green)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default=str(MNIST), help="folder of the MNIST IDX files")
    parser.add_argument("--cache", default=str(ROOT / "runs" / "data"), help="folder of the canvas cache")
    parser.add_argument("--max-steps", type=int, default=1500, help="training steps per model")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--stages", type=lambda v: [float(f) for f in v.split(",")], default=[0.6, 0.2, 0.2],
                        help="glance and focus: shares of --max-steps for the read, policy, fine-tune stages")
    parser.add_argument("--calib", type=int, default=1000, help="validation images that calibrate the budgets")
    parser.add_argument("--score", type=int, default=4000, help="validation images that score every row")
    parser.add_argument("--batch1-samples", type=int, default=32, help="images timed one by one")
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--checkpoints", default=str(ROOT / "runs" / "cluttered_glance"),
                        help="folder where trained weights are saved, and loaded instead of training when "
                             "there, named by model and schedule ('' to neither save nor load; delete the files "
                             "after changing MODELS)")
    parser.add_argument("--glance", default="", help="override glance_focus_cnn's settings, e.g. "
                        "'width=32,steps=2,patch_size=28,grid=7' (integers)")
    opts = parser.parse_args()
    for item in filter(None, opts.glance.split(",")):
        key, value = item.split("=")
        MODELS["glance_focus_cnn"][key.strip()] = int(value)
    torch.set_num_threads(opts.threads)
    spec = f"cluttered_mnist:{opts.mnist}?canvas=60&variant=cluttered&cache={opts.cache}"
    bundle = load_data(spec, val_size=5000, seed=0, augment=False)
    train_boxes, _ = cluttered_boxes(spec)
    stage_steps = split_steps(opts.max_steps, opts.stages)
    start, models, train_seconds_each = time.perf_counter(), {}, {}
    for name in MODELS:  # each model a fresh loader seeded alike: the same batches in the same order
        loader = DataLoader(bundle.train, batch_size=opts.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(0), drop_last=True)
        began = time.perf_counter()
        tag = f"{opts.max_steps}x{opts.batch_size}_lr{opts.lr}_stages{'-'.join(map(str, opts.stages))}"
        if name == "glance_focus_cnn":
            tag += "_" + "_".join(f"{k}{v}" for k, v in sorted(MODELS[name].items()))
        saved = Path(opts.checkpoints) / f"{name}_{tag}.pt" if opts.checkpoints else None
        if saved is not None and saved.exists():  # a rerun of the evaluation only
            models[name] = create_model(name, **MODELS[name]).to(memory_format=torch.channels_last)
            models[name].load_state_dict(torch.load(saved, weights_only=True))
            models[name].eval()
            train_seconds_each[name] = None  # not trained in this run
            continue
        models[name] = train(name, loader, opts)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_with(saved, lambda f, m=models[name]: torch.save(m.state_dict(), f))
        train_seconds_each[name] = time.perf_counter() - began
    train_seconds = time.perf_counter() - start

    val = bundle.val
    calib = Subset(val, range(opts.calib))
    scored_range = range(opts.calib, min(opts.calib + opts.score, len(val)))
    scored = Subset(val, scored_range)
    scored_boxes = train_boxes[torch.as_tensor(val.indices)[list(scored_range)]]
    eval_loader = make_eval_loader(scored, 256)
    glance = models["glance_focus_cnn"]
    plain_flops = float(models["small_cnn"].flops((1, 60, 60)))
    full_flops = glance.read_flops()
    ideal_flops = float(flops_and_shape(glance.global_encoder, (1, glance.glance_size, glance.glance_size))[0]
                        + (glance.steps - 1) * flops_and_shape(glance.local_encoder,
                                                               (1, glance.crop.patch_size, glance.crop.patch_size))[0])
    cases = {"small_cnn": (models["small_cnn"], {}), "stn_cnn": (models["stn_cnn"], {}),
             "glance_focus full": (glance, {})}
    policies = {}
    for fraction in BUDGETS:
        if fraction * full_flops < glance.exit_costs(glance.default_input_shape)[0]:
            print(f"budget {fraction}: below the glance alone's cost, not attainable; row left out", flush=True)
            continue
        calibration = calibrate(glance, make_eval_loader(calib, 256), fraction * full_flops)
        policies[fraction] = calibration.policy
        cases[f"glance_focus budget {fraction}"] = (glance, {"policy": calibration.policy})
    scores = {name: score(model, eval_loader, kw) for name, (model, kw) in cases.items()}
    oracle = score(glance, eval_loader, {}, boxes=scored_boxes)

    rows = []
    for batch_size, samples in ((64, 64), (1, opts.batch1_samples)):
        batches = [b.contiguous(memory_format=torch.channels_last) for b in timed_batches(scored, samples, batch_size)]
        fns = {name: (lambda m=model, k=kw: [m(x, **k) for x in batches]) for name, (model, kw) in cases.items()}
        fns[IDEAL] = encoders_only(glance, batches)
        with torch.inference_mode():
            timing = compare(fns, threads=opts.threads, min_run_time=opts.min_run_time, rounds=opts.rounds)
        for name in cases:
            rows.append({"model": name, "batch_size": batch_size, **scores[name],
                         "speedup_flops": plain_flops / scores[name]["mean_flops"],
                         "speedup_measured": ratio(timing, "small_cnn", name),
                         "ms_per_sample": timing[name].median_ms / samples,
                         "thresholds": policies[float(name.split()[-1])].thresholds if "budget" in name else None})
        rows.append({"model": "glance_focus oracle", "batch_size": batch_size, **oracle,
                     "speedup_flops": plain_flops / oracle["mean_flops"], "speedup_measured": None,
                     "ms_per_sample": None, "thresholds": None})
        rows.append({"model": IDEAL, "batch_size": batch_size, "accuracy": None, "mean_flops": ideal_flops,
                     "mean_glimpses": float(glance.steps - 1), "speedup_flops": plain_flops / ideal_flops,
                     "speedup_measured": ratio(timing, "small_cnn", IDEAL),
                     "ms_per_sample": timing[IDEAL].median_ms / samples, "thresholds": None})
        for r in rows[-len(cases) - 2:]:
            print({k: r[k] for k in ("model", "batch_size", "accuracy", "mean_flops", "mean_glimpses",
                                     "speedup_flops", "speedup_measured")}, flush=True)

    results = Path(opts.results)
    results.mkdir(parents=True, exist_ok=True)
    picture(glance, scored, scored_boxes, results / "cluttered_glance.png")
    meta = {"threads": opts.threads, "train_steps": opts.max_steps, "train_seconds": train_seconds,
            "train_seconds_each": train_seconds_each,
            "schedule": f"each model: {opts.max_steps} steps AdamW lr {opts.lr} cosine wd 1e-4 batch "
                        f"{opts.batch_size}, seed 0, from scratch, the same batches; small_cnn and stn_cnn one "
                        f"stage; glance_focus GFNet's stages {dict(zip(STAGES, stage_steps))} (read: random "
                        "locations, policy untouched; policy: readers frozen, REINFORCE; fine_tune: greedy policy "
                        "fixed, local encoder + GRU + head), each stage its own cosine from the same lr",
            "models": MODELS,
            "evaluation": f"seeded 5k validation split: first {opts.calib} calibrate the budgets, the next "
                          f"{len(scored)} score; compact execution, eval mode",
            "timing": f"batch 64: one batch; batch 1: {opts.batch1_samples} images one by one; interleaved "
                      "rounds, channels-last, small_cnn timed in the same run",
            "flops_note": "resizing the glance and cropping patches are not counted (like pooling); the policy is",
            "command": "python benchmarks/cluttered_glance.py " + " ".join(sys.argv[1:])}
    write_json(results / "cluttered_glance.json", rows, meta)
    table = markdown_table(
        [{k: r.get(k) for k in ("model", "batch_size", "accuracy", "mean_flops", "mean_glimpses", "speedup_flops",
                                "speedup_measured")} for r in rows],
        floatfmt={"accuracy": ".4f", "mean_flops": ".4g", "mean_glimpses": ".2f", "speedup_flops": ".2f",
                  "speedup_measured": ".2f"})
    (results / "cluttered_glance.md").write_text(
        f"Schedule: {meta['schedule']}. Evaluation: {meta['evaluation']}. Timing: {meta['timing']}.\n\n{table}\n")
    print((results / "cluttered_glance.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
