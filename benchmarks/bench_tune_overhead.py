"""Benchmark: the fine-tune stage's Ray Tune experiment against the same fine-tunes in a loop.

The same set of fine-tunes (default: the ``quick`` preset's grid, 2 lrs x 2 repetitions, for the
converted EfficientNet-Lite0 and a random-init resnet10t on the built-in ``digits`` task: 8
fine-tunes) runs

(a) through ``whichmodel.stages.finetune.run_finetune``: Ray Data decode, ``tune.with_parameters``,
one
    Tune trial per fine-tune with its checkpoints, the table; Ray is started before (not timed)
    with ``--cpus`` CPUs, so ``--cpus`` one-CPU trials run at a time;
(b) in a plain Python loop in this process calling ``whichmodel.actors.finetune.finetune`` on the
same
    decoded pixels (decoded once with ``decode_task``, timed as part of the loop), with
    ``torch.set_num_threads(--cpus)``: the same threads in total, no checkpoints.

It prints both wall times, the per-trial overhead ((a) - (b)) / trials, the ratio (a) / (b) (goal
<= 1.15 for ``quick``), the sum of the trials' own seconds (time inside ``finetune`` in a trial,
checkpoint writes included), whether both paths reached the same accuracies (they do exactly
with ``--cpus 1``: one thread each, CPU float32) and the machine. The default ``--cpus 1`` makes
(a) - (b) pure orchestration; with ``--cpus 2`` Tune's two single-thread trials also compete
with one two-thread loop.

    .venv/bin/python benchmarks/bench_tune_overhead.py [--cpus 1] [--order tune,loop]
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
from machine_load import load1

KEYS = ["model", "task", "lr", "rep"]


def write_world(root: Path, train: int, val: int, max_test: int) -> tuple[Path, Path]:
    """A catalogue (converted EfficientNet-Lite0 + random-init resnet10t) and a tasks file."""
    from whichmodel.demo.convert import convert_efficientnet_lite

    weights = convert_efficientnet_lite(0, root / "weights")
    entry = (
        '[[models]]\nmodel = "{m}"\nfamily = "f"\nsource = "{s}"\nupstream_dataset = "d"\n'
        "params = 1\ndim = 1\n"
    )
    models = [("lite0", f"timm:tf_efficientnet_lite0@{weights}"), ("r10", "timm:resnet10t@random")]
    (root / "catalog.toml").write_text(
        "".join(entry.format(m=m, s=s) for m, s in models) + '[pools]\nBench = "true"\n'
    )
    (root / "tasks.toml").write_text(
        f'[[tasks]]\nname = "digits"\nsource = "builtin"\ntrain = {train}\nval = {val}\n'
        f"max_test = {max_test}\n"
    )
    return root / "catalog.toml", root / "tasks.toml"


def run_tune(catalogue, specs, preset, out: Path) -> tuple[float, pl.DataFrame, int]:
    from whichmodel.stages.finetune import run_finetune

    t = time.perf_counter()
    summary = run_finetune(catalogue, "Bench", specs, preset, out)
    wall = time.perf_counter() - t
    print("    phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in summary.phases.items()))
    return wall, summary.runs, summary.trials_run


def run_loop(catalogue, specs, preset, threads: int) -> tuple[float, float, pl.DataFrame]:
    """The same fine-tunes one after another in this process; returns (wall, decode, runs)."""
    import torch

    from whichmodel.actors.finetune import FinetuneConfig, decode_task, finetune
    from whichmodel.stages.embed import EmbedConfig, plan_model
    from whichmodel.tasks.loader import load_task

    ft = preset["finetune"]
    torch.set_num_threads(threads)
    t = time.perf_counter()
    members = catalogue.pool("Bench")
    cfg = EmbedConfig(image_size=ft["image_size"] or None)
    plans = {
        m: plan_model(m, s, catalogue.path.parent, cfg)
        for m, s in members.select("model", "source").iter_rows()
    }
    tasks = {s.name: load_task(s) for s in specs}
    pixels = {}
    for name, task in tasks.items():
        for p in plans.values():
            geometry = (p.size, p.resize, p.interpolation)
            if (geometry, name) not in pixels:
                pixels[geometry, name] = decode_task(task, *geometry)
    decode = time.perf_counter() - t
    settings = {k: ft[k] for k in ("steps", "batch_size", "head_steps", "augment", "precision")}
    settings["head_lr"] = float(ft["head_lr"])
    rows = []
    for m, p in plans.items():
        for name in tasks:
            data = pixels[(p.size, p.resize, p.interpolation), name]
            for lr in ft["lrs"]:
                for rep in range(int(ft["reps"])):
                    fc = FinetuneConfig(lr=float(lr), seed=rep, **settings)
                    res = finetune(p.source, m, data, p.mean, p.std, fc)
                    rows.append(
                        {"model": m, "task": name, "lr": float(lr), "rep": rep,
                         "val_acc": res.val_acc, "test_acc": res.test_acc,
                         "seconds": res.seconds}
                    )  # fmt: skip
    return time.perf_counter() - t, decode, pl.DataFrame(rows).sort(KEYS)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpus", type=int, default=1, help="Ray CPUs = loop threads (default 1)")
    p.add_argument("--preset", default="quick")
    p.add_argument("--train", type=int, default=800)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--max-test", type=int, default=500)
    p.add_argument("--order", default="tune,loop", help="which path runs first")
    p.add_argument("--keep", type=Path, help="keep the Tune output here (default: a temp dir)")
    args = p.parse_args()

    import ray
    import torch

    from whichmodel.core.catalog import load_catalogue
    from whichmodel.core.presets import load_preset
    from whichmodel.tasks.loader import load_tasks

    preset = load_preset(args.preset)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, nproc={os.cpu_count()}, "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}, ray {ray.__version__}, "
        f"CUDA {torch.cuda.is_available()}"
    )
    print(f"preset {args.preset!r} finetune {preset['finetune']}")
    root = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    try:
        cat_path, tasks_path = write_world(root, args.train, args.val, args.max_test)
        catalogue, specs = load_catalogue(cat_path), load_tasks(tasks_path)
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        print(f"ray.init(num_cpus={args.cpus}): {time.perf_counter() - t:.1f} s (not timed)")
        results = {}
        for path in args.order.split(","):
            print(f"load1 before {path}: {load1():.2f}", flush=True)
            if path == "tune":
                out = args.keep or root / "tune-out"
                wall, runs, ran = run_tune(catalogue, specs, preset, out)
                results["tune"] = (wall, runs)
                print(f"(a) Tune: {wall:8.2f} s wall, {ran} trials run")
            else:
                wall, decode, runs = run_loop(catalogue, specs, preset, args.cpus)
                results["loop"] = (wall, runs)
                print(f"(b) loop: {wall:8.2f} s wall ({decode:.2f} s decode), {runs.height} runs")
        (tw, truns), (lw, lruns) = results["tune"], results["loop"]
        n = truns.height
        assert truns.select(KEYS).equals(lruns.select(KEYS)), "the two paths ran different sets"
        same = truns.select("val_acc", "test_acc").equals(lruns.select("val_acc", "test_acc"))
        print(f"trials: {n}; same accuracies on both paths: {same}")
        print(f"sum of trial seconds (inside finetune, Tune): {truns['seconds'].sum():8.2f} s")
        print(f"sum of fine-tune seconds (loop):             {lruns['seconds'].sum():8.2f} s")
        print(f"per-trial overhead: {(tw - lw) / n:+.2f} s; ratio Tune/loop: {tw / lw:.3f}")
        print(f"load1 at end: {load1():.2f}")
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
