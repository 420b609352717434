"""Benchmark: budget curves of every strategy at every budget, engine vs a plain Python loop.

Builds a synthetic pool (default 1,000 models x 100 tasks, two proxies, so 11 strategies),
times ``pool_outcomes`` + ``curves_table`` (best of 3), times a straightforward per-strategy,
per-task, per-budget loop computing the same two curve columns, checks that the numbers agree
and prints both times and their ratio.

    .venv/bin/python benchmarks/bench_curves.py [--models 1000 --tasks 100 --seed 0]

``--baseline-tasks N`` runs the loop on the first N tasks only and extrapolates its time
linearly to all tasks (tasks are independent); the agreement check then covers those N tasks.
"""

import argparse
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np
import polars as pl
from scipy.special import gammaln
from scipy.stats import spearmanr

from whichmodel.analysis.analyze import curves_table
from whichmodel.analysis.curves import pool_outcomes
from whichmodel.analysis.strategies import PoolData, strategies_for
from whichmodel.core import schema

GOAL_S = 2.0
N_STRATEGIES = 11
UPSTREAM = {  # upstream dataset -> size (None = unknown size)
    "imagenet-1k": 1_281_167,
    "imagenet-21k": 14_197_122,
    "jft-300m": 300_000_000,
    "laion-400m": 400_000_000,
    "laion-2b": 2_320_000_000,
    "inhouse": None,
}
FAMILIES = ("resnet", "vit", "convnext", "efficientnet", "swin", "deit", "regnet", "clip")


# --------------------------------------------------------------------------------------------
# Synthetic pool
# --------------------------------------------------------------------------------------------


def synthetic_pool(n_models: int, n_tasks: int, seed: int) -> PoolData:
    """A seeded pool whose accuracies are model quality + task difficulty + noise.

    Accuracies are k / n_test for a per-task test-set size, so models tie within a task (as real
    test accuracies do). ImageNet top-1 is a noisy
    correlate of model quality, null for ~30% of models; upstream sizes repeat (ties) and are
    unknown for some; params are rounded to whole millions (more ties). The "linear" proxy
    applies to every model; "knn" is a validation accuracy k / n_val (many ties, so the tie rule
    matters) and NaN (not applicable) for ~3% of models.
    """
    rng = np.random.default_rng(seed)
    quality = rng.normal(0.0, 1.0, n_models)
    difficulty = rng.normal(0.0, 1.0, n_tasks)
    affinity = rng.normal(0.0, 0.5, (n_tasks, n_models))  # task-specific model fit
    logits = 1.2 + 0.7 * quality[None, :] - 1.0 * difficulty[:, None] + affinity
    n_test = rng.integers(300, 20_000, n_tasks)
    acc = np.round(n_test[:, None] / (1.0 + np.exp(-logits))) / n_test[:, None]
    acc = np.clip(acc, 1.0 / n_test[:, None], 1.0)

    models = [f"m{m:04d}" for m in range(n_models)]
    upstream_names = list(UPSTREAM)
    upstream = rng.choice(upstream_names, n_models, p=[0.35, 0.25, 0.1, 0.1, 0.1, 0.1])
    top1 = np.clip(0.78 + 0.04 * quality + rng.normal(0.0, 0.02, n_models), 0.3, 0.95)
    top1 = np.round(top1, 3)  # catalogues report 3 decimals: ties
    has_top1 = rng.random(n_models) > 0.3
    params = (np.round(np.exp(rng.uniform(np.log(3e6), np.log(1e9), n_models)) / 1e6) * 1e6).astype(
        np.int64
    )
    meta = pl.DataFrame(
        {
            "model": models,
            "family": rng.choice(FAMILIES, n_models).tolist(),
            "source": rng.choice(["timm", "hf", "torchvision"], n_models).tolist(),
            "upstream_dataset": upstream.tolist(),
            "upstream_size": [UPSTREAM[u] for u in upstream],
            "imagenet_top1": [float(v) if h else None for v, h in zip(top1, has_top1, strict=True)],
            "params": params.tolist(),
            "dim": rng.choice([384, 512, 768, 1024, 1280, 2048], n_models).tolist(),
        },
        schema=schema.CATALOGUE,
    )

    linear = acc + rng.normal(0.0, 0.04, acc.shape)
    # a kNN accuracy on a small validation split: k / n_val, so models tie within a task
    n_val = rng.integers(100, 1000, n_tasks)[:, None]
    knn = np.round(np.clip(acc + rng.normal(0.0, 0.05, acc.shape), 0.0, 1.0) * n_val) / n_val
    knn[:, rng.random(n_models) < 0.03] = np.nan
    return PoolData(
        name="synthetic",
        models=models,
        tasks=[f"t{t:03d}" for t in range(n_tasks)],
        categories=rng.choice(["natural", "specialized", "structured"], n_tasks).tolist(),
        acc=acc,
        meta=meta,
        scores={"linear": linear, "knn": knn},
    )


