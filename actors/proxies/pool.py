"""Pool-level combination (NCTI, ETran): the authors min-max each term over the models of a pool."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# pool-level combination (NCTI, ETran): the authors min-max each term over the models of a pool


class MissingTerm(ValueError):
    """A scored model of a pool whose runs lack a term its proxy's ``pool_combine`` needs."""

    def __init__(self, index: int, key: str):
        super().__init__(f"pool model {index} has no finite {key!r} term")
        self.index, self.key = index, key


def minmax_pool(values: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) over the finite entries, as both authors' pool loops compute it.

    NaN (a model without terms) stays NaN and takes no part in the min and max. A term equal
    on every model (max == min, also a pool of one) gives 0 for all: the authors' code divides
    by zero there (NCTI's NumPy gives NaN, ETran's Python floats raise), and a constant term
    cannot change a ranking, so 0 keeps the other terms' order."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    ok = ~np.isnan(v)
    if ok.any():
        lo, hi = float(v[ok].min()), float(v[ok].max())
        out[ok] = (v[ok] - lo) / (hi - lo) if hi > lo else 0.0
    return out


def _pool_terms(terms: Sequence[Mapping | None], keys: Sequence[str]) -> np.ndarray:
    """(models × keys) array of the terms; a NaN row for a model without terms (None)."""
    out = np.full((len(terms), len(keys)), np.nan)
    for i, t in enumerate(terms):
        if t is None:
            continue
        for j, key in enumerate(keys):
            v = t.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise MissingTerm(i, key)
            out[i, j] = v
    return out


def ncti_pool(terms: Sequence[Mapping | None]) -> np.ndarray:
    """NCTI over a pool as BUserName/NCTI ``evaluate_metric_group1_cpu.py`` (commit 770be72)
    scores it: each of S_seli, S_ncc, S_vc min-maxed over the pool's models
    (``(x - x.min()) / (x.max() - x.min())``), then S_ncc + S_seli - S_vc. ``terms``: per model
    the ``ncti`` run dict, or None (no score: NaN, out of the min and max); ``minmax_pool``
    says what a constant term gives."""
    t = _pool_terms(terms, ("seli", "ncc", "vc"))
    seli, ncc, vc = (minmax_pool(t[:, j]) for j in range(3))
    return ncc + seli - vc


def etran_pool(terms: Sequence[Mapping | None]) -> np.ndarray:
    """ETran over a pool as mgholamikn/ETran ``tw.py`` (commit a63361e) scores it: ``scale``
    min-maxes S_en (their ``energy`` scores) and S_lda (``lda``) over the pool's models, then
    0.15 S_en + 0.85 S_lda (the weight: the runs' ``energy_weight``, 0.15 where absent, one for
    the whole pool). ``terms``: per model the ``etran`` run dict, or None (NaN, out of the min
    and max); ``minmax_pool`` says what a constant term gives."""
    t = _pool_terms(terms, ("energy", "lda"))
    weights = {float(d.get("energy_weight", 0.15)) for d in terms if d is not None}
    if len(weights) > 1:
        raise ValueError(f"etran: the pool's models were scored with energy weights {weights}")
    w = weights.pop() if weights else 0.15
    return w * minmax_pool(t[:, 0]) + (1.0 - w) * minmax_pool(t[:, 1])
