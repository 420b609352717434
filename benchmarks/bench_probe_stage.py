"""Benchmark: the whole probe stage's wall time against the ideal packed makespan of its trials.

Builds an embedding store directly (``whichmodel.stages.store.write_partition`` + ``record_run``;
synthetic
embeddings, by default 4 models of dims 512/768/1024/2048 x 3 tasks of 10/25/50 classes,
800/200/200 train/val/test rows), starts Ray (``ray.init(num_cpus=2)``, not timed), then times
``whichmodel.stages.probe.probe(store, proxies, preset)`` with the preset's linear section (default
the
paper's: 2 lrs x 5 reps x 2,500 steps, batch 512) and prints the stage's wall time, the sum of its
trials' compute (``ProbeSummary.compute_seconds``: each trial times its own proxies) and the
makespan of packing the measured per-trial compute times (the sum of each pair's proxy seconds)
onto the ``concurrency`` = min(CPUs, pairs) one-CPU slots Tune runs them on:

- lower bound max(sum / concurrency, longest trial): no schedule can be shorter;
- LPT (longest trial first onto the least loaded slot): a feasible schedule, at most 4/3 of the
  optimum;
- the optimum, exact (branch and bound over assignments, seeded with LPT; small trial counts).

**Goal: wall <= 1.1 x the optimal packed makespan** (the ideal: the shortest wall time any
scheduler could reach with these trials and zero orchestration; it lies between the two bounds,
and unlike the lower bound it is attainable, unlike LPT it is not a particular scheduler's
result). The script prints PASS or FAIL and the wall against every bound, plus the makespan of
the order Tune actually starts trials in (grid order, each on the first free slot), which splits
what lies beyond the optimum into packing in grid order and orchestration.

It then times the stage's orchestration pieces separately: reading the store and ``ray.put`` of
every pair, and a Tune experiment with the same trials, resources and object references whose
trial does no compute (Tune start-up, scheduling, trial actors, result gathering), plus the
thread count torch gets inside a trial.

    .venv/bin/python benchmarks/bench_probe_stage.py [--steps 2500] [--proxies linear,knn,logme]

Before the timed stage it waits (up to ``--load-wait`` s) for the 1-minute load average to fall
below ``--load-max`` and prints the load it measured at, and again after the stage.
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from machine_load import load1, wait_for_load

from whichmodel.core.presets import load_preset
from whichmodel.stages.store import (
    Partition,
    partition_key,
    record_run,
    stored_pairs,
    write_partition,
)

ROWS = {"train": 800, "val": 200, "test": 200}
DIMS = (512, 768, 1024, 2048)
CLASSES = (10, 25, 50)
GOAL = 1.1  # wall <= GOAL x the optimal packed makespan


def makespan_bounds(
    times: list[float], slots: int, max_nodes: int = 2_000_000
) -> tuple[float, float, float, bool]:
    """(lower bound, optimum, LPT, exact) makespans of ``times`` packed onto ``slots`` slots.

    Lower bound max(sum / slots, max); LPT: longest first onto the least loaded slot; the
    optimum by branch and bound (jobs longest first, one branch per distinct slot load, pruned by
    max(largest load, (placed + remaining) / slots) against the best found, seeded with LPT).
    ``exact`` is False when ``max_nodes`` ran out first: the optimum is then the best found.
    """
    jobs = sorted((float(t) for t in times), reverse=True)
    if not jobs:
        return 0.0, 0.0, 0.0, True
    slots = max(1, min(slots, len(jobs)))
    lower = max(sum(jobs) / slots, jobs[0])
    loads = [0.0] * slots
    for t in jobs:
        loads[loads.index(min(loads))] += t
    lpt = max(loads)
    rest = [sum(jobs[i:]) for i in range(len(jobs) + 1)]
    best, nodes, eps = lpt, 0, 1e-9
    loads = [0.0] * slots

    def place(i: int) -> None:
        nonlocal best, nodes
        nodes += 1
        if nodes > max_nodes:
            return
        if i == len(jobs):
            best = min(best, max(loads))
            return
        if max(max(loads), (sum(loads) + rest[i]) / slots) >= best - eps:
            return
        tried = set()
        for k in sorted(range(slots), key=loads.__getitem__):
            if loads[k] in tried or loads[k] + jobs[i] >= best - eps:
                continue
            tried.add(loads[k])
            loads[k] += jobs[i]
            place(i + 1)
            loads[k] -= jobs[i]

    place(0)
    return lower, best, lpt, nodes <= max_nodes


def build_store(store: Path, n_models: int, n_tasks: int, seed: int) -> None:
    """Synthetic embeddings: class means + noise with a power-law spectrum (as bench_linear)."""
    models, tasks = {}, {}
    for t in range(n_tasks):
        tasks[f"task{t}"] = {"classes": [f"c{i}" for i in range(CLASSES[t % len(CLASSES)])]}
    for m in range(n_models):
        dim = DIMS[m % len(DIMS)]
        models[f"model{m}"] = {"dim": dim, "source": "synthetic", "device_seconds": 0.0}
        scale = np.arange(1, dim + 1) ** -0.75
        scale *= np.sqrt(dim / (scale**2).sum())
        for t, (task, info) in enumerate(tasks.items()):
            classes = len(info["classes"])
            rng = np.random.default_rng([seed, m, t])
            sep = 12.5 * (dim / 512) ** 0.6
            means = rng.normal(0.0, sep / np.sqrt(2 * dim), (classes, dim)) * scale
            for split, n in ROWS.items():
                label = np.arange(n) % classes
                rng.shuffle(label)
                emb = means[label] + rng.normal(0.0, 1.0, (n, dim)) * scale
                key = partition_key(f"model{m}", task, split, str(seed))
                part = Partition(store, f"model{m}", task, split, key)
                write_partition(part, np.arange(n), label, emb.astype(np.float32))
    record_run(store, models, tasks, {"stage": "bench_probe_stage", "seed": seed})


def noop_trial(config: dict, embeddings: dict, token: str = "") -> None:
    """The probe trial's orchestration without its compute: fetch the pair, report a row."""
    import json

    import ray
    import torch
    from ray import tune

    model, task = config["pair"]
    ray.get(embeddings[f"{model}\x1f{task}"])
    tune.report(
        {"rows": json.dumps([]), "compute_seconds": 0.0, "token": token,
         "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS", "")}
    )  # fmt: skip


