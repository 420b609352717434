"""Paired bootstrap over tasks (whichmodel.analysis.bootstrap, issue 19): intervals checked
against scipy.stats.bootstrap (percentile, paired) on constructed cases; the tables `analyze`
writes; the report's Findings in words of the intervals; the two-level bootstrap (tasks, then
fine-tune repetitions) against a loop-by-loop NumPy re-implementation."""

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from scipy import stats
from test_quality import VTAB_CATALOG, VTAB_FT, make_pool, vtab_scores

from whichmodel import cli
from whichmodel.analysis import bootstrap as B
from whichmodel.analysis.analyze import analyze
from whichmodel.analysis.curves import pool_outcomes
from whichmodel.analysis.report import ReportData, bootstrap_words, render
from whichmodel.analysis.tables import load_finetune, load_finetune_repetitions
from whichmodel.core import schema
from whichmodel.core.catalog import load_catalogue


def scipy_ci(*samples, n_boot=1000, seed=0, paired=True):
    def mean_diff(*xs, axis=-1):
        return np.mean(xs[0] - (xs[1] if len(xs) > 1 else 0.0), axis=axis)

    res = stats.bootstrap(
        samples, mean_diff, n_resamples=n_boot, method="percentile", paired=paired,
        vectorized=True, rng=np.random.default_rng(seed),
    )  # fmt: skip
    return res.confidence_interval.low, res.confidence_interval.high


@pytest.mark.parametrize("n_tasks", [6, 19])
def test_intervals_equal_scipy_percentile_bootstrap(n_tasks):
    rng = np.random.default_rng(n_tasks)
    a = rng.beta(1, 6, n_tasks)  # regrets: skewed, many near 0
    b = np.clip(a + rng.normal(0.01, 0.03, n_tasks), 0, 1)
    idx = B.resample_tasks(n_tasks, 1000, np.random.default_rng(0))
    low, high = B.interval(a[idx].mean(axis=1))
    assert (low, high) == pytest.approx(scipy_ci(a, paired=False), abs=1e-12)
    low, high = B.interval((b - a)[idx].mean(axis=1))
    assert (low, high) == pytest.approx(scipy_ci(b, a), abs=1e-12)


def test_the_resamples_are_shared_so_a_constant_shift_is_certain():
    """Strategy b = a + 0.01 on every task: paired, the difference's interval is [0.01, 0.01]
    however much the tasks vary (an unpaired bootstrap would straddle 0)."""
    rng = np.random.default_rng(1)
    acc = rng.uniform(0.5, 0.9, (8, 4))
    pool = make_pool(acc.tolist(), {})
    rel_a = rng.uniform(0, 0.5, (8, 4))
    outcomes = {
        "task_agnostic": SimpleNamespace(rel=rel_a),
        "other": SimpleNamespace(rel=rel_a + 0.01),
        "same": SimpleNamespace(rel=rel_a.copy()),
    }
    curves, diffs = B.bootstrap_tables(pool, outcomes, n_boot=500)
    assert curves.schema == pl.Schema(schema.CURVES_CI) and curves.height == 3 * 4
    other = diffs.filter(pl.col("strategy") == "other")
    assert set(other["reference"]) == {"task_agnostic"}
    np.testing.assert_allclose(other["ci_low"], 0.01, atol=1e-12)
    np.testing.assert_allclose(other["ci_high"], 0.01, atol=1e-12)
    assert set(other["verdict"]) == {"worse"}
    assert set(diffs.filter(pl.col("strategy") == "same")["verdict"]) == {B.UNDECIDED}
    unpaired = scipy_ci(rel_a[:, 0] + 0.01, rel_a[:, 0], paired=False, n_boot=500)
    assert unpaired[0] < 0 < unpaired[1]
    # every strategy's curve interval holds its mean
    assert (curves["ci_low"] <= curves["mean_rel_regret"] + 1e-12).all()
    assert (curves["mean_rel_regret"] <= curves["ci_high"] + 1e-12).all()


