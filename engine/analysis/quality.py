"""Estimator quality the way the transferability literature reports it (issue 15, point 2).

For every pool, every proxy with scores and every task: how well the proxy's scores order the
models by their fine-tune accuracy (weighted Kendall tau, Kendall tau, Pearson r) and whether
its top picks contain a best model (top-1 / top-3 hit), next to the regret tables.
"""

import numpy as np
import polars as pl
from scipy import stats

from whichmodel.analysis.strategies import PoolData, task_aware
from whichmodel.core import schema

HIT_BUDGETS = (1, 3)


def _correlations(score: np.ndarray, acc: np.ndarray) -> tuple[float | None, ...]:
    """Weighted tau, Kendall tau-b and Pearson r of one task's scored models (None: undefined)."""
    if score.size < 2 or np.ptp(score) == 0 or np.ptp(acc) == 0:
        return None, None, None
    return (
        float(stats.weightedtau(score, acc).statistic),
        float(stats.kendalltau(score, acc).statistic),
        float(stats.pearsonr(score, acc).statistic),
    )


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def estimator_quality(pools: list[PoolData]) -> pl.DataFrame:
    """Per pool, proxy and task: weighted Kendall tau, Kendall tau, Pearson r and top-1/top-3
    hits of the proxy's scores against the fine-tune accuracies (columns: schema.QUALITY).

    The three correlations are computed exactly as the transferability literature's evaluation
    code does (LogME, You et al. ICML 2021, §5: weighted Kendall tau_w; SFDA, Shao et al. ECCV
    2022, github.com/TencentARC/SFDA rank_correlation.py): ``scipy.stats.weightedtau(score,
    acc)`` with its defaults (hyperbolic weigher 1/(r+1); ``rank=True``, the mean of the
    weightings by the score's and by the accuracy's decreasing order), ``scipy.stats.kendalltau``
    (tau-b, ties counted) and ``scipy.stats.pearsonr``. They use only the models the proxy applies
    to (a NaN score means it does not), counted in ``n_scored`` and ``n_not_applicable``; each is
    null when fewer than two models are scored or their scores or accuracies are all equal.

    ``top1_hit`` / ``top3_hit`` (1.0 or 0.0) say whether the proxy's first 1 / 3 picks contain a
    best model of the whole pool: the picks are the task-aware strategy's ranking (models without
    a score last, ties by the task-agnostic order), so a hit is exactly zero regret of that
    strategy at B = 1 / 3. They are null when no model of the task is scored.

    After each (pool, proxy)'s task rows comes one mean row with a null ``task``: the mean of
    each correlation over the tasks where it is defined, the hit rates over the tasks with a
    score, and the counts summed over tasks. (A null task, not a name such as "mean", since any
    name could also be a task's.)
    """
    rows = []
    for pool in pools:
        best = pool.acc == pool.acc.max(axis=1, keepdims=True)
        for proxy, scores in pool.scores.items():
            order = task_aware(proxy)(pool)
            task_rows = []
            for t, task in enumerate(pool.tasks):
                scored = ~np.isnan(scores[t])
                n_scored = int(scored.sum())
                hits = [
                    float(best[t, order[t, :b]].any()) if n_scored else None for b in HIT_BUDGETS
                ]
                tw, tau, r = _correlations(scores[t, scored], pool.acc[t, scored])
                task_rows.append(
                    {
                        "pool": pool.name,
                        "proxy": proxy,
                        "task": task,
                        "n_scored": n_scored,
                        "n_not_applicable": pool.size - n_scored,
                        "weighted_tau": tw,
                        "kendall_tau": tau,
                        "pearson": r,
                        "top1_hit": hits[0],
                        "top3_hit": hits[1],
                    }
                )
            mean_row = {"pool": pool.name, "proxy": proxy, "task": None}
            for col in ("n_scored", "n_not_applicable"):
                mean_row[col] = sum(row[col] for row in task_rows)
            for col in ("weighted_tau", "kendall_tau", "pearson", "top1_hit", "top3_hit"):
                mean_row[col] = _mean([row[col] for row in task_rows])
            rows.extend([*task_rows, mean_row])
    return pl.DataFrame(rows, schema=schema.QUALITY) if rows else schema.empty(schema.QUALITY)
