"""Estimator quality the way the transferability literature reports it (issue 15, point 2).

For every pool, every proxy with scores and every task: how well the proxy's scores order the
models by their fine-tune accuracy (weighted Kendall tau, Kendall tau, Pearson r) and whether
its top picks contain a best model (top-1 / top-3 hit), next to the regret tables.
"""

from math import comb

import numpy as np
import polars as pl
from scipy import stats

from whichmodel.analysis.strategies import PoolData, _rank_by, task_agnostic_order, task_aware
from whichmodel.core import schema

HIT_BUDGETS = (1, 3)
# Static baselines in the quality table, next to the proxies (issue 19; "How NOT to benchmark
# your SITE metric", ICLR 2026): the task-agnostic order, model size, and a random order.
BASELINE_TASK_AGNOSTIC = "baseline:task_agnostic"
BASELINE_PARAMS = "baseline:params"
BASELINE_RANDOM = "baseline:random"
BASELINES = (BASELINE_TASK_AGNOSTIC, BASELINE_PARAMS, BASELINE_RANDOM)
RANDOM_DRAWS = 1000  # seeded random orders behind the random baseline's weighted tau
RANDOM_SEED = 0


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


def _random_row(acc: np.ndarray, best: np.ndarray, rng: np.random.Generator) -> dict:
    """Expected quality of a uniformly random order of a task's models.

    Kendall tau-b and Pearson r: exactly 0 (reversing an order negates both, and a random order
    is as likely as its reverse; Pearson's covariance has expectation 0 by exchangeability).
    Top-b hit: exactly 1 - C(n - k, b) / C(n, b) with k best models. Weighted tau: exactly 0
    when the accuracies have no ties (scipy's τ_w is Σ w_ij s_x s_y over constant denominators,
    and each pair's weight, a function of the two rank positions, meets s_x = ±1 equally often);
    with ties in the accuracies the weights also depend on the order inside a tie, so it is
    the mean over ``RANDOM_DRAWS`` orders drawn from ``RANDOM_SEED``."""
    n, k = acc.size, int(best.sum())
    defined = n >= 2 and np.ptp(acc) > 0
    hits = [1.0 - comb(n - k, min(b, n)) / comb(n, min(b, n)) for b in HIT_BUDGETS]
    tw = None
    if defined and len(np.unique(acc)) == n:
        tw = 0.0
    elif defined:
        draws = [stats.weightedtau(rng.permutation(n), acc).statistic for _ in range(RANDOM_DRAWS)]
        tw = float(np.mean(draws))
    zero = 0.0 if defined else None
    return {"weighted_tau": tw, "kendall_tau": zero, "pearson": zero,
            "top1_hit": hits[0], "top3_hit": hits[1]}  # fmt: skip


def _baseline_scores(pool: PoolData) -> dict[str, np.ndarray]:
    """Task-agnostic order (as a score: models ranked first score highest) and parameters."""
    pos = np.empty(pool.size)
    pos[task_agnostic_order(pool.meta)] = np.arange(pool.size)
    params = pool.meta["params"].cast(pl.Float64).to_numpy()
    shape = (len(pool.tasks), pool.size)
    return {
        BASELINE_TASK_AGNOSTIC: np.broadcast_to(pool.size - pos, shape),
        BASELINE_PARAMS: np.broadcast_to(params, shape),
    }


def _task_rows(
    pool: PoolData, proxy: str, scores: np.ndarray, order: np.ndarray, best: np.ndarray
) -> list[dict]:
    task_rows = []
    for t, task in enumerate(pool.tasks):
        scored = ~np.isnan(scores[t])
        n_scored = int(scored.sum())
        hits = [float(best[t, order[t, :b]].any()) if n_scored else None for b in HIT_BUDGETS]
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
    return task_rows


def _with_mean(pool: PoolData, proxy: str, task_rows: list[dict]) -> list[dict]:
    mean_row = {"pool": pool.name, "proxy": proxy, "task": None}
    for col in ("n_scored", "n_not_applicable"):
        mean_row[col] = sum(row[col] for row in task_rows)
    for col in ("weighted_tau", "kendall_tau", "pearson", "top1_hit", "top3_hit"):
        mean_row[col] = _mean([row[col] for row in task_rows])
    return [*task_rows, mean_row]


def baseline_quality(pool: PoolData) -> list[dict]:
    """The static baselines' quality rows of one pool (task rows, then a mean row each).

    ``baseline:task_agnostic`` ranks as the task_agnostic strategy (ImageNet top-1, upstream
    size, parameters, catalogue order); ``baseline:params`` by parameter count (most first; ties
    and top-k picks by the task-agnostic order; a model without a count is not scored);
    ``baseline:random`` is the expectation under a uniformly random order (``_random_row``)."""
    best = pool.acc == pool.acc.max(axis=1, keepdims=True)
    tie = task_agnostic_order(pool.meta)
    out = []
    for name, scores in _baseline_scores(pool).items():
        order = _rank_by(np.array(scores), tie)
        out.extend(_with_mean(pool, name, _task_rows(pool, name, scores, order, best)))
    rng = np.random.default_rng(RANDOM_SEED)
    task_rows = []
    for t, task in enumerate(pool.tasks):
        row = {"pool": pool.name, "proxy": BASELINE_RANDOM, "task": task,
               "n_scored": pool.size, "n_not_applicable": 0}  # fmt: skip
        task_rows.append({**row, **_random_row(pool.acc[t], best[t], rng)})
    out.extend(_with_mean(pool, BASELINE_RANDOM, task_rows))
    return out


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
    name could also be a task's.) A pool with proxy scores also gets the static baselines' rows
    (``baseline_quality``: ``baseline:task_agnostic``, ``baseline:params``,
    ``baseline:random``) after its proxies, so each proxy can be read against them.
    """
    rows = []
    for pool in pools:
        best = pool.acc == pool.acc.max(axis=1, keepdims=True)
        for proxy, scores in pool.scores.items():
            order = task_aware(proxy)(pool)
            rows.extend(_with_mean(pool, proxy, _task_rows(pool, proxy, scores, order, best)))
        if pool.scores:
            rows.extend(baseline_quality(pool))
    return pl.DataFrame(rows, schema=schema.QUALITY) if rows else schema.empty(schema.QUALITY)