def test_analyze_writes_the_interval_tables_and_bootstrap_zero_disables_them(tmp_path: Path):
    argv = ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(VTAB_FT)]
    assert cli.main([*argv, "--out", str(tmp_path / "a"), "--bootstrap", "200"]) == 0
    ci = pl.read_parquet(tmp_path / "a" / "curves_ci.parquet")
    diff = pl.read_csv(tmp_path / "a" / "regret_diff_ci.csv")
    assert ci.schema == pl.Schema(schema.CURVES_CI) and set(ci["n_boot"]) == {200}
    assert set(diff["reference"]) == {"task_agnostic"}  # no linear scores: the fallback
    curves = pl.read_parquet(tmp_path / "a" / "curves.parquet")
    joined = curves.join(ci, on=["pool", "strategy", "budget"])
    assert joined.height == curves.height
    np.testing.assert_allclose(joined["mean_rel_regret"], joined["mean_rel_regret_right"])
    # one row against scipy, from the regret table's per-task values
    row = diff.filter(pl.col("strategy") == "task_agnostic_loo", pl.col("budget") == 1)
    row = row.filter(pl.col("pool") == "All").row(0, named=True)
    a = analyze(load_catalogue(VTAB_CATALOG), pl.read_csv(VTAB_FT), pool_names=["All"],
                budgets=[1], bootstrap=0)  # fmt: skip
    reg = a.regret.filter(pl.col("budget") == 1)
    per = {
        s: reg.filter(pl.col("strategy") == s).sort("task")["rel_regret"].to_numpy()
        for s in ("task_agnostic_loo", "task_agnostic")
    }
    tasks = a.pools[0].tasks
    order = np.argsort(np.argsort(tasks))  # regret rows sorted by name → the pool's task order
    x, y = per["task_agnostic_loo"][order], per["task_agnostic"][order]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(scipy_ci(x, y, n_boot=200), abs=1e-12)
    assert cli.main([*argv, "--out", str(tmp_path / "b"), "--bootstrap", "0"]) == 0
    assert not (tmp_path / "b" / "curves_ci.parquet").exists()
    assert cli.main([*argv, "--out", str(tmp_path / "c"), "--bootstrap", "-1"]) == 2
    assert not (tmp_path / "c").exists()


def test_findings_speak_in_intervals():
    catalogue = load_catalogue(VTAB_CATALOG)
    a = analyze(catalogue, pl.read_csv(VTAB_FT), vtab_scores(), budgets=[1, 2, 3], bootstrap=300)
    page = render(ReportData(title="t", config_text="", analysis=a))
    assert "paired bootstrap over tasks, 300 resamples" in page
    assert 'class="verdict-' not in page  # no colour for a mean difference alone
    words = {"better", "worse", B.UNDECIDED}
    found = [w for w in words if f'data-significance="{w}"' in page]
    assert found
    plain = render(ReportData(title="t", config_text="", analysis=analyze(
        catalogue, pl.read_csv(VTAB_FT), vtab_scores(), budgets=[2], bootstrap=0)))  # fmt: skip
    assert "data-significance" not in plain and 'class="verdict-' in plain


# ------------------------------------------------------------------ two levels: tasks, then reps


def _rel(oracle: float, picked: float) -> float:
    """The paper's relative regret, written out: (oracle - picked) / (1 - picked)."""
    return 0.0 if picked >= 1.0 else (oracle - picked) / (1.0 - picked)


def numpy_two_level(reps, orders, n_boot, seed=0):
    """Independent re-implementation, loop by loop: per resample, T tasks with replacement, then
    per drawn task R repetitions with replacement (the same for every model and strategy); the
    slot's accuracy of a model is its mean over the drawn repetitions; each strategy's regret at
    every budget (its fixed ranking; ``oracle`` re-ranked on the slot; ``random`` averaged over
    every B-subset). Returns strategy → (n_boot, budgets) mean regrets over the slots."""
    n_tasks, n_models, n_reps = reps.shape
    rng = np.random.default_rng(seed)
    tasks = rng.integers(0, n_tasks, (n_boot, n_tasks))
    draws = rng.integers(0, n_reps, (n_boot, n_tasks, n_reps))
    means = {s: np.zeros((n_boot, n_models)) for s in orders}
    for b in range(n_boot):
        for j in range(n_tasks):
            t = tasks[b, j]
            acc = [sum(reps[t, m, r] for r in draws[b, j]) / n_reps for m in range(n_models)]
            best = max(acc)
            for s, order in orders.items():
                for k in range(1, n_models + 1):
                    if order is None:
                        subsets = list(itertools.combinations(acc, k))
                        r = sum(_rel(best, max(c)) for c in subsets) / len(subsets)
                    else:
                        ranking = (
                            sorted(range(n_models), key=lambda m: -acc[m])
                            if s == "oracle"
                            else order[t]
                        )
                        r = _rel(best, max(acc[m] for m in ranking[:k]))
                    means[s][b, k - 1] += r / n_tasks
    return means


