"""Strategies on hand-made pools: the paper's rules, checked case by case."""

import json

import numpy as np
import polars as pl
import pytest
from poolmaker import make_meta, make_pool
from scipy import stats
from test_proxies import projected_pool, ref_etran_pool, ref_ncti_pool

from whichmodel.actors.proxies import run_proxy
from whichmodel.analysis.curves import prefix_outcome
from whichmodel.analysis.strategies import (
    dense_scores,
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
from whichmodel.core import schema
from whichmodel.core.errors import UserError


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


# ---------------------------------------------------------------------------------------------
# NCTI and ETran: dense_scores normalises their terms across the pool being ranked


@pytest.fixture(scope="module")
def pooled_table():
    """The scores table (SCORES_DETAIL) of ncti, etran and knn on five projected "models" of
    two tasks (test_proxies.projected_pool, seeds 6 and 11), plus a sixth model that ncti and
    etran do not apply to (an empty score, as the probe stage writes it)."""
    rows = []
    for task, seed in (("t0", 6), ("t1", 11)):
        for model, inp in projected_pool(seed).items():
            for proxy in ("ncti", "etran", "knn"):
                res = run_proxy(proxy, inp)
                runs = json.dumps(res.runs)
                rows.append((model, task, proxy, res.score, "", res.seconds, runs))
        for proxy in ("ncti", "etran", "knn"):
            score = 0.5 if proxy == "knn" else None
            rows.append(("m5", task, proxy, score, "not applicable", 0.0, "[]"))
    return pl.DataFrame(rows, schema=schema.SCORES_DETAIL, orient="row")


def _authors_pool(table, proxy, models, task):
    """The authors' pool loop (test_proxies' transcriptions) over the models with a score."""
    sub = table.filter(
        pl.col("proxy") == proxy, pl.col("task") == task, pl.col("model").is_in(models)
    )
    terms = {m: json.loads(r)[0] for m, s, r in sub.select("model", "score", "runs").iter_rows()
             if s is not None}  # fmt: skip
    if proxy == "ncti":
        want = ref_ncti_pool({m: (t["seli"], t["ncc"], t["vc"]) for m, t in terms.items()}, terms)
    else:
        want = ref_etran_pool(
            {m: t["energy"] for m, t in terms.items()}, {m: t["lda"] for m, t in terms.items()}
        )
    return np.array([want.get(m, np.nan) for m in models])


@pytest.mark.parametrize("proxy", ["ncti", "etran"])
def test_dense_scores_normalise_across_each_pool_and_task(pooled_table, proxy):

    tasks = ["t0", "t1"]
    pools = {"All": [f"m{k}" for k in range(6)], "Some": ["m0", "m1", "m3", "m5"]}
    got = {}
    for pool, models in pools.items():
        got[pool] = dense_scores(pooled_table, models, tasks, pool)
        for t, task in enumerate(tasks):
            want = _authors_pool(pooled_table, proxy, models, task)
            np.testing.assert_allclose(got[pool][proxy][t], want, rtol=0, atol=1e-12)
        assert np.isnan(got[pool][proxy][:, -1]).all()  # m5: not applicable, stays NaN
        # a proxy without pool_combine is ranked by the table's scores as they are
        knn = pooled_table.filter(pl.col("proxy") == "knn")
        raw = dict(((m, t), s) for m, t, s in knn.select("model", "task", "score").iter_rows())
        want_knn = [[raw[m, t] for m in models] for t in tasks]
        np.testing.assert_array_equal(got[pool]["knn"], want_knn)
    # the same model scores differently in another pool: the min and max are the pool's
    assert got["All"][proxy][0, 0] != got["Some"][proxy][0, 0]
    # and the min-max changes the ranking against the raw scores (task t0, as test_proxies)
    raw = dense_scores(pooled_table.drop("runs"), pools["All"], tasks, "All", [proxy])[proxy]
    assert np.nanargmax(raw[0]) != np.nanargmax(got["All"][proxy][0])
    ranked = task_aware(proxy)(make_pool(np.zeros((2, 6)), scores={proxy: got["All"][proxy]}))
    assert (ranked[:, 0] == np.nanargmax(got["All"][proxy], axis=1)).all()
    assert (ranked[:, -1] == 5).all()  # not applicable: last


def test_dense_scores_name_a_row_whose_terms_are_missing(pooled_table):

    models = [f"m{k}" for k in range(5)]
    hit = (pl.col("model") == "m2") & (pl.col("task") == "t1") & (pl.col("proxy") == "ncti")
    broken = pooled_table.with_columns(runs=pl.when(hit).then(pl.lit("[{}]")).otherwise("runs"))
    with pytest.raises(UserError, match=r"task 't1' of pool P: ncti: model 'm2' has a score but"):
        dense_scores(broken, models, ["t0", "t1"], "P")
    garbled = pooled_table.with_columns(runs=pl.when(hit).then(pl.lit("{")).otherwise("runs"))
    with pytest.raises(UserError, match=r"'ncti', model 'm2', task 't1': runs is not a JSON list"):
        dense_scores(garbled, models, ["t0", "t1"], "P")


def test_analysis_picks_equal_what_a_search_or_select_ranks_from_the_scores_table():
    """The one ranking: a fine-tune-free strategy's order in the analysis (``pool_outcomes``)
    is what ``rank_models`` gives from the scores table (search, finetune --select, halving),
    and both equal a plain-Python ranking (score descending, not-applicable last, ties by the
    task-agnostic order)."""
    from whichmodel.analysis.curves import pool_outcomes
    from whichmodel.analysis.strategies import rank_models

    rng = np.random.default_rng(3)
    n_tasks, n_models = 4, 6
    meta = make_meta(n_models, imagenet=[0.7, 0.8, None, 0.75, 0.6, None])
    scores = np.round(rng.random((n_tasks, n_models)), 1)  # ties
    scores[1, 2] = scores[2, 4] = np.nan  # not applicable
    pool = make_pool(rng.random((n_tasks, n_models)), meta, {"linear": scores})
    table = pl.DataFrame(
        {
            "model": [m for _ in pool.tasks for m in pool.models],
            "task": [t for t in pool.tasks for _ in pool.models],
            "proxy": "linear",
            "score": [None if np.isnan(v) else float(v) for v in scores.ravel()],
        }
    )
    agnostic = [1, 3, 0, 4, 2, 5]  # ImageNet top-1 descending, then without one (by order)

    def by_hand(t):
        ok = [m for m in agnostic if not np.isnan(scores[t, m])]
        ranked = sorted(ok, key=lambda m: -scores[t, m])  # stable: ties keep agnostic order
        return ranked + [m for m in agnostic if np.isnan(scores[t, m])]

    expected = {
        "task_agnostic": [agnostic] * n_tasks,
        "linear": [by_hand(t) for t in range(n_tasks)],
        "hybrid_linear": [[1] + [m for m in by_hand(t) if m != 1] for t in range(n_tasks)],
    }
    outcomes = pool_outcomes(pool)
    for name, orders in expected.items():
        assert outcomes[name].order.tolist() == orders, name
        searched = rank_models(meta, pool.tasks, name, table, pool.name)
        assert searched.order.tolist() == orders, name
