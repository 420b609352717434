"""Invariants of the strategies and curves, on random pools (Hypothesis)."""

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from poolmaker import make_meta, make_pool

from whichmodel.analysis.curves import pool_outcomes, random_expectation
from whichmodel.analysis.strategies import strategies_for

# A coarse grid of accuracies so that ties (between models, and with the oracle) are common.
ACC = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0])
SCORE = st.one_of(st.floats(-5, 5, allow_nan=False), st.just(float("nan")), st.just(0.0))


@st.composite
def pools(draw, max_tasks=4, max_models=7):
    n_tasks = draw(st.integers(1, max_tasks))
    n_models = draw(st.integers(1, max_models))
    grid = lambda elem: st.lists(  # noqa: E731
        st.lists(elem, min_size=n_models, max_size=n_models), min_size=n_tasks, max_size=n_tasks
    )
    acc = draw(grid(ACC))
    meta = make_meta(
        n_models,
        imagenet=draw(
            st.lists(st.none() | st.sampled_from([0.7, 0.8]), min_size=n_models, max_size=n_models)
        ),
        upstream=draw(
            st.lists(st.none() | st.sampled_from([10, 20]), min_size=n_models, max_size=n_models)
        ),
        params=draw(st.lists(st.integers(1, 3), min_size=n_models, max_size=n_models)),
    )
    scores = {"linear": draw(grid(SCORE)), "knn": draw(grid(SCORE))}
    return make_pool(acc, meta=meta, scores=scores)


@settings(max_examples=150, deadline=None)
@given(pools())
def test_every_strategy_has_zero_regret_at_full_budget(pool):
    for name, out in pool_outcomes(pool).items():
        assert np.allclose(out.rel[:, -1], 0.0), name
        assert np.allclose(out.zero[:, -1], 1.0), name
        np.testing.assert_allclose(out.picked[:, -1], pool.acc.max(axis=1), err_msg=name)


@settings(max_examples=150, deadline=None)
@given(pools())
def test_rank_prefix_regret_never_increases_with_budget(pool):
    for name, out in pool_outcomes(pool).items():
        assert np.all(np.diff(out.rel, axis=1) <= 1e-12), name
        assert np.all(np.diff(out.picked, axis=1) >= -1e-12), name
        assert np.all(np.diff(out.zero, axis=1) >= -1e-12), name


@settings(max_examples=150, deadline=None)
@given(pools())
def test_rankings_are_permutations_and_hybrid_keeps_the_agnostic_pick(pool):
    ranks = {n: f(pool) for n, f in strategies_for(pool).items() if f is not None}
    for name, order in ranks.items():
        assert (np.sort(order, axis=1) == np.arange(pool.size)).all(), name
    for proxy in ("linear", "knn"):
        if f"hybrid_{proxy}" not in ranks:
            continue
        h, aware = ranks[f"hybrid_{proxy}"], ranks[proxy]
        agnostic_top = ranks["task_agnostic"][0, 0]
        assert (h[:, 0] == agnostic_top).all()  # B=1 equals task-agnostic
        for t in range(len(pool.tasks)):
            expected = [agnostic_top] + [m for m in aware[t] if m != agnostic_top]
            assert h[t].tolist() == expected


@settings(max_examples=150, deadline=None)
@given(pools(max_tasks=2, max_models=7))
def test_random_expectation_matches_brute_force_enumeration(pool):
    out = random_expectation(pool.acc)
    n = pool.size
    for t in range(len(pool.tasks)):
        acc = pool.acc[t]
        best = acc.max()
        for b in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), b))
            maxima = [max(acc[i] for i in s) for s in subsets]
            rel = [(best - m) / (1 - m) if m < 1 else 0.0 for m in maxima]
            assert math.isclose(out.picked[t, b - 1], np.mean(maxima), abs_tol=1e-12)
            assert math.isclose(out.rel[t, b - 1], np.mean(rel), abs_tol=1e-12)
            assert math.isclose(
                out.zero[t, b - 1], np.mean([m == best for m in maxima]), abs_tol=1e-12
            )
        # Expected smallest B with zero regret over all orderings of the pool.
        firsts = (
            [
                next(i + 1 for i, m in enumerate(perm) if acc[m] == best)
                for perm in itertools.permutations(range(n))
            ]
            if n <= 6
            else None
        )
        if firsts:
            assert math.isclose(out.min_budget[t], np.mean(firsts), rel_tol=1e-12)


def test_random_expectation_stays_exact_for_large_pools():
    rng = np.random.default_rng(0)
    acc = rng.random((3, 1000))
    out = random_expectation(acc)
    # B=1: the mean accuracy; B=n: the max; B=2: mean over pairs = Σ_i a_(i) · 2i / (n(n-1)).
    np.testing.assert_allclose(out.picked[:, 0], acc.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(out.picked[:, -1], acc.max(axis=1), rtol=1e-10)
    s = np.sort(acc, axis=1)
    i = np.arange(1000)
    np.testing.assert_allclose(out.picked[:, 1], (s * 2 * i).sum(axis=1) / (1000 * 999), rtol=1e-9)
