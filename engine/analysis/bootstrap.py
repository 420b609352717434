"""Paired bootstrap over tasks: 95 % intervals of mean relative regret and of differences
between strategies (issue 19).

One set of resamples per pool: ``n_boot`` draws of T task indices with replacement from
``numpy.random.default_rng(seed)`` (the draw ``scipy.stats.bootstrap`` makes), shared by every
strategy and budget, so a difference of two strategies is resampled as pairs of the same tasks.
The interval is the percentile one (``np.percentile``, linear), as ``scipy.stats.bootstrap(...,
method='percentile')``. Pure NumPy/Polars.
"""

from collections.abc import Mapping

import numpy as np
import polars as pl

from whichmodel.analysis.curves import StrategyOutcome
from whichmodel.analysis.strategies import PoolData
from whichmodel.core import schema

DEFAULT_BOOTSTRAP = 1000
SEED = 0
LEVEL = 0.95
REFERENCES = ("hybrid_linear", "task_agnostic")  # the first that ran is the diff's reference
UNDECIDED = "not distinguishable at 95 %"


def resample_counts(n_tasks: int, n_boot: int, seed: int = SEED) -> np.ndarray:
    """(n_boot, n_tasks): how often each task is drawn in each resample."""
    idx = np.random.default_rng(seed).integers(0, n_tasks, (n_boot, n_tasks))
    counts = np.zeros((n_boot, n_tasks))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    return counts


def percentile_ci(
    values: np.ndarray, counts: np.ndarray, level: float = LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean over tasks of ``values`` (tasks, ...) under ``counts``."""
    flat = values.reshape(values.shape[0], -1)
    means = counts @ flat / values.shape[0]
    alpha = (1.0 - level) / 2.0
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return low.reshape(values.shape[1:]), high.reshape(values.shape[1:])


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
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(curves_ci, regret_diff_ci) of one pool, every strategy and budget (schema.CURVES_CI,
    schema.REGRET_DIFF_CI); the differences are each strategy minus the reference
    (``REFERENCES``: hybrid_linear where it ran, else task_agnostic)."""
    counts = resample_counts(len(pool.tasks), n_boot, seed)
    budgets = np.arange(1, pool.size + 1)
    curves, diffs = [], []
    ref = reference_of(outcomes)
    for name, out in outcomes.items():
        low, high = percentile_ci(out.rel, counts)
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
                },
                schema=schema.CURVES_CI,
            )  # fmt: skip
        )
        if ref is None or name == ref:
            continue
        d = out.rel - outcomes[ref].rel
        low, high = percentile_ci(d, counts)
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
                },
                schema=schema.REGRET_DIFF_CI,
            )  # fmt: skip
        )
    return (
        pl.concat(curves) if curves else schema.empty(schema.CURVES_CI),
        pl.concat(diffs) if diffs else schema.empty(schema.REGRET_DIFF_CI),
    )
