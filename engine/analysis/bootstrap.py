"""Paired bootstrap over tasks: 95 % intervals of mean relative regret and of differences
between strategies (issue 19).

One set of resamples per pool: ``n_boot`` draws of T task indices with replacement from
``numpy.random.default_rng(seed)`` (the draw ``scipy.stats.bootstrap`` makes), shared by every
strategy and budget, so a difference of two strategies is resampled as pairs of the same tasks.
The interval is the percentile one (``np.percentile``, linear), as ``scipy.stats.bootstrap(...,
method='percentile')``. Pure NumPy/Polars.

Two levels, where the finetune table has R > 1 repetitions of every (model, task) of a pool:
after the task draw the same generator draws, for each drawn task slot, R repetition indices
with replacement (``integers(0, R, (n_boot, T, R))``), the same for every model and strategy
(paired); the slot's accuracies are the mean over the drawn repetitions, and each strategy's
regret is recomputed from them: its ranking stays the one of the analysis (proxy rankings do not
see fine-tune noise; those built from other tasks' fine-tune accuracies, task_agnostic_oracle,
task_agnostic_loo and similar_tasks_*, keep the order from the median accuracies), except
``oracle``, re-ranked on the slot's accuracies, and ``random``, whose exact expectation
is recomputed. With R = 1 every slot's regret is the analysis' own, so the intervals equal the
one-level bootstrap's exactly.
"""

from collections.abc import Mapping

import numpy as np
import polars as pl

from whichmodel.analysis.curves import StrategyOutcome, prefix_outcome, random_expectation
from whichmodel.analysis.strategies import PoolData, _rank_by, task_agnostic_order
from whichmodel.core import schema

DEFAULT_BOOTSTRAP = 1000
SEED = 0
LEVEL = 0.95
REFERENCES = ("hybrid_linear", "task_agnostic")  # the first that ran is the diff's reference
UNDECIDED = "not distinguishable at 95 %"
CHUNK_ELEMENTS = 4_000_000  # resamples are processed in chunks of about this many floats


def resample_tasks(n_tasks: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_tasks) task indices drawn with replacement (scipy.stats.bootstrap's draw)."""
    return rng.integers(0, n_tasks, (n_boot, n_tasks))


def interval(means: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis (resamples) of resampled means."""
    alpha = (1.0 - level) / 2.0
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return low, high


def resampled_means(
    pool: PoolData,
    outcomes: Mapping[str, StrategyOutcome],
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = SEED,
    reps: np.ndarray | None = None,
    log_odds: bool = False,
) -> dict[str, np.ndarray]:
    """Per strategy, (n_boot, budgets): the mean relative regret over the resampled tasks.

    ``reps``: (tasks, models, R) per-repetition test accuracies of the pool (the two-level
    bootstrap, see the module docstring), or None (tasks only)."""
    rng = np.random.default_rng(seed)
    n_tasks = len(pool.tasks)
    idx = resample_tasks(n_tasks, n_boot, rng)
    n_reps = 1 if reps is None else reps.shape[2]
    rep_idx = None if reps is None else rng.integers(0, n_reps, (n_boot, n_tasks, n_reps))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in outcomes}
    step = max(1, CHUNK_ELEMENTS // (n_tasks * pool.size * n_reps))  # bounded memory
    for start in range(0, n_boot, step):
        rows = idx[start : start + step]
        if reps is None:
            for name, out in outcomes.items():
                parts[name].append(out.rel[rows].mean(axis=1))
            continue
        # (resamples, T, R, models) → mean over the drawn repetitions → one row per slot
        acc = reps[rows[:, :, None], :, rep_idx[start : start + step]].mean(axis=2)
        acc = acc.reshape(-1, pool.size)
        for name, out in outcomes.items():
            if out.order is None:
                rel = random_expectation(acc, log_odds=log_odds).rel
            else:
                if name == "oracle":  # ranks by the accuracies themselves
                    order = _rank_by(acc, task_agnostic_order(pool.meta))
                else:
                    order = out.order[rows].reshape(-1, pool.size)
                rel = prefix_outcome(acc, order, log_odds=log_odds).rel
            parts[name].append(rel.reshape(len(rows), n_tasks, -1).mean(axis=1))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def verdict(low: float, high: float) -> str:
    """For a difference of regret (lower is better): its sign where the interval excludes 0."""
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return UNDECIDED


def reference_of(strategies: Mapping[str, object]) -> str | None:
    return next((r for r in REFERENCES if r in strategies), None)


def bootstrap_tables(
    pool: PoolData,
    outcomes: Mapping[str, StrategyOutcome],
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = SEED,
    reps: np.ndarray | None = None,
    log_odds: bool = False,
    means: Mapping[str, np.ndarray] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(curves_ci, regret_diff_ci) of one pool, every strategy and budget (schema.CURVES_CI,
    schema.REGRET_DIFF_CI); the differences are each strategy minus the reference
    (``REFERENCES``: hybrid_linear where it ran, else task_agnostic). ``reps``: as in
    ``resampled_means`` (two levels); ``means``: its result, where already computed."""
    if means is None:
        means = resampled_means(pool, outcomes, n_boot, seed, reps, log_odds)
    n_reps = 1 if reps is None else reps.shape[2]
    budgets = np.arange(1, pool.size + 1)
    curves, diffs = [], []
    ref = reference_of(outcomes)
    for name, out in outcomes.items():
        low, high = interval(means[name])
        curves.append(
            pl.DataFrame(
                {
                    "pool": pool.name,
                    "strategy": name,
                    "budget": budgets,
                    "mean_rel_regret": out.rel.mean(axis=0),
                    "ci_low": low,
                    "ci_high": high,
                    "n_tasks": len(pool.tasks),
                    "n_boot": n_boot,
                    "n_reps": n_reps,
                },
                schema=schema.CURVES_CI,
            )  # fmt: skip
        )
        if ref is None or name == ref:
            continue
        d = out.rel - outcomes[ref].rel
        low, high = interval(means[name] - means[ref])
        diffs.append(
            pl.DataFrame(
                {
                    "pool": pool.name,
                    "strategy": name,
                    "reference": ref,
                    "budget": budgets,
                    "mean_diff": d.mean(axis=0),
                    "ci_low": low,
                    "ci_high": high,
                    "verdict": [verdict(lo, hi) for lo, hi in zip(low, high, strict=True)],
                    "n_tasks": len(pool.tasks),
                    "n_boot": n_boot,
                    "n_reps": n_reps,
                },
                schema=schema.REGRET_DIFF_CI,
            )  # fmt: skip
        )
    return (
        pl.concat(curves) if curves else schema.empty(schema.CURVES_CI),
        pl.concat(diffs) if diffs else schema.empty(schema.REGRET_DIFF_CI),
    )
