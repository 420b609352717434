"""Strategies on hand-made pools: the paper's rules, checked case by case."""

import numpy as np
import pytest
from poolmaker import make_meta, make_pool
from scipy import stats

from engine.analysis.curves import prefix_outcome
from engine.analysis.strategies import (
    hybrid,
    hybrid_order,
    oracle,
    similar_tasks,
    task_agnostic,
    task_agnostic_loo,
    task_agnostic_oracle,
    task_agnostic_order,
    task_aware,
    task_similarity,
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


# ------------------------------------------------------------------ similar_tasks (issue 15.4)


def _similar_reference(acc, scores, agnostic, loo, k=3):
    """similar_tasks in plain Python + scipy.stats.spearmanr, from the rule as written; ``loo``
    is task_agnostic_loo's order (checked against plain Python above), the fallback."""
    n_tasks, n_models = acc.shape
    tie_pos = {m: i for i, m in enumerate(agnostic)}
    out = []
    for t in range(n_tasks):
        sims = []
        for u in range(n_tasks):
            both = [
                m for m in range(n_models) if not (np.isnan(scores[t][m]) or np.isnan(scores[u][m]))
            ]
            a, b = [scores[t][m] for m in both], [scores[u][m] for m in both]
            if u == t or len(both) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
                continue
            rho = stats.spearmanr(a, b).statistic
            if rho > 0:
                sims.append((-rho, u))
        near = [u for _, u in sorted(sims)][:k] if n_tasks >= 3 else []
        if not near:
            out.append(list(loo[t]))
            continue
        mean = [sum(acc[u][m] for u in near) / len(near) for m in range(n_models)]
        out.append(sorted(range(n_models), key=lambda m: (-round(mean[m], 12), tie_pos[m])))
    return out


def _random_similar_pool(seed, n_tasks=7, n_models=8, ragged=False):
    rng = np.random.default_rng(seed)
    acc = rng.integers(0, 20, (n_tasks, n_models)) / 20  # coarse: ties between models
    scores = rng.integers(0, 6, (n_tasks, n_models)).astype(float)  # ties in the ranks
    scores[:, 1] = np.nan  # the proxy does not apply to m1
    if ragged:  # ... nor, on one task each, to some other models
        scores[rng.integers(0, n_tasks, 3), rng.integers(2, n_models, 3)] = np.nan
    scores[0] = 1.0  # a task with constant scores: no usable correlation, the fallback
    meta = make_meta(n_models, params=rng.integers(1, 4, n_models).tolist())
    return make_pool(acc, meta=meta, scores={"knn": scores})


@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_similar_tasks_against_plain_python(seed, ragged):
    pool = _random_similar_pool(seed, ragged=ragged)
    agnostic = task_agnostic_order(pool.meta).tolist()
    got = similar_tasks("knn")(pool).tolist()
    loo = task_agnostic_loo(pool).tolist()
    assert got == _similar_reference(pool.acc, pool.scores["knn"].tolist(), agnostic, loo)
    assert got[0] == task_agnostic_loo(pool)[0].tolist()  # task 0: constant scores


def test_similar_tasks_never_reads_the_tasks_own_accuracies():
    pool = _random_similar_pool(1)
    before = similar_tasks("knn")(pool)
    rng = np.random.default_rng(5)
    for t in range(len(pool.tasks)):
        changed = make_pool(pool.acc.copy(), meta=pool.meta, scores=pool.scores)
        changed.acc[t] = rng.random(pool.size)
        after = similar_tasks("knn")(changed)
        assert (after[t] == before[t]).all(), t
    # ... while another task's accuracies do move it: the ranking is not constant.
    assert not (
        similar_tasks("knn")(make_pool(pool.acc[::-1], pool.meta, pool.scores)) == before
    ).all()


def test_similar_tasks_picks_the_correlated_tasks_and_falls_back():
    # By the proxy, tasks 0 and 1 order the models alike (ρ = 1) and against tasks 2 and 3
    # (ρ < 0); tasks 2 and 3 correlate positively (ρ = 0.2). Agnostic order: m3, m2, m1, m0.
    scores = {"knn": [[1, 2, 3, 4], [1, 2, 4, 5], [4, 3, 2, 1], [4, 1, 2, 3]]}
    acc = [[0.0] * 4, [0.1, 0.2, 0.9, 0.3], [0.9, 0.1, 0.1, 0.1], [0.5, 0.5, 0.5, 0.8]]
    pool = make_pool(acc, meta=make_meta(4, params=[1, 2, 3, 4]), scores=scores)
    order = similar_tasks("knn")(pool)
    assert order[0].tolist() == [2, 3, 1, 0]  # by task 1's accuracies alone
    assert order[2].tolist() == [3, 2, 1, 0]  # by task 3's: m3, then a tie by agnostic order
    assert task_agnostic_loo(pool)[[0, 2]].tolist() == [[2, 0, 3, 1], [2, 3, 1, 0]]
    # Two tasks: one other task only, so task_agnostic_loo's order (the other task's).
    two = make_pool(
        acc[:2], meta=make_meta(4, params=[1, 2, 3, 4]), scores={"knn": scores["knn"][:2]}
    )
    assert (similar_tasks("knn")(two) == task_agnostic_loo(two)).all()


def test_task_similarity_paths_agree():
    # The one-mask fast path and the per-pair path give the same Spearman correlations.
    pool = _random_similar_pool(3)
    fast = task_similarity(pool.scores["knn"])
    slow = task_similarity(np.vstack([pool.scores["knn"], np.full((1, pool.size), np.nan)]))
    np.testing.assert_allclose(slow[:-1, :-1], fast, equal_nan=True)
    assert np.isnan(fast[0]).all() and np.isnan(slow[-1]).all()