# --------------------------------------------------------------------------------------------
# Baseline: a straightforward loop
# --------------------------------------------------------------------------------------------
# Rankings are computed per task with plain Python sorted(), using the engine's tie rules
# (descending score; NaN last; ties by position in the task-agnostic order, which itself ends in
# catalogue order). The per-model values that task_agnostic_oracle / task_agnostic_loo rank by
# (mean accuracy over all tasks / over the other tasks) use the same NumPy expressions as the
# engine, computed once per strategy, so that exact float ties break identically.
# similar_tasks_<proxy> picks each task's neighbours with scipy.stats.spearmanr per task pair.


def py_task_agnostic(meta: pl.DataFrame) -> list[int]:
    rows = meta.select("imagenet_top1", "upstream_size", "params").rows()

    def key(m):
        top1, upstream, params = rows[m]
        return (
            top1 is None,
            0.0 if top1 is None else -top1,
            upstream is None,
            0 if upstream is None else -upstream,
            -params,
            m,
        )

    return sorted(range(len(rows)), key=key)


def py_rank(values: list[float], tie_pos: list[int]) -> list[int]:
    """Descending by value, NaN last, ties by task-agnostic position."""

    def key(m):
        v = values[m]
        return (1, 0.0, tie_pos[m]) if math.isnan(v) else (0, -v, tie_pos[m])

    return sorted(range(len(values)), key=key)


def py_similar_neighbours(scores: np.ndarray, k: int = 3) -> list[list[int]]:
    """Per task, the up to k other tasks with the highest positive Spearman ρ of proxy scores
    (over the models scored on both; ties by task order); empty when there is none."""
    n_tasks = scores.shape[0]
    rows = [scores[t].tolist() for t in range(n_tasks)]
    sim = [[None] * n_tasks for _ in range(n_tasks)]
    for t in range(n_tasks):
        for u in range(t + 1, n_tasks):
            pairs = enumerate(zip(rows[t], rows[u], strict=True))
            both = [m for m, (a, b) in pairs if not (math.isnan(a) or math.isnan(b))]
            a, b = [rows[t][m] for m in both], [rows[u][m] for m in both]
            if len(both) >= 3 and len(set(a)) > 1 and len(set(b)) > 1:
                sim[t][u] = sim[u][t] = float(spearmanr(a, b).statistic)
    out = []
    for t in range(n_tasks):
        near = sorted((-s, u) for u, s in enumerate(sim[t]) if s is not None and s > 0)
        out.append([u for _, u in near[:k]] if n_tasks >= 3 else [])
    return out


