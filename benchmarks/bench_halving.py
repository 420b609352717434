"""Benchmark: successive halving (sync and async) against fixed-B at equal steps and all K.

One run, on built-in tasks (default digits and textures, small splits) and a pool of the three
real ImageNet EfficientNet-Lites (converted from their wheels) plus random-init timm controls:

1. embed the tasks and probe them (``linear``) → the scores of the ``hybrid_linear`` ranking;
2. the oracle: ``run_finetune`` over every model of the pool (``finetune --all``), whose runs give
   t(model, task) and the device-seconds of every fine-tune;
3. ``run_halving`` over the ranking's top K with ``--total-steps`` per task, in each mode of
   ``--modes`` (sync, async);
4. ``run_fixed_equal_steps``: the ranking's top B fine-tuned at the same ``--total-steps``
   (``fixed_plan``: B = ceil(S / one model's full cost), S // (B x lrs x reps) steps per run);
5. ``compare_at_equal_compute``: per task, every side's pick by the validation accuracy of its
   own runs, its regret (the oracle's t of the picked model), steps actually spent and
   device-seconds; all K candidates fine-tuned in full (the oracle's runs) as the reference.

Every fine-tune uses the preset below (quick's protocol, smaller numbers; ``--steps`` etc.).
Prints the machine, each stage's wall time, the comparison rows and their means over tasks.

    .venv/bin/python benchmarks/bench_halving.py [--tasks digits,textures] [--top-k 3]
        [--steps 40] [--grace 10] [--total-steps 120] [--size 32] [--modes sync,async]
        [--out DIR]
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from whichmodel.core.catalog import load_catalogue
from whichmodel.core.presets import load_preset
from whichmodel.demo.convert import IMAGENET_TRAIN_SIZE, LITE_TOP1, convert_efficientnet_lite
from whichmodel.stages.embed import EmbedConfig, embed
from whichmodel.stages.finetune import run_finetune
from whichmodel.stages.halving import (
    HalvingConfig,
    compare_at_equal_compute,
    fixed_plan,
    format_halving,
    load_oracle,
    run_fixed_equal_steps,
    run_halving,
)
from whichmodel.stages.probe import probe
from whichmodel.tasks.loader import load_tasks

RANDOM = {"rand_resnet10t": "resnet10t", "rand_mnv3": "mobilenetv3_small_100"}


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    return (
        f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(load1 {load}), {gpu}; Python {platform.python_version()}, torch {torch.__version__}"
    )


def write_world(root: Path, tasks: list[str]) -> None:
    """Catalogue (lite0/1/2 + random controls, pool All) and a tasks file of small built-ins."""
    weights = root / "weights"
    entries = []
    for v in (0, 1, 2):
        path = convert_efficientnet_lite(v, weights)
        entries.append(
            f'[[models]]\nmodel = "lite{v}"\nfamily = "imagenet"\n'
            f'source = "timm:tf_efficientnet_lite{v}@{path.relative_to(root)}"\n'
            f'upstream_dataset = "imagenet"\nupstream_size = {IMAGENET_TRAIN_SIZE}\n'
            f"imagenet_top1 = {LITE_TOP1[v]}\nparams = {v + 1}\ndim = 1280\n"
        )
    for name, arch in RANDOM.items():
        entries.append(
            f'[[models]]\nmodel = "{name}"\nfamily = "random"\nsource = "timm:{arch}@random"\n'
            'upstream_dataset = "none"\nparams = 1\ndim = 1\n'
        )
    (root / "catalog.toml").write_text("\n".join(entries) + '\n[pools]\nAll = "true"\n')
    (root / "tasks.toml").write_text(
        "".join(
            f'[[tasks]]\nname = "{t}"\ncategory = "natural"\nsource = "builtin"\n'
            f"train = 200\nval = 100\nmax_test = 300\n\n"
            for t in tasks
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="digits,textures")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="fine-tune steps of a full run")
    ap.add_argument("--grace", type=int, default=10, help="first rung (steps)")
    ap.add_argument("--eta", type=int, default=2)
    ap.add_argument("--total-steps", type=int, default=120, help="halving budget per task")
    ap.add_argument("--lrs", default="0.01,0.001")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--size", type=int, default=32, help="input size (px)")
    ap.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)), help="Ray CPUs")
    ap.add_argument("--modes", default="sync,async", help="halving modes to run")
    ap.add_argument("--out", type=Path, help="work directory (default: a temporary one)")
    args = ap.parse_args()

    print(machine(), flush=True)
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-halving-"))
    root.mkdir(parents=True, exist_ok=True)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    write_world(root, tasks)
    preset = load_preset("quick")
    preset["finetune"] = dict(
        preset["finetune"],
        image_size=args.size,
        lrs=[float(x) for x in args.lrs.split(",")],
        reps=args.reps,
        steps=args.steps,
        batch_size=args.batch_size,
        head_steps=100,
        checkpoint_every=args.grace,
    )
    ft = preset["finetune"]
    print(
        f"preset: {len(ft['lrs'])} lrs x {ft['reps']} reps x {ft['steps']} steps, batch "
        f"{ft['batch_size']}, {args.size} px; halving top-{args.top_k}, eta {args.eta}, grace "
        f"{args.grace}, {args.total_steps} steps per task",
        flush=True,
    )
    import ray

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        cat = load_catalogue(root / "catalog.toml")
        specs = load_tasks(root / "tasks.toml")
        t0 = time.perf_counter()
        embed(cat, "All", specs, root / "store", EmbedConfig(image_size=args.size))
        scores = probe(root / "store", ["linear"], preset).scores
        wall = {"embed+probe": time.perf_counter() - t0}
        t0 = time.perf_counter()
        oracle_run = run_finetune(cat, "All", specs, preset, root / "oracle")
        oracle_run.runs.write_parquet(root / "oracle.parquet")
        wall["oracle (all models)"] = time.perf_counter() - t0
        summaries = {}
        for mode in modes:
            cfg = HalvingConfig(
                args.top_k, args.total_steps, "hybrid_linear", args.eta, args.grace, mode
            )
            t0 = time.perf_counter()
            summaries[mode] = run_halving(
                cat, "All", specs, preset, root / f"halving-{mode}", cfg, scores
            )
            wall[f"halving {mode}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rankings = next(iter(summaries.values())).rankings
        fixed = run_fixed_equal_steps(cat, "All", specs, preset, root / "fixed", cfg, rankings)
        wall["fixed equal steps"] = time.perf_counter() - t0
    finally:
        ray.shutdown()
    oracle = load_oracle(root / "oracle.parquet")
    comparison = pl.concat(
        [compare_at_equal_compute(s, oracle, fixed) for s in summaries.values()]
    ).unique(maintain_order=True)
    b, per_run = fixed_plan(cfg, ft)
    print("\nwall: " + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items()))
    print(f"fixed_equal_steps: B = {b}, {per_run} steps per run\n")
    for mode, summary in summaries.items():
        print(f"--- halving {mode}")
        print(format_halving(summary.arms, comparison))
    means = (
        comparison.group_by("method", maintain_order=True)
        .agg(
            pl.col("budget").mean().alias("mean_B"),
            pl.col("steps").mean().alias("mean_steps"),
            pl.col("device_seconds").mean().alias("mean_device_s"),
            pl.col("picked_acc").mean().alias("mean_t"),
            pl.col("abs_regret").mean().alias("mean_abs_regret"),
            pl.col("rel_regret").mean().alias("mean_rel_regret"),
            (pl.col("abs_regret") == 0).mean().alias("frac_zero_regret"),
        )
        .sort("method")
    )
    with pl.Config(tbl_rows=40, tbl_cols=20, tbl_width_chars=200, float_precision=3):
        print(f"rows:\n{comparison.drop('strategy', 'oracle_acc')}")
        print(f"means over {len(tasks)} task(s):\n{means}")
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
