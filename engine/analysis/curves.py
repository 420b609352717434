"""Regret at every budget and budget curves (paper Fig. 7, Tables 4/5) for one pool.

Everything is computed for all budgets B = 1..|pool| at once from dense (tasks × models)
arrays: for a rank-prefix strategy the best accuracy among its first B picks is a running
maximum along its ranking; for ``random`` it is an exact expectation over all B-subsets.
"""

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from whichmodel.analysis.regret import rel_regret
from whichmodel.analysis.strategies import PoolData, parse_strategy, rank_models, strategies_for


@dataclass(frozen=True)
class StrategyOutcome:
    """One strategy on one pool, every budget: arrays of shape (tasks, budgets).

    ``picked`` is s(m) at budget B = column B-1; ``rel`` the relative regret; ``zero`` whether
    the picks contain a best model (a probability for ``random``). ``min_budget`` (tasks,) is
    the smallest budget with zero regret (for ``random``, its expectation). ``order`` is the
    ranking (tasks, models), or None for ``random``.
    """

    picked: np.ndarray
    rel: np.ndarray
    zero: np.ndarray
    min_budget: np.ndarray
    order: np.ndarray | None


def prefix_outcome(acc: np.ndarray, order: np.ndarray, log_odds: bool = False) -> StrategyOutcome:
    """Outcome of a rank-prefix strategy: s(m) at budget B is the max over its first B picks."""
    oracle_acc = acc.max(axis=1, keepdims=True)
    picked = np.maximum.accumulate(np.take_along_axis(acc, order, axis=1), axis=1)
    zero = picked == oracle_acc  # exact: picked holds values of acc, and the max is one of them
    return StrategyOutcome(
        picked=picked,
        rel=rel_regret(oracle_acc, picked, log_odds=log_odds),
        zero=zero.astype(np.float64),
        min_budget=zero.argmax(axis=1).astype(np.float64) + 1.0,
        order=order,
    )


def max_order_weights(n: int) -> np.ndarray:
    """W[B-1, i] = P(the max of a uniform random B-subset of n items is the i-th smallest).

    = C(i, B-1) / C(n, B) with i counted from 0; each row sums to 1. Computed in log space so
    that it stays exact to float precision for pools of thousands of models.
    """
    i = np.arange(n, dtype=np.float64)[None, :]
    b = np.arange(1, n + 1, dtype=np.float64)[:, None]

    def log_comb(a, k):
        return gammaln(a + 1) - gammaln(k + 1) - gammaln(a - k + 1)

    valid = i >= b - 1
    with np.errstate(invalid="ignore"):
        logw = np.where(valid, log_comb(i, b - 1) - log_comb(float(n), b), -np.inf)
    return np.exp(logw)


def random_expectation(acc: np.ndarray, log_odds: bool = False) -> StrategyOutcome:
    """The exact expectation of picking B models uniformly at random, for every B.

    E[f(max)] = Σ_i f(a_(i)) · C(i, B-1) / C(n, B) over the sorted accuracies a_(0) <= ... , for
    f = identity (picked), the relative regret (its expectation, not the regret of the expected
    accuracy) and the zero-regret indicator (a probability). The expected smallest budget with
    zero regret is (n + 1) / (k + 1), where k models tie for the best.
    """
    n_models = acc.shape[1]
    oracle_acc = acc.max(axis=1, keepdims=True)
    ordered = np.sort(acc, axis=1)
    weights = max_order_weights(n_models).T  # (models, budgets)
    best = ordered == oracle_acc
    return StrategyOutcome(
        picked=ordered @ weights,
        rel=rel_regret(oracle_acc, ordered, log_odds=log_odds) @ weights,
        zero=best.astype(np.float64) @ weights,
        min_budget=(n_models + 1.0) / (best.sum(axis=1) + 1.0),
        order=None,
    )


def pool_outcomes(pool: PoolData, log_odds: bool = False) -> dict[str, StrategyOutcome]:
    """Every applicable strategy's outcome on ``pool``, in report order. A strategy that needs
    no fine-tune results is ranked by the one ranking function (``rank_models``, as search,
    ``finetune --select`` and halving rank); the references rank by the accuracies."""
    out = {}
    for name, rank in strategies_for(pool).items():
        if rank is None:
            out[name] = random_expectation(pool.acc, log_odds=log_odds)
            continue
        if parse_strategy(name, list(pool.scores)).needs_finetune:
            order = rank(pool)
        else:
            order = rank_models(pool.meta, pool.tasks, name, pool.scores, pool.name).order
        out[name] = prefix_outcome(pool.acc, order, log_odds=log_odds)
    return out
