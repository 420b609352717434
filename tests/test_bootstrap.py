"""Paired bootstrap over tasks (whichmodel.analysis.bootstrap, issue 19): intervals checked
against scipy.stats.bootstrap (percentile, paired) on constructed cases; the tables `analyze`
writes; the report's Findings in words of the intervals."""

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
from whichmodel.analysis.report import ReportData, render
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
    counts = B.resample_counts(n_tasks, 1000, seed=0)
    low, high = B.percentile_ci(a[:, None], counts)
    assert (low[0], high[0]) == pytest.approx(scipy_ci(a, paired=False), abs=1e-12)
    low, high = B.percentile_ci((b - a)[:, None], counts)
    assert (low[0], high[0]) == pytest.approx(scipy_ci(b, a), abs=1e-12)


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