def orchestration_pieces(store: Path, proxies: list[str], options: dict) -> None:
    """Time the stage's orchestration without compute (same pairs, refs, resources, Tune)."""
    import ray
    from ray import tune

    from whichmodel.stages.probe import _load_pair, _num_classes
    from whichmodel.stages.store import read_metadata

    t0 = time.perf_counter()
    pairs = stored_pairs(store)
    meta = read_metadata(store)
    loaded = {
        f"{m}\x1f{t}": _load_pair(parts, _num_classes(meta, t, parts))
        for (m, t), parts in pairs.items()
    }
    t1 = time.perf_counter()
    refs = {k: ray.put(v) for k, v in loaded.items()}
    t2 = time.perf_counter()
    trainable = tune.with_resources(
        tune.with_parameters(noop_trial, embeddings=refs, token="noop"), {"cpu": 1, "gpu": 0}
    )
    tmp = Path(tempfile.mkdtemp(prefix="noop-tune-"))
    try:
        tuner = tune.Tuner(
            trainable,
            param_space={
                "pair": tune.grid_search([list(k) for k in pairs]),
                "proxies": proxies,
                "options": options,
            },
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name="noop", storage_path=str(tmp), verbose=0),
        )
        t3 = time.perf_counter()
        results = tuner.fit()
        t4 = time.perf_counter()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    threads = sorted({(r.metrics["threads"], r.metrics["omp"]) for r in results})
    print(f"  read store + num_classes ({len(pairs)} pairs):    {t1 - t0:6.2f} s")
    print(f"  ray.put of every pair:                       {t2 - t1:6.2f} s")
    print(f"  Tune experiment, {len(pairs)} no-compute trials:      {t4 - t3:6.2f} s")
    print(f"  torch threads / OMP_NUM_THREADS in a trial:  {threads}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--proxies", default="linear,knn,logme")
    p.add_argument("--preset", default="paper")
    p.add_argument("--steps", type=int, default=None, help="override the preset's linear steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--no-pieces", action="store_true", help="skip the orchestration pieces")
    p.add_argument("--load-max", type=float, default=0.7)
    p.add_argument("--load-wait", type=float, default=180.0)
    args = p.parse_args()
    proxies = args.proxies.split(",")

    import ray
    import torch

    from whichmodel.stages.probe import probe, proxy_options

    preset = load_preset(args.preset)
    if args.steps is not None:
        preset["linear"] = dict(preset["linear"], steps=args.steps)
    print(
        f"machine: {platform.machine()}, nproc={os.cpu_count()}, Python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, ray {ray.__version__}"
    )
    print(f"preset {args.preset!r}, linear {preset['linear']}; proxies {proxies}")
    root = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    store = root / "store"
    try:
        t = time.perf_counter()
        build_store(store, args.models, args.tasks, args.seed)
        pairs = stored_pairs(store)
        print(
            f"store: {len(pairs)} pairs ({args.models} models, dims "
            f"{[DIMS[m % len(DIMS)] for m in range(args.models)]} x {args.tasks} tasks, classes "
            f"{[CLASSES[t % len(CLASSES)] for t in range(args.tasks)]}), rows {ROWS}, "
            f"built in {time.perf_counter() - t:.1f} s (not timed)"
        )
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        print(f"ray.init(num_cpus={args.cpus}): {time.perf_counter() - t:.1f} s (not timed)")

        wait_for_load(args.load_max, args.load_wait)
        t = time.perf_counter()
        summary = probe(store, proxies, preset)
        outer = time.perf_counter() - t
        wall, compute = summary.wall_seconds, summary.compute_seconds
        conc = min(args.cpus, len(pairs))
        print(f"probe stage: {summary.trials_run} trials run, {summary.trials_reused} reused")
        print(f"  wall (ProbeSummary.wall_seconds):   {wall:8.2f} s  (outer timer {outer:.2f} s)")
        print(f"  sum of trial compute:               {compute:8.2f} s")
        per = summary.scores.group_by("proxy").agg(pl.col("seconds").sum().alias("s"))
        per_txt = ", ".join(f"{r['proxy']} {r['s']:.2f} s" for r in per.sort("proxy").to_dicts())
        print(f"  of which per proxy (run_proxy):     {per_txt}")
        by_pair = summary.scores.group_by("model", "task").agg(pl.col("seconds").sum().alias("s"))
        per_trial = by_pair["s"].to_list()
        lower, best, lpt, exact = makespan_bounds(per_trial, conc)
        slow = by_pair.sort("s", descending=True).row(0)
        print(
            f"  per-trial compute (sum of each pair's proxy seconds): {sum(per_trial):.2f} s in "
            f"all, {min(per_trial):.2f}-{max(per_trial):.2f} s; slowest {slow[0]}/{slow[1]}"
        )
        print(f"  packed onto {conc} one-CPU slots, zero overhead:")
        opt_name = "optimum (exact):" if exact else "best found (search cut):"
        for name, value in (
            (f"lower bound max(sum/{conc}, longest):", lower),
            (opt_name, best),
            ("LPT (longest first):", lpt),
        ):
            print(f"    {name:<36}{value:8.2f} s  (wall / it {wall / value:.3f})")
        # Tune starts the grid's trials in order, each on the first free slot: the makespan of
        # that schedule with zero overhead separates packing in grid order from orchestration
        slots = [0.0] * conc
        for sec in by_pair.sort("model", "task")["s"]:
            slots[slots.index(min(slots))] += sec
        span = max(slots)
        grid = "grid order (Tune's start order):"
        print(
            f"    {grid:<36}{span:8.2f} s  -> beyond the optimum: packing "
            f"in grid order {span - best:.2f} s, orchestration {wall - span:.2f} s"
        )
        verdict = "PASS" if wall <= GOAL * best else "FAIL"
        print(
            f"  goal wall <= {GOAL} x optimal packed makespan ({GOAL * best:.2f} s): {verdict} "
            f"(wall / optimum {wall / best:.3f})"
        )
        print(f"  load1 after the stage: {load1():.2f}")
        lin = summary.scores.filter(pl.col("proxy") == "linear")
        print(f"  linear scores: {[round(s, 3) for s in lin['score'].to_list()]}")
        if not args.no_pieces:
            print("orchestration pieces (separate, after the stage):")
            orchestration_pieces(store, proxies, proxy_options(preset, proxies))
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