def rep_pool(n_tasks=5, n_models=4, n_reps=3, seed=3):
    """A pool whose accuracies are the median of R noisy repetitions, with one proxy."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.4, 0.9, (n_tasks, n_models))
    reps = np.clip(base[:, :, None] + rng.normal(0, 0.05, (n_tasks, n_models, n_reps)), 0, 0.99)
    noisy = (base + rng.normal(0, 0.1, base.shape)).tolist()
    return make_pool(np.median(reps, axis=2).tolist(), {"noisy": noisy}), reps


def test_two_level_bootstrap_equals_a_numpy_reimplementation():
    pool, reps = rep_pool()
    outcomes = pool_outcomes(pool)
    assert {"oracle", "random", "hybrid_noisy", "task_agnostic_loo"} <= set(outcomes)
    curves, diffs = B.bootstrap_tables(pool, outcomes, n_boot=150, reps=reps)
    assert set(curves["n_reps"]) == {3} and set(diffs["n_reps"]) == {3}
    want = numpy_two_level(reps, {s: o.order for s, o in outcomes.items()}, 150)
    for (s, budget), rows in curves.group_by("strategy", "budget"):
        low, high = np.percentile(want[s][:, budget - 1], [2.5, 97.5])
        assert (rows["ci_low"][0], rows["ci_high"][0]) == pytest.approx((low, high), abs=1e-12)
    ref = diffs["reference"][0]
    for (s, budget), rows in diffs.group_by("strategy", "budget"):
        d = want[s][:, budget - 1] - want[ref][:, budget - 1]
        low, high = np.percentile(d, [2.5, 97.5])
        assert (rows["ci_low"][0], rows["ci_high"][0]) == pytest.approx((low, high), abs=1e-12)
    oracle = curves.filter(pl.col("strategy") == "oracle")
    assert (oracle["ci_low"] == 0).all() and (oracle["ci_high"] == 0).all()


def test_with_one_repetition_the_two_level_bootstrap_is_the_one_level_one_exactly():
    pool, reps = rep_pool(n_reps=1)
    outcomes = pool_outcomes(pool)
    two = B.bootstrap_tables(pool, outcomes, n_boot=300, reps=reps)
    one = B.bootstrap_tables(pool, outcomes, n_boot=300)
    for a, b in zip(two, one, strict=True):
        assert a.equals(b)  # bit for bit, every strategy, budget and difference


def test_fine_tune_noise_widens_the_interval_only_with_two_levels():
    """Every task identical, so tasks alone cannot vary; the repetitions can."""
    _, reps = rep_pool(n_tasks=1, n_models=3, n_reps=4, seed=5)
    reps = np.repeat(reps, 6, axis=0)
    reps[:, 1, :] = [0.6, 0.9, 0.6, 0.9]  # model 1 wins in half the repetitions
    reps[:, 0, :] = 0.75
    pool = make_pool(np.median(reps, axis=2).tolist(), {})
    outcomes = pool_outcomes(pool)
    one, _ = B.bootstrap_tables(pool, outcomes, n_boot=200)
    two, _ = B.bootstrap_tables(pool, outcomes, n_boot=200, reps=reps)
    pick = (pl.col("strategy") == "task_agnostic") & (pl.col("budget") == 1)
    a, b = one.filter(pick).row(0, named=True), two.filter(pick).row(0, named=True)
    assert a["ci_low"] == a["ci_high"]
    assert b["ci_high"] - b["ci_low"] > 0.1


def test_analyze_resamples_the_repetitions_of_a_per_run_table(tmp_path: Path):
    from test_stability import runs_table

    from whichmodel.analysis.analyze import repetition_array

    path = tmp_path / "runs.csv"
    runs_table().write_csv(path)
    argv = ["analyze", "--catalog", str(VTAB_CATALOG), "--finetune", str(path), "--pools", "All"]
    assert cli.main([*argv, "--out", str(tmp_path / "out"), "--bootstrap", "120"]) == 0
    ci = pl.read_csv(tmp_path / "out" / "curves_ci.csv")
    assert set(ci["n_reps"]) == {3}
    medians = load_finetune(path)  # the analysis' accuracies and so its rankings
    two = analyze(load_catalogue(VTAB_CATALOG), medians, pool_names=["All"], bootstrap=50,
                  repetitions=load_finetune_repetitions(path))  # fmt: skip
    assert bootstrap_words(two) == (
        "paired bootstrap over tasks and, within each, its 3 fine-tune repetitions, 50 resamples"
    )
    pool = analyze(load_catalogue(VTAB_CATALOG), medians, pool_names=["All"], bootstrap=0).pools[0]
    reps = repetition_array(pool, load_finetune_repetitions(path))
    want = numpy_two_level(reps, {s: o.order for s, o in pool_outcomes(pool).items()}, 120)
    for (s, budget), rows in ci.group_by("strategy", "budget"):
        low, high = np.percentile(want[s][:, budget - 1], [2.5, 97.5])
        assert (rows["ci_low"][0], rows["ci_high"][0]) == pytest.approx((low, high), abs=1e-12)


@pytest.mark.parametrize("levels", [1, 2])
def test_resamples_in_chunks_give_the_same_intervals(monkeypatch, levels):
    """Large pools are resampled in chunks of bounded memory; the chunking changes nothing."""
    pool, reps = rep_pool()
    outcomes = pool_outcomes(pool)
    reps = reps if levels == 2 else None
    whole = B.bootstrap_tables(pool, outcomes, n_boot=97, reps=reps)
    monkeypatch.setattr(B, "CHUNK_ELEMENTS", 1)  # one resample per chunk
    for a, b in zip(B.bootstrap_tables(pool, outcomes, n_boot=97, reps=reps), whole, strict=True):
        assert a.equals(b)