def baseline_curves(
    pool: PoolData, names: list[str], n_tasks: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """strategy -> (frac_zero_regret, mean_rel_regret) over budgets 1..M, on the first n_tasks."""
    acc = pool.acc
    n_models = acc.shape[1]
    agnostic = py_task_agnostic(pool.meta)
    tie_pos = [0] * n_models
    for pos, m in enumerate(agnostic):
        tie_pos[m] = pos
    mean_acc = acc.mean(axis=0, keepdims=True)[0].tolist()
    col_sum = acc.sum(axis=0, keepdims=True)

    neighbours = {
        name: py_similar_neighbours(pool.scores[name.removeprefix("similar_tasks_")])
        for name in names
        if name.startswith("similar_tasks_")
    }

    out = {}
    for name in names:
        zero_sum = [0.0] * n_models
        rel_sum = [0.0] * n_models
        for t in range(n_tasks):
            row = acc[t]
            oracle = float(row.max())
            if name == "random":
                ordered = np.sort(row)
                best = (ordered == oracle).astype(np.float64)
                rel_each = np.array(
                    [(oracle - a) / (1.0 - a) if a < 1.0 else 0.0 for a in ordered.tolist()]
                )
                i = np.arange(n_models, dtype=np.float64)
                for b in range(1, n_models + 1):
                    # P(max of a uniform b-subset is the i-th smallest) = C(i, b-1) / C(M, b)
                    log_comb_mb = gammaln(n_models + 1) - gammaln(b + 1) - gammaln(n_models - b + 1)
                    w = np.zeros(n_models)
                    ii = i[b - 1 :]
                    w[b - 1 :] = np.exp(
                        gammaln(ii + 1) - gammaln(b) - gammaln(ii - b + 2) - log_comb_mb
                    )
                    zero_sum[b - 1] += float(best @ w)
                    rel_sum[b - 1] += float(rel_each @ w)
                continue

            if name == "task_agnostic":
                order = agnostic
            elif name == "oracle":
                order = py_rank(row.tolist(), tie_pos)
            elif name == "task_agnostic_oracle":
                order = py_rank(mean_acc, tie_pos)
            elif name == "task_agnostic_loo":
                loo = (col_sum[0] - row) / (acc.shape[0] - 1)
                order = py_rank(loo.tolist(), tie_pos)
            elif name.startswith("similar_tasks_") and neighbours[name][t]:
                near = neighbours[name][t]
                mean = np.round(acc[near].mean(axis=0), 12)
                order = py_rank(mean.tolist(), tie_pos)
            elif name.startswith("similar_tasks_"):  # no positive neighbour: task_agnostic_loo
                loo = (col_sum[0] - row) / (acc.shape[0] - 1)
                order = py_rank(loo.tolist(), tie_pos)
            elif name.startswith("hybrid_"):
                aware = py_rank(pool.scores[name.removeprefix("hybrid_")][t].tolist(), tie_pos)
                top = agnostic[0]
                order = [top] + [m for m in aware if m != top]
            else:
                order = py_rank(pool.scores[name][t].tolist(), tie_pos)
            order = np.asarray(order)
            for b in range(1, n_models + 1):
                picked = float(row[order[:b]].max())
                rel = (oracle - picked) / (1.0 - picked) if picked < 1.0 else 0.0
                zero_sum[b - 1] += 1.0 if picked == oracle else 0.0
                rel_sum[b - 1] += rel
        out[name] = (np.array(zero_sum) / n_tasks, np.array(rel_sum) / n_tasks)
    return out


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem_s = f", {mem:.0f} GiB RAM"
    except (ValueError, OSError):
        mem_s = ""
    return f"{platform.machine()} {cpu or '?'}, nproc={nproc}{mem_s}; Python {sys.version}"


def engine_run(pool: PoolData) -> tuple[pl.DataFrame, dict]:
    outcomes = pool_outcomes(pool)
    return curves_table(pool, outcomes), outcomes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="engine runs; the best is reported")
    ap.add_argument(
        "--baseline-tasks",
        type=int,
        default=None,
        help="run the loop on the first N tasks and extrapolate its time (default: all tasks)",
    )
    args = ap.parse_args(argv)

    pool = synthetic_pool(args.models, args.tasks, args.seed)
    names = list(strategies_for(pool))
    assert len(names) == N_STRATEGIES, names
    n_tasks, n_models = pool.acc.shape
    n_base = n_tasks if args.baseline_tasks is None else min(args.baseline_tasks, n_tasks)

    print(f"machine:    {machine()}")
    print(
        f"sizes:      {n_models} models x {n_tasks} tasks x {n_models} budgets x "
        f"{len(names)} strategies (seed {args.seed}; {np.unique(pool.acc).size} distinct acc)"
    )
    print(f"strategies: {', '.join(names)}")

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        table, outcomes = engine_run(pool)
        times.append(time.perf_counter() - t0)
    t_engine = min(times)
    print(
        f"engine:     {t_engine:.3f} s  (pool_outcomes + curves_table, best of {args.repeats}: "
        + ", ".join(f"{t:.3f}" for t in times)
        + ")"
    )

    t0 = time.perf_counter()
    base = baseline_curves(pool, names, n_base)
    t_base_run = time.perf_counter() - t0
    t_base = t_base_run * n_tasks / n_base
    if n_base < n_tasks:
        print(
            f"baseline:   {t_base:.1f} s  EXTRAPOLATED linearly from {n_base} of {n_tasks} tasks "
            f"({t_base_run:.1f} s measured)"
        )
    else:
        print(f"baseline:   {t_base:.1f} s  (plain loop, all {n_tasks} tasks, one run)")

    max_diff = 0.0
    for name in names:
        if n_base == n_tasks:
            rows = table.filter(pl.col("strategy") == name).sort("budget")
            assert rows["budget"].to_list() == list(range(1, n_models + 1))
            zero = rows["frac_zero_regret"].to_numpy()
            rel = rows["mean_rel_regret"].to_numpy()
        else:
            zero = outcomes[name].zero[:n_base].mean(axis=0)
            rel = outcomes[name].rel[:n_base].mean(axis=0)
        b_zero, b_rel = base[name]
        max_diff = max(max_diff, np.abs(zero - b_zero).max(), np.abs(rel - b_rel).max())
        np.testing.assert_allclose(zero, b_zero, rtol=0, atol=1e-9, err_msg=f"{name} zero")
        np.testing.assert_allclose(rel, b_rel, rtol=0, atol=1e-9, err_msg=f"{name} rel")
    scope = "all tasks" if n_base == n_tasks else f"the first {n_base} tasks"
    print(
        f"numbers agree (atol 1e-9, {len(names)} strategies x {n_models} budgets, {scope}; "
        f"max abs difference {max_diff:.1e})"
    )

    print(f"ratio:      {t_base / t_engine:.0f}x  (baseline / engine)")
    met = "met" if t_engine < GOAL_S else "NOT met"
    print(f"goal:       engine under {GOAL_S:.0f} s: {met} ({t_engine:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
