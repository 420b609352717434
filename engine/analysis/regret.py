"""Regret and relative delta (paper §3 and App. C), vectorised over NumPy arrays.

All accuracies are fractions in [0, 1]. The functions broadcast, so they serve one task or a
(tasks × budgets) matrix alike.
"""

import numpy as np

LOGIT_EPS = 1e-6  # accuracies are clipped to [eps, 1 - eps] before the log-odds map


def logit(p: np.ndarray | float, eps: float = LOGIT_EPS) -> np.ndarray:
    """log(p / (1 - p)), with p clipped away from 0 and 1 so that perfect scores stay finite."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


def abs_regret(oracle, picked) -> np.ndarray:
    """ORACLE - s(m), in accuracy points (the log-odds variant is ``rel_regret(log_odds=True)``)."""
    return np.asarray(oracle, dtype=np.float64) - np.asarray(picked, dtype=np.float64)


def rel_delta(s1, s2, log_odds: bool = False) -> np.ndarray:
    """Δ(m1, m2) = (s1 - s2) / (1 - min(s1, s2)), in [-1, 1].

    The share of the error left by the worse of the two that the better one removes. When both
    are perfect (min = 1) the delta is 0. With ``log_odds`` accuracies are mapped through
    log(p / (1 - p)) first (paper App. C); a difference of log-odds is already scale-free (a log
    odds ratio), so that variant is the plain difference logit(s1) - logit(s2) and is unbounded.
    """
    s1 = np.asarray(s1, dtype=np.float64)
    s2 = np.asarray(s2, dtype=np.float64)
    if log_odds:
        return logit(s1) - logit(s2)
    diff = s1 - s2
    denom = 1.0 - np.minimum(s1, s2)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, diff / np.where(denom > 0, denom, 1.0), 0.0)
    return out


def rel_regret(oracle, picked, log_odds: bool = False) -> np.ndarray:
    """r(m) = Δ(ORACLE, m) = (ORACLE - s(m)) / (1 - s(m)), in [0, 1] since s(m) <= ORACLE."""
    return rel_delta(oracle, picked, log_odds=log_odds)
