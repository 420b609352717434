"""Strategies on hand-made pools: the paper's rules, checked case by case."""

import numpy as np
from poolmaker import make_meta, make_pool

from engine.analysis.curves import prefix_outcome
from engine.analysis.strategies import (
    hybrid,
    hybrid_order,
    oracle,
    task_agnostic,
    task_agnostic_loo,
    task_agnostic_oracle,
    task_agnostic_order,
    task_aware,
)


def test_task_agnostic_prefers_imagenet_accuracy():
    meta = make_meta(4, imagenet=[0.7, None, 0.8, 0.75], upstream=[10, 10**9, 10, 10])
    # The model without ImageNet accuracy goes after those with one, whatever its upstream.
    assert task_agnostic_order(meta).tolist() == [2, 3, 0, 1]


def test_task_agnostic_ties_follow_the_paper():
    # No ImageNet accuracy in the pool: largest upstream dataset; ties by most parameters;
    # remaining ties by catalogue order; unknown upstream size last.
    meta = make_meta(
        5,
        upstream=[100, 300, 300, None, 300],
        params=[9, 5, 7, 99, 7],
    )
    assert task_agnostic_order(meta).tolist() == [2, 4, 1, 0, 3]


def test_hybrid_overlap_rule():
    agnostic = np.array([2, 0, 1, 3])
    aware = np.array(
        [
            [0, 1, 2, 3],  # agnostic top (2) is not the aware top
            [2, 3, 1, 0],  # agnostic top is the aware top: take the next aware model
        ]
    )
    out = hybrid_order(agnostic, aware)
    assert out.tolist() == [[2, 0, 1, 3], [2, 3, 1, 0]]


def test_hybrid_at_budget_one_equals_task_agnostic():
    acc = np.array([[0.5, 0.9, 0.7], [0.9, 0.2, 0.3]])
    scores = {"linear": [[0.1, 0.9, 0.8], [0.2, 0.1, 0.9]]}
    pool = make_pool(acc, meta=make_meta(3, params=[1, 2, 3]), scores=scores)
    h = hybrid("linear")(pool)
    assert (h[:, 0] == task_agnostic(pool)[:, 0]).all()
    # Task 0: agnostic top is m2 (most params); aware order m1, m2, m0 → hybrid m2, m1, m0.
    assert h[0].tolist() == [2, 1, 0]
    # Task 1: aware order m2, m0, m1; m2 is the agnostic pick → hybrid m2, m0, m1.
    assert h[1].tolist() == [2, 0, 1]


def test_task_aware_ranks_not_applicable_last_and_breaks_ties_by_agnostic_order():
    acc = np.full((1, 4), 0.5)
    meta = make_meta(4, params=[1, 2, 3, 4])  # agnostic order: m3, m2, m1, m0
    pool = make_pool(acc, meta=meta, scores={"leep": [[0.2, np.nan, 0.2, 0.9]]})
    assert task_aware("leep")(pool)[0].tolist() == [3, 2, 0, 1]


def test_oracle_and_task_agnostic_oracle_and_loo_against_plain_python():
    acc = np.array(
        [
            [0.9, 0.5, 0.6],
            [0.1, 0.8, 0.3],
            [0.2, 0.9, 0.95],
        ]
    )
    pool = make_pool(acc)
    assert oracle(pool).tolist() == [[0, 2, 1], [1, 2, 0], [2, 1, 0]]
    means = [sum(acc[t][m] for t in range(3)) / 3 for m in range(3)]  # 0.4, 0.733, 0.617
    assert task_agnostic_oracle(pool)[0].tolist() == sorted(range(3), key=lambda m: -means[m])
    loo = task_agnostic_loo(pool)
    for t in range(3):
        others = [u for u in range(3) if u != t]
        mean = [sum(acc[u][m] for u in others) / 2 for m in range(3)]
        assert loo[t].tolist() == sorted(range(3), key=lambda m: -mean[m])


def test_prefix_outcome_hand_case():
    acc = np.array([[0.6, 0.9, 0.8]])
    out = prefix_outcome(acc, np.array([[2, 0, 1]]))
    np.testing.assert_allclose(out.picked, [[0.8, 0.8, 0.9]])
    np.testing.assert_allclose(out.rel, [[0.1 / 0.2, 0.1 / 0.2, 0.0]])
    assert out.zero.tolist() == [[0, 0, 1]]
    assert out.min_budget.tolist() == [3]
